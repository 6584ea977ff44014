"""The alerts outbox's SQL (table `alerts`, migration 0006): written by the transactions that
cross an alert, claimed and settled by the delivery (`metering.services.alert_delivery`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from metering.db.sql import Statement, queue, rows

if TYPE_CHECKING:
    from sqlalchemy import Connection


class Crossing(NamedTuple):
    """One alert a change made its user cross, with the pair's snapshot once the change is
    applied. The period is named by its id (its row exists: the record path) or by its bounds."""

    user_id: str
    alert_id: str
    usage_type: str
    threshold: dict[str, Any]
    used: int
    limit: int | None
    available: int | None
    period_id: UUID | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


_INSERT_CROSSED = Statement(
    """
    INSERT INTO alerts (user_id, alert_id, usage_type, period_start, period_end, threshold, used,
                        allowance, available, occurred_at, next_attempt_at)
    SELECT x.user_id, x.alert_id, x.usage_type, coalesce(x.period_start, p.period_start),
           coalesce(x.period_end, p.period_end), CAST(x.threshold AS jsonb), x.used, x.allowance,
           x.available, :at, :at
    FROM unnest(CAST(:users AS text[]), CAST(:alerts AS text[]), CAST(:types AS text[]),
                CAST(:periods AS uuid[]), CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]),
                CAST(:thresholds AS text[]), CAST(:used AS bigint[]), CAST(:limits AS bigint[]),
                CAST(:available AS bigint[]))
        AS x (user_id, alert_id, usage_type, period_id, period_start, period_end, threshold, used,
              allowance, available)
    LEFT JOIN periods p ON p.period_id = x.period_id
    ON CONFLICT (user_id, alert_id, period_start) DO NOTHING
    """
)


def insert_crossed(conn: Connection, at: datetime, crossings: Sequence[Crossing]) -> None:
    """THE write of the outbox: the alerts `crossings` name, each at most once per user, alert and
    period (ON CONFLICT DO NOTHING), in one statement queued with the transaction's next round
    trip (usually COMMIT): crossing costs no round trip. Call it only with something crossed."""
    if not crossings:
        return
    queue(
        conn,
        _INSERT_CROSSED,
        {
            "at": at,
            "users": [c.user_id for c in crossings],
            "alerts": [c.alert_id for c in crossings],
            "types": [c.usage_type for c in crossings],
            "periods": [c.period_id for c in crossings],
            "starts": [c.period_start for c in crossings],
            "ends": [c.period_end for c in crossings],
            "thresholds": [json.dumps(c.threshold, separators=(",", ":")) for c in crossings],
            "used": [c.used for c in crossings],
            "limits": [c.limit for c in crossings],
            "available": [c.available for c in crossings],
        },
    )


# --- delivery ---------------------------------------------------------------------------------------


class AlertRow(NamedTuple):
    id: UUID
    user_id: str
    alert_id: str
    usage_type: str
    period_start: datetime
    period_end: datetime
    threshold: Any
    used: int
    allowance: int | None
    available: int | None
    occurred_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    event_sent_at: datetime | None
    webhook_sent_at: datetime | None
    delivered_at: datetime | None


_CLAIM = Statement(
    """
    UPDATE alerts a SET attempts = a.attempts + 1, next_attempt_at = :lease_until
    FROM (SELECT id FROM alerts
          WHERE state = 'pending' AND next_attempt_at <= :now
          ORDER BY next_attempt_at, id
          LIMIT :limit
          FOR UPDATE SKIP LOCKED) AS due
    WHERE a.id = due.id
    RETURNING a.id, a.user_id, a.alert_id, a.usage_type, a.period_start, a.period_end, a.threshold,
        a.used, a.allowance, a.available, a.occurred_at, a.state, a.attempts, a.next_attempt_at,
        a.last_error, a.event_sent_at, a.webhook_sent_at, a.delivered_at
    """
)


def _alert(row: Any) -> AlertRow:
    threshold = row.threshold if not isinstance(row.threshold, str) else json.loads(row.threshold)
    return AlertRow._make((*row[:6], threshold, *row[7:]))


def claim_due(conn: Connection, now: datetime, limit: int, lease: timedelta) -> list[AlertRow]:
    """Claim up to `limit` pending alerts due at `now`: each counts one more attempt and is hidden
    from other claimers until `now + lease` (its `attempts` is the claim's fencing token). Rows
    another transaction is claiming are skipped, not waited for. Commit at once: delivery runs
    outside the transaction."""
    found = rows(conn, _CLAIM, {"now": now, "lease_until": now + lease, "limit": limit})
    return sorted((_alert(r) for r in found), key=lambda a: (a.occurred_at, a.alert_id))


class Settlement(NamedTuple):
    """What one claimed delivery attempt achieved."""

    id: UUID
    attempts: int  # the claim's: a settlement of a claim taken over since changes nothing
    state: str  # pending (retry at next_attempt_at), delivered or dead
    next_attempt_at: datetime
    error: str | None
    event_sent: bool
    webhook_sent: bool


_SETTLE = Statement(
    """
    UPDATE alerts a SET state = s.state, next_attempt_at = s.next_at, last_error = s.error,
        event_sent_at = CASE WHEN s.event_sent THEN coalesce(a.event_sent_at, :now) ELSE a.event_sent_at END,
        webhook_sent_at = CASE WHEN s.webhook_sent THEN coalesce(a.webhook_sent_at, :now)
                               ELSE a.webhook_sent_at END,
        delivered_at = CASE WHEN s.state = 'delivered' THEN :now ELSE a.delivered_at END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]), CAST(:states AS text[]),
                CAST(:next_at AS timestamptz[]), CAST(:errors AS text[]),
                CAST(:event_sent AS boolean[]), CAST(:webhook_sent AS boolean[]))
        AS s (id, attempts, state, next_at, error, event_sent, webhook_sent)
    WHERE a.id = s.id AND a.attempts = s.attempts AND a.state = 'pending'
    RETURNING a.id
    """
)


def settle(conn: Connection, now: datetime, settlements: Sequence[Settlement]) -> int:
    """Record the outcome of claimed attempts (one statement); how many rows it changed."""
    if not settlements:
        return 0
    changed = rows(
        conn,
        _SETTLE,
        {
            "now": now,
            "ids": [s.id for s in settlements],
            "attempts": [s.attempts for s in settlements],
            "states": [s.state for s in settlements],
            "next_at": [s.next_attempt_at for s in settlements],
            "errors": [s.error for s in settlements],
            "event_sent": [s.event_sent for s in settlements],
            "webhook_sent": [s.webhook_sent for s in settlements],
        },
    )
    return len(changed)


# --- operators -----------------------------------------------------------------------------------------

_LIST = Statement(
    """
    SELECT a.id, a.user_id, a.alert_id, a.usage_type, a.period_start, a.period_end, a.threshold,
        a.used, a.allowance, a.available, a.occurred_at, a.state, a.attempts, a.next_attempt_at,
        a.last_error, a.event_sent_at, a.webhook_sent_at, a.delivered_at
    FROM alerts a
    WHERE state = :state AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
    ORDER BY occurred_at, id LIMIT :limit
    """
)


def list_alerts(conn: Connection, state: str, user_id: str | None, limit: int) -> list[AlertRow]:
    return [_alert(r) for r in rows(conn, _LIST, {"state": state, "user_id": user_id, "limit": limit})]


_REPLAY = Statement(
    """
    UPDATE alerts SET state = 'pending', attempts = 0, next_attempt_at = :now, last_error = NULL
    WHERE state = 'dead' AND (CAST(:ids AS uuid[]) IS NULL OR id = ANY(CAST(:ids AS uuid[])))
      AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
    RETURNING id
    """
)


def replay_dead(conn: Connection, now: datetime, ids: Sequence[UUID] | None, user_id: str | None) -> int:
    """Dead alerts (all, or these ids, or one user's) pending again, due now, attempts reset."""
    params = {"now": now, "ids": list(ids) if ids is not None else None, "user_id": user_id}
    return len(rows(conn, _REPLAY, params))
