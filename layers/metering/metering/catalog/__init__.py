"""The catalog of usage types, plans, packs and alerts (api.md sections 4, 7): `metering.catalog.model`."""

from metering.catalog.model import (
    DEFAULT_CATALOG,
    Alert,
    Breakdown,
    Catalog,
    CatalogError,
    Pack,
    Plan,
    UsageType,
    get_catalog,
    load_catalog,
    parse_catalog,
    validate_catalog,
)

__all__ = [
    "DEFAULT_CATALOG",
    "Alert",
    "Breakdown",
    "Catalog",
    "CatalogError",
    "Pack",
    "Plan",
    "UsageType",
    "get_catalog",
    "load_catalog",
    "parse_catalog",
    "validate_catalog",
]
