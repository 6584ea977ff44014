"""The catalog of usage types, plans and packs (api.md section 4). See `metering.catalog.model`."""

from metering.catalog.model import (
    DEFAULT_CATALOG,
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
