"""Usage alerts, the writing side: the transactional outbox (api.md section 7).

Every path that changes what a user has left calls one of these inside its transaction, with the
pair's state before and after the change, while it holds the pair's lock:

- `levels` + `after_usage`: a set of records (HTTP record, batch, queue), over the running pairs
  of `metering.services.record` (each period an event of the set was charged to: the current
  one, or a late event's);
- `after_expiry`: a grant's expiry (`metering.services.grants`);
- `crossed`: any other single change (an adjustment, a renewal or plan correction that changes
  the allowance), with two `Standing`s.

They compute the crossing in Python from state already read, and only when something is crossed
queue ONE statement (`metering.db.alerts.insert_crossed`) with the transaction's next round trip:
a change that crosses nothing costs nothing, one that crosses costs no round trip. Delivery is
`metering.services.alert_delivery`, outside these transactions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from uuid import UUID

from metering.db.alerts import Crossing, insert_crossed
from metering.db.ledger import Pair, PairState
from metering.domain import alerts as rules
from metering.domain.alerts import Level
from metering.errors import UnknownUsageType
from metering.services.context import Meter, Standing, meter, standing

if TYPE_CHECKING:
    from sqlalchemy import Connection


class Slot(Protocol):
    """A locked pair's counter in one period (`record._Slot`)."""

    period_id: UUID
    start: datetime
    end: datetime
    limit: int | None
    used: int


class Running(Protocol):
    """A locked pair's running pools during a set of records (`record._Pair`); read only."""

    @property
    def meter(self) -> Meter: ...
    @property
    def state(self) -> PairState: ...
    @property
    def rollover(self) -> int: ...
    @property
    def purchased(self) -> int: ...
    @property
    def grants(self) -> list[list[Any]]: ...  # [grant_id, remaining]
    @property
    def slots(self) -> Mapping[datetime, Slot]: ...  # period start -> its counter


class Pools(NamedTuple):
    rollover: int
    purchased: int
    granted: int


def _pools(p: Running) -> Pools:
    return Pools(p.rollover, p.purchased, sum(g[1] for g in p.grants))


def _level(p: Running, slot: Slot, pools: Pools, used: int) -> Level:
    return rules.level(
        limit=slot.limit,
        used=used,
        rollover=pools.rollover,
        purchased=pools.purchased,
        pools=p.meter.pools,
        granted=pools.granted,
    )


def levels(pairs: Mapping[Pair, Running]) -> dict[Pair, Pools]:
    """Before a set of records: the pools of the pairs whose usage type has alerts (usually none;
    a period's counter before the set is the one the lock read, `state.periods`)."""
    return {pair: _pools(p) for pair, p in pairs.items() if p.meter.catalog.alerts_for(p.meter.usage_type.id)}


def after_usage(
    conn: Connection, pairs: Mapping[Pair, Running], before: Mapping[Pair, Pools], now: datetime
) -> None:
    """After the set's events are applied to `pairs`: the alerts crossed since `before`, in each
    period the set charged, queued."""
    found = []
    for pair, was in before.items():
        p = pairs[pair]
        alerts = p.meter.catalog.alerts_for(pair[1])
        now_pools = _pools(p)
        for slot in p.slots.values():
            stored = p.state.periods.get(slot.start)
            then = _level(p, slot, was, stored[1] if stored else 0)
            now_at = _level(p, slot, now_pools, slot.used)
            for alert in rules.crossed(alerts, then, now_at):
                found.append(
                    Crossing(
                        pair[0],
                        alert.id,
                        pair[1],
                        alert.threshold,
                        now_at.used,
                        now_at.limit,
                        now_at.available,
                        period_id=slot.period_id,
                        period_start=slot.start,
                        period_end=slot.end,
                    )
                )
    insert_crossed(conn, now, found)


def standing_level(st: Standing) -> Level:
    return rules.level(
        limit=st.limit,
        used=st.used,
        rollover=st.rollover,
        purchased=st.purchased,
        pools=st.pooled,
        granted=st.granted,
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


def after_expiry(
    conn: Connection, user_id: str, usage_type: str, state: PairState, expired: int, now: datetime
) -> list[str]:
    """A grant's `expired` remaining credit is journaled as expired: `state` (read under the lock
    at `now`) no longer counts it; before the expiry it did."""
    try:
        m = meter(usage_type)
    except UnknownUsageType:  # the usage type left the catalog: no alerts to cross
        return []
    if not m.catalog.alerts_for(usage_type):
        return []
    after = standing(m, state, now)
    return crossed(conn, m, user_id, after._replace(granted=after.granted + expired), after, now)
