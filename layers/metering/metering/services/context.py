"""What every use case needs to know about one usage type (`Meter`), and where a (user, usage type)
pair stands at a moment (`standing`): the one computation of limit, used and pools that the check,
the record, the summary and the adjustments share."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from metering.catalog import get_catalog
from metering.config import get_settings
from metering.db.ledger import PairState, PeriodRow, Pools, lock_pairs
from metering.domain.ledger import available, remaining
from metering.domain.periods import PeriodSpec, governing_plan, resolve_period
from metering.errors import UnknownUsageType

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from metering.catalog import Catalog, Plan, UsageType


class Meter(NamedTuple):
    usage_type: UsageType
    catalog: Catalog
    billing_enabled: bool

    @property
    def pools(self) -> bool:
        return self.usage_type.pools

    def plan(self, plan_id: str | None) -> Plan:
        # a period whose plan has left the catalog falls back to the free plan
        return self.catalog.find_plan(plan_id) or self.catalog.free_plan

    def limit(self, plan_id: str | None) -> int | None:
        """The period limit; None (unlimited) when billing is off."""
        if not self.billing_enabled:
            return None
        return self.plan(plan_id).limit(self.usage_type.id)


def meter(usage_type: str, field: str = "usage_type") -> Meter:
    catalog = get_catalog()
    found = catalog.usage_type(usage_type)
    if found is None:
        raise UnknownUsageType(usage_type, field)
    return Meter(found, catalog, get_settings().billing_enabled)


class Standing(NamedTuple):
    """A pair at a moment: the period containing it (`row` None: not stored yet), its limit and
    counter, and the pools (0 for a plain counter, whose check and record ignore them)."""

    pooled: bool
    spec: PeriodSpec
    row: PeriodRow | None
    plan_id: str  # the plan governing the period (`domain.periods.governing_plan`)
    limit: int | None
    used: int
    rollover: int
    purchased: int
    version: int
    granted: int = 0  # live grants' remaining at the moment (0 for a plain counter)

    @property
    def pools(self) -> Pools:
        return Pools(self.used, self.rollover, self.purchased, self.version, self.granted)

    def before_holds(self) -> int | None:
        """What a check may grant before live reservations are counted (None: unlimited)."""
        left = remaining(self.limit, self.used)
        return None if left is None else left + self.rollover + self.granted + self.purchased

    def available(self, reserved: int) -> int | None:
        return available(
            limit=self.limit,
            used=self.used,
            rollover=self.rollover,
            purchased=self.purchased,
            pools=self.pooled,
            reserved=reserved,
            granted=self.granted,
        )


def standing(m: Meter, state: PairState, now: datetime) -> Standing:
    """Where the pair of `state` stands at `now` (metering.md "Check", steps 1-4)."""
    spec = resolve_period(state.subscription, now, m.catalog.free_plan.id)
    row, used = state.period(spec)
    plan_id = governing_plan(spec, row.plan_id if row else None)
    rollover, purchased, granted = (state.rollover, state.purchased, state.granted) if m.pools else (0, 0, 0)
    return Standing(
        m.pools, spec, row, plan_id, m.limit(plan_id), used, rollover, purchased, state.version, granted
    )


def locked_standing(conn: Connection, m: Meter, user_id: str, now: datetime) -> Standing:
    """Lock (user, usage type) for the rest of the transaction, and where it stands at `now`."""
    pair = (user_id, m.usage_type.id)
    states, _ = lock_pairs(conn, [pair], now)
    return standing(m, states[pair], now)
