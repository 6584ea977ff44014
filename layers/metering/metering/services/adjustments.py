"""Support grants and corrections of `purchased` and `rollover`, idempotent on adjustment_id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from metering.api.models import AdjustmentRequest, AdjustmentResponse, BalanceOut
from metering.db.engine import run_in_transaction
from metering.db.store import Pools, lock_current, post_entry
from metering.errors import AdjustmentIdConflict, InsufficientBalance, PoolsNotSupported, check_int64
from metering.services.context import meter

_INSERT_SQL = text(
    """
    INSERT INTO adjustments (adjustment_id, user_id, usage_type, pool, delta, reason)
    VALUES (:id, :u, :t, :pool, :delta, :reason)
    ON CONFLICT (adjustment_id) DO NOTHING
    RETURNING adjustment_id
    """
)
_EXISTING_SQL = text("SELECT user_id, usage_type, pool, delta FROM adjustments WHERE adjustment_id = :id")


@dataclass(frozen=True, slots=True)
class AdjustmentOutcome:
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
        _, pools = lock_current(conn, user_id, request.usage_type, now, m.catalog.free_plan.id)
        params = {
            "id": request.adjustment_id,
            "u": user_id,
            "t": request.usage_type,
            "pool": request.pool,
            "delta": request.delta,
            "reason": request.reason,
        }
        if conn.execute(_INSERT_SQL, params).first() is None:
            existing = conn.execute(_EXISTING_SQL, params).one()
            if tuple(existing) != (user_id, request.usage_type, request.pool, request.delta):
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
        post_entry(
            conn,
            user_id=user_id,
            usage_type=request.usage_type,
            reason="adjustment",
            ref=request.adjustment_id,
            rollover=rollover - pools.rollover,
            purchased=purchased - pools.purchased,
        )
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
