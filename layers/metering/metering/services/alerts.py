"""Usage alerts, the writing side: the transactional outbox (api.md section 7).

Every path that changes what a user has left calls one of two functions inside its transaction,
with the pair's state before and after the change, while it holds the pair's lock:

- `levels` + `after_usage`: a set of records (HTTP record, batch, queue), over the running pairs
  of `metering.services.record`;
- `crossed`: any other single change (an adjustment, a renewal or plan correction that changes
  the allowance, a grant's expiry), with two `Standing`s.

Both compute the crossing in Python from state already read, and only when something is crossed
queue ONE statement (`metering.db.alerts.insert_crossed`) with the transaction's next round trip:
a change that crosses nothing costs nothing, one that crosses costs no round trip. Delivery is
`metering.services.alert_delivery`, outside these transactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol
from uuid import UUID

from sqlalchemy import Connection

from metering.db.alerts import Crossing, insert_crossed
from metering.db.ledger import Pair
from metering.domain import alerts as rules
from metering.domain.alerts import Level
from metering.services.context import Meter, Standing


class Running(Protocol):
    """A locked pair's running pools during a set of records (`record._Pair`)."""

    meter: Meter
    period_id: UUID
    limit: int | None
    used: int
    rollover: int
    purchased: int


def _level(p: Running) -> Level:
    return rules.level(
        limit=p.limit, used=p.used, rollover=p.rollover, purchased=p.purchased, pools=p.meter.pools
    )


def levels(pairs: Mapping[Pair, Running]) -> dict[Pair, Level]:
    """Before a set of records: the levels of the pairs whose usage type has alerts (usually none)."""
    return {pair: _level(p) for pair, p in pairs.items() if p.meter.catalog.alerts_for(p.meter.usage_type.id)}


def after_usage(
    conn: Connection, pairs: Mapping[Pair, Running], before: Mapping[Pair, Level], now: datetime
) -> None:
    """After the set's events are applied to `pairs`: the alerts crossed since `before`, queued."""
    found = []
    for pair, was in before.items():
        p = pairs[pair]
        now_at = _level(p)
        for alert in rules.crossed(p.meter.catalog.alerts_for(pair[1]), was, now_at):
            found.append(
                Crossing(
                    pair[0],
                    alert.id,
                    pair[1],
                    alert.threshold,
                    now_at.used,
                    now_at.limit,
                    now_at.available,
                    period_id=p.period_id,
                )
            )
    insert_crossed(conn, now, found)


def standing_level(st: Standing) -> Level:
    return rules.level(
        limit=st.limit, used=st.used, rollover=st.rollover, purchased=st.purchased, pools=st.pooled
    )


def crossed(
    conn: Connection, m: Meter, user_id: str, before: Standing, after: Standing, now: datetime
) -> list[str]:
    """THE hook of a single change of (user_id, m's usage type) other than a record: `before` and
    `after` are where the pair stands around it, in the period of `after`. Queues the alerts
    crossed (at most once per user, alert and period); their ids."""
    alerts = m.catalog.alerts_for(m.usage_type.id)
    if not alerts:
        return []
    now_at = standing_level(after)
    hit = rules.crossed(alerts, standing_level(before), now_at)
    insert_crossed(
        conn,
        now,
        [
            Crossing(
                user_id,
                alert.id,
                m.usage_type.id,
                alert.threshold,
                now_at.used,
                now_at.limit,
                now_at.available,
                period_start=after.spec.start,
                period_end=after.spec.end,
            )
            for alert in hit
        ],
    )
    return [alert.id for alert in hit]
