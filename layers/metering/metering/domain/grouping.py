"""How one usage event falls into the catalog's breakdown groups (metering.md "Reads")."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metering.catalog import Breakdown


def field_value(field: str, reference_id: str | None, details: dict[str, Any] | None) -> Any:
    """The value of a catalog field path (`reference_id` or `details.<key>`) in one event."""
    if field == "reference_id":
        return reference_id
    return (details or {}).get(field.removeprefix("details."))


def group_of(spec: Breakdown, reference_id: str | None, details: dict[str, Any] | None) -> dict[str, Any]:
    return {field: field_value(field, reference_id, details) for field in spec.group_by}


def group_key(group: dict[str, Any]) -> str:
    """A stable text key for a group (the primary key of its lifetime aggregate)."""
    return json.dumps(list(group.values()), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def label_of(spec: Breakdown, reference_id: str | None, details: dict[str, Any] | None) -> str | None:
    """The label as text, the way PostgreSQL's `->>` renders a JSON value. An empty label is no
    label, here and in the breakdown's SQL (`metering.db.reads`): the latest non-empty one shows."""
    if spec.label is None:
        return None
    value = field_value(spec.label, reference_id, details)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def measures_of(spec: Breakdown, details: dict[str, Any] | None) -> dict[str, int | float]:
    """The numeric measures an event carries; non-numeric values are not summed."""
    out: dict[str, int | float] = {}
    for field in spec.measures:
        value = field_value(field, None, details)
        if is_number(value):
            out[field] = value
    return out
