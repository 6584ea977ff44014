"""Expiring grants (api.md section 7; metering.md "Second release"): credit idempotent on grant_id,
spent soonest-expiry-first between positive rollover and purchased, and journaled as expired.

Expiry takes effect at its instant for every read: `metering.pair_states_v2` returns only grants
whose `expires_at` lies after the moment read. `expire_due` (the maintenance action
`expire_grants`, every few minutes) then writes what was left as a `grant_expired` journal row,
so the ledger and `reconcile` show it; until it runs nothing counts the expired credit anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from metering.api.models import BalanceOut, GrantOut, GrantRequest, GrantResponse
from metering.db import ledger
from metering.db.engine import run_in_transaction
from metering.db.ledger import GrantRow
from metering.errors import BadInput, GrantIdConflict, PoolsNotSupported
from metering.services import alerts
from metering.services.context import Standing, locked_standing, meter

if TYPE_CHECKING:
    from sqlalchemy import Connection


class GrantOutcome(NamedTuple):
    response: GrantResponse
    applied: bool


def grant(user_id: str, request: GrantRequest, now: datetime | None = None) -> GrantOutcome:
    """POST /v1/users/{user_id}/grants: one transaction; a replay of the same payload is answered
    with the grant as it stands, a different payload under the same id is a conflict."""
    m = meter(request.usage_type)
    if not m.pools:
        raise PoolsNotSupported(
            f"usage_type: {request.usage_type!r} is a plain counter; grants are for pooled usage types"
        )
    now = now or datetime.now(UTC)
    wanted = GrantRow(
        request.grant_id, user_id, request.usage_type, request.amount, 0, request.expires_at, request.reason
    )

    def work(conn: Connection) -> GrantOutcome:
        st = locked_standing(conn, m, user_id, now)
        if not ledger.claim_grant(conn, wanted):
            existing = ledger.grant(conn, request.grant_id)
            assert existing is not None  # claimed before, and grants are never deleted
            if _payload(existing) != _payload(wanted):
                raise GrantIdConflict(
                    f"grant_id: {request.grant_id!r} was already used with a different user, "
                    "usage_type, amount, expires_at or reason"
                )
            live = existing.remaining if existing.expires_at > now else 0  # expired: counts no more
            return GrantOutcome(_response(existing, live, st), applied=False)
        if request.expires_at <= now:  # checked under the claim: a replay after expiry is a duplicate
            raise BadInput(f"expires_at: {request.expires_at.isoformat()} is not in the future")
        credit(conn, wanted, reason="grant")
        return GrantOutcome(_response(wanted, request.amount, st, added=request.amount), applied=True)

    return run_in_transaction(work)


def credit(conn: Connection, claimed: GrantRow, *, reason: str) -> None:
    """Journal a claimed grant's credit (reason `grant`, or `topup` for an expiring pack). The
    caller holds the pair's lock."""
    ledger.post_entry(
        conn,
        user_id=claimed.user_id,
        usage_type=claimed.usage_type,
        reason=reason,
        ref=claimed.grant_id,
        grants=((claimed.grant_id, claimed.amount),),
    )


def _payload(g: GrantRow) -> tuple[object, ...]:
    return (g.user_id, g.usage_type, g.amount, g.expires_at, g.reason)


def _response(g: GrantRow, remaining: int, st: Standing, *, added: int = 0) -> GrantResponse:
    return GrantResponse(
        grant=GrantOut(
            id=g.grant_id,
            usage_type=g.usage_type,
            amount=g.amount,
            remaining=remaining,
            expires_at=g.expires_at,
        ),
        balance=BalanceOut(
            used=st.used, rollover=st.rollover, purchased=st.purchased, granted=st.granted + added
        ),
    )


# --- expiry ------------------------------------------------------------------------------------------

BATCH = 200


def expire_due(now: datetime | None = None, *, batch: int = BATCH) -> int:
    """Journal the remaining credit of every grant expired by `now` as `grant_expired` (one
    transaction per grant, under its pair's lock, so a record running at the same moment either
    drew from it first or sees it gone). Returns how many grants were expired."""
    now = now or datetime.now(UTC)
    expired = 0
    while True:
        due = run_in_transaction(lambda conn: ledger.due_grants(conn, now, batch))
        for g in due:
            expired += run_in_transaction(partial(_expire, due=g, now=now))
        if len(due) < batch:
            return expired


def _expire(conn: Connection, *, due: GrantRow, now: datetime) -> int:
    states, _ = ledger.lock_pairs(conn, [(due.user_id, due.usage_type)], now)
    current = ledger.grant(conn, due.grant_id)  # read under the lock: records may have drawn since
    if current is None or current.remaining == 0:
        return 0
    ledger.post_entry(
        conn,
        user_id=due.user_id,
        usage_type=due.usage_type,
        reason="grant_expired",
        ref=due.grant_id,
        grants=((due.grant_id, -current.remaining),),
    )
    state = states[(due.user_id, due.usage_type)]
    alerts.after_expiry(conn, due.user_id, due.usage_type, state, current.remaining, now)  # issue 19
    return 1
