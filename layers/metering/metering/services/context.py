"""What every use case needs to know about the catalog and settings for one usage type."""

from __future__ import annotations

from dataclasses import dataclass

from metering.catalog import Catalog, Plan, UsageType, get_catalog
from metering.config import get_settings
from metering.errors import UnknownUsageType


@dataclass(frozen=True, slots=True)
class Meter:
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
