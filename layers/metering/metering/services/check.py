"""Check (and reserve), and release (metering.md "Check")."""

from __future__ import annotations

from datetime import UTC, datetime

from metering import reservations
from metering.api.models import CheckRequest, CheckResponse, ReservationOut
from metering.db.engine import run_read
from metering.db.ledger import pair_states
from metering.domain.ledger import allowed
from metering.errors import NotFound, Unavailable
from metering.observability import Metric, count
from metering.services.context import meter, standing


def check(request: CheckRequest, now: datetime | None = None) -> CheckResponse:
    m = meter(request.usage_type)
    now = now or datetime.now(UTC)
    pair = (request.user_id, request.usage_type)
    state = run_read(lambda conn: pair_states(conn, [pair], now))[pair]  # 1 round trip, 1 snapshot
    st = standing(m, state, now)
    before_holds = st.before_holds()

    reservation = request.reservation
    try:
        hold = reservations.check_and_hold(
            request.user_id,
            request.usage_type,
            amount=request.amount,
            available=before_holds,
            db_version=st.version,
            reservation_id=reservation.id if reservation else None,
            ttl_seconds=reservation.ttl_seconds if reservation else 1,
        )
        counted, reserved, granted = True, hold.reserved, hold.allowed
    except reservations.ReservationsUnavailable:
        counted, reserved, hold = False, 0, None
        granted = allowed(request.amount, before_holds if before_holds is None else max(0, before_holds))

    if not granted:
        count(Metric.CHECK_DENIED)
    held = (
        ReservationOut(id=reservation.id, amount=request.amount, expires_at=hold.expires_at)
        if reservation and hold and hold.allowed and hold.expires_at
        else None
    )
    return CheckResponse(
        allowed=granted,
        user_id=request.user_id,
        usage_type=request.usage_type,
        requested=request.amount,
        limit=st.limit,
        used=st.used,
        reserved=reserved,
        available=st.available(reserved),
        reservation=held,
        reservations_counted=counted,
    )


def release(user_id: str, reservation_id: str) -> None:
    try:
        released = reservations.release(user_id, reservation_id)
    except reservations.ReservationsUnavailable as error:
        raise Unavailable("reservations are unavailable (Redis unreachable or not configured)") from error
    if not released:
        raise NotFound(f"no live reservation {reservation_id!r} for user {user_id!r}")
