"""The catalog of usage types, plans, packs and alerts (api.md sections 4, 7): `metering.catalog.model`.

The model is imported when the first request reads the catalog (with PyYAML), not when a handler
is imported: this package holds `get_catalog` and loads the model's names on first access
(PEP 562), so a handler's modules import these names for type checking only
(docs/decisions.md, 2026-12-03 "Cold start").
"""

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from metering.config import get_settings

if TYPE_CHECKING:
    from metering.catalog.model import (
        DEFAULT_CATALOG,
        Alert,
        Breakdown,
        Catalog,
        CatalogError,
        Pack,
        Plan,
        UsageType,
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


@lru_cache(maxsize=1)
def get_catalog() -> "Catalog":
    """The service's catalog: METERING_CATALOG when set, else the shipped default. Tests that
    change the variable call `get_settings.cache_clear()` and `get_catalog.cache_clear()`."""
    from metering.catalog.model import load_catalog

    return load_catalog(get_settings().metering_catalog)


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from metering.catalog import model

    value = getattr(model, name)
    globals()[name] = value
    return value
