"""Support grants and corrections of `purchased` and `rollover`, idempotent on adjustment_id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from metering.api.models import AdjustmentRequest, AdjustmentResponse, BalanceOut
from metering.db import ledger
from metering.db.engine import run_in_transaction
from metering.db.ledger import Pools
from metering.errors import AdjustmentIdConflict, InsufficientBalance, PoolsNotSupported, check_int64
from metering.services import alerts
from metering.services.context import locked_standing, meter

if TYPE_CHECKING:
    from sqlalchemy import Connection


class AdjustmentOutcome(NamedTuple):
    response: AdjustmentResponse

    @property
    def applied(self) -> bool:
        return self.response.applied


def adjust(user_id: str, request: AdjustmentRequest, now: datetime | None = None) -> AdjustmentOutcome:
    m = meter(request.usage_type)
    if not m.pools:
        raise PoolsNotSupported(
            f"usage_type: {request.usage_type!r} is a plain counter without rollover or purchased pools"
        )
    now = now or datetime.now(UTC)

    def work(conn: Connection) -> AdjustmentOutcome:
        before = locked_standing(conn, m, user_id, now)
        pools = before.pools
        claimed = ledger.claim_adjustment(
            conn,
            request.adjustment_id,
            user_id,
            request.usage_type,
            request.pool,
            request.delta,
            request.reason,
        )
        if not claimed:
            existing = ledger.adjustment(conn, request.adjustment_id)
            if existing != (user_id, request.usage_type, request.pool, request.delta):
                raise AdjustmentIdConflict(
                    f"adjustment_id: {request.adjustment_id!r} was already used with a different "
                    "user, usage_type, pool or delta"
                )
            return _outcome(request, pools, applied=False)

        rollover, purchased = pools.rollover, pools.purchased
        if request.pool == "purchased":
            purchased = check_int64(purchased + request.delta, "delta")
            if purchased < 0:
                raise InsufficientBalance(
                    f"delta: purchased balance is {pools.purchased}; it cannot go below 0"
                )
        else:
            rollover = check_int64(rollover + request.delta, "delta")
        ledger.post_entry(
            conn,
            user_id=user_id,
            usage_type=request.usage_type,
            reason="adjustment",
            ref=request.adjustment_id,
            rollover=rollover - pools.rollover,
            purchased=purchased - pools.purchased,
        )
        alerts.crossed(conn, m, user_id, before, before._replace(rollover=rollover, purchased=purchased), now)
        return _outcome(request, Pools(pools.used, rollover, purchased), applied=True)

    return run_in_transaction(work)


def _outcome(request: AdjustmentRequest, pools: Pools, *, applied: bool) -> AdjustmentOutcome:
    return AdjustmentOutcome(
        AdjustmentResponse(
            adjustment_id=request.adjustment_id,
            applied=applied,
            duplicate=not applied,
            balance=BalanceOut(**pools.as_dict()),
        )
    )
