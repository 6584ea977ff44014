"""The catalog: usage types, plans, packs and alerts (api.md sections 4 and 7, metering.md "The
catalog").

`parse_catalog` / `load_catalog` read the YAML file and validate all of it before anything else
runs: a bad catalog is one `CatalogError` that lists every problem, one per line, each named by its
field path (`plans[1].limits.ocr_tokens: must be >= 0 or null (got -1)`) and the file.
`metering.catalog.get_catalog()` is the process-wide catalog (METERING_CATALOG, else the shipped
default.yaml); this module is imported on its first call.
"""

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from metering.errors import INT64_MAX

if TYPE_CHECKING:  # PyYAML is imported when a catalog is read, not when this module is
    import yaml

DEFAULT_CATALOG = Path(__file__).with_name("default.yaml")

ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]*$"
FIELD_PATTERN = r"^(?:reference_id|details\.[A-Za-z0-9_\-]+)$"
_ID_RE = re.compile(ID_PATTERN)
_FIELD_RE = re.compile(FIELD_PATTERN)
_TOP_LEVEL_KEYS = ("usage_types", "plans", "packs", "alerts")
ALERT_WHEN = ("available_depleted",)


class CatalogError(ValueError):
    """The catalog cannot be used. `problems` are "field.path: what is wrong" lines."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"invalid catalog {source}:\n{lines}")


# --- scalar validators: strict, with messages that read well after a field path -----------------


def _fail(message: str) -> PydanticCustomError:
    # the message goes through a context value so that braces in it are never formatted
    return PydanticCustomError("catalog", "{message}", {"message": message})


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(minimum: int, *, nullable: bool) -> Callable[[object], Any]:
    bound = f">= {minimum} or null" if nullable else f">= {minimum}"

    def check(value: object) -> int | None:
        if value is None and nullable:
            return None
        # YAML gives int, float, bool or str; bool is an int subclass but never a count
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(f"must be an integer {bound} (got {_show(value)})")
        if value < minimum:
            raise _fail(f"must be {bound} (got {value})")
        if value > INT64_MAX:
            raise _fail(f"must fit in a signed 64-bit integer (at most {INT64_MAX}, got {value})")
        return value

    return check


def _identifier(value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise _fail(f"must be an id matching {ID_PATTERN} (got {_show(value)})")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"must be a non-empty string (got {_show(value)})")
    return value


def _price(value: object) -> str:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        raise _fail(f"must be a Stripe price id without spaces (got {_show(value)})")
    return value


def _field_path(value: object) -> str:
    if not isinstance(value, str) or not _FIELD_RE.match(value):
        raise _fail(f"must be reference_id or details.<key> with key [A-Za-z0-9_-]+ (got {_show(value)})")
    return value


def _percent(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise _fail(f"must be an integer from 1 to 100 (got {_show(value)})")
    return value


def _when(value: object) -> str:
    if value not in ALERT_WHEN:
        raise _fail(f"must be one of {', '.join(ALERT_WHEN)} (got {_show(value)})")
    assert isinstance(value, str)
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"must be true or false (got {_show(value)})")
    return value


Id = Annotated[str, PlainValidator(_identifier)]
Text = Annotated[str, PlainValidator(_text)]
PriceId = Annotated[str, PlainValidator(_price)]
FieldPath = Annotated[str, PlainValidator(_field_path)]
Flag = Annotated[bool, PlainValidator(_boolean)]
Count = Annotated[int, PlainValidator(_integer(0, nullable=False))]
OptionalCount = Annotated[int | None, PlainValidator(_integer(0, nullable=True))]
Limit = Annotated[int | None, PlainValidator(_integer(0, nullable=True))]
Amount = Annotated[int, PlainValidator(_integer(1, nullable=False))]
Percent = Annotated[int, PlainValidator(_percent)]
When = Annotated[str, PlainValidator(_when)]
MAX_DAYS = 3660  # ten years: a credit's lifetime, well inside datetime's range


def _days(value: object) -> int | None:
    days = _integer(1, nullable=True)(value)
    if days is not None and days > MAX_DAYS:
        raise _fail(f"must be at most {MAX_DAYS} days (got {days})")
    return days


Days = Annotated[int | None, PlainValidator(_days)]


def _no_repeats(values: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise _fail(f"{value!r} is listed twice")
        seen.add(value)
    return values


_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True)


# --- the model -------------------------------------------------------------------------------------


class Breakdown(BaseModel):
    """How a usage type's events are grouped, labelled and summed in breakdowns and statistics."""

    model_config = _FROZEN

    group_by: tuple[FieldPath, ...] = ()
    label: FieldPath | None = None
    measures: tuple[FieldPath, ...] = ()
    distinct: tuple[FieldPath, ...] = ()

    @field_validator("group_by", "measures", "distinct")
    @classmethod
    def _unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _no_repeats(values)


class UsageType(BaseModel):
    model_config = _FROZEN

    id: Id  # the key of its entry under usage_types
    name: Text
    pools: Flag = False
    rollover_cap: Count = 0
    breakdown: Breakdown = Breakdown()

    @field_validator("rollover_cap")
    @classmethod
    def _cap_needs_pools(cls, cap: int, info: ValidationInfo) -> int:
        if cap and info.data.get("pools") is False:
            raise _fail("a plain counter (pools: false) never rolls over: remove rollover_cap or set pools")
        return cap


class Plan(BaseModel):
    model_config = _FROZEN

    id: Id
    name: Text
    rank: Count
    free: Flag = False
    trial_days: OptionalCount = None
    stripe_prices: tuple[PriceId, ...] = ()
    limits: dict[str, Limit]  # usage type id -> limit per period; None = unlimited

    def limit(self, usage_type: str) -> int | None:
        """The period limit (None = unlimited). KeyError for a usage type the catalog lacks: never
        read a missing limit as unlimited."""
        try:
            return self.limits[usage_type]
        except KeyError:
            raise KeyError(f"plan {self.id!r} has no limit for usage type {usage_type!r}") from None


class Pack(BaseModel):
    """A one-off purchase that credits the `purchased` pool of a pooled usage type, or, with
    `expires_in_days`, a grant that expires that many days after the purchase (api.md section 7)."""

    model_config = _FROZEN

    id: Id
    usage_type: Id
    amount: Amount
    name: Text | None = None
    stripe_prices: tuple[PriceId, ...] = ()
    expires_in_days: Days = None


class Alert(BaseModel):
    """A threshold of a usage type that, once crossed, writes one alert per user and period
    (api.md section 7): `at_percent` of the period's allowance, or `when` available reaches 0."""

    model_config = _FROZEN

    id: Id
    usage_type: Id
    at_percent: Percent | None = None
    when: When | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> "Alert":
        if (self.at_percent is None) == (self.when is None):
            raise _fail("give exactly one of at_percent (1..100) or when (available_depleted)")
        return self

    @property
    def threshold(self) -> dict[str, int | str]:
        """The body's `threshold`: {"at_percent": n} or {"when": "..."}."""
        return {"at_percent": self.at_percent} if self.at_percent is not None else {"when": str(self.when)}


class CatalogIndex(NamedTuple):
    plans: dict[str, Plan]
    prices: dict[str, Plan]
    packs: dict[str, Pack]
    pack_prices: dict[str, Pack]
    alerts: dict[str, tuple[Alert, ...]]
    free: Plan | None


class Catalog(BaseModel):
    """A validated catalog. Build it with `validate_catalog` (or `parse_catalog` / `load_catalog`):
    the rules that span entries are checked there, once, with every problem reported together."""

    model_config = _FROZEN

    usage_types: dict[str, UsageType]  # ordered as in the file
    plans: tuple[Plan, ...]
    packs: tuple[Pack, ...] = ()
    alerts: tuple[Alert, ...] = ()

    @cached_property
    def index(self) -> CatalogIndex:
        """The lookups by id and price, made on first use and kept in the instance's `__dict__`:
        the record path reads them per pair, and a pydantic private attribute would be read
        through `BaseModel.__getattr__` each time (≈ 2 µs)."""
        return CatalogIndex(
            plans={plan.id: plan for plan in self.plans},
            prices={price: plan for plan in self.plans for price in plan.stripe_prices},
            packs={pack.id: pack for pack in self.packs},
            pack_prices={price: pack for pack in self.packs for price in pack.stripe_prices},
            alerts={
                kind: tuple(alert for alert in self.alerts if alert.usage_type == kind)
                for kind in {alert.usage_type for alert in self.alerts}
            },
            free=next((plan for plan in self.plans if plan.free), None),
        )

    @property
    def free_plan(self) -> Plan:
        """The plan of everyone without an entitled subscription (exactly one, checked at load)."""
        free = self.index.free
        if free is None:
            raise ValueError("the catalog has no free plan")
        return free

    def plan(self, plan_id: str) -> Plan:
        try:
            return self.index.plans[plan_id]
        except KeyError:
            raise KeyError(f"unknown plan {plan_id!r}") from None

    def find_plan(self, plan_id: str | None) -> Plan | None:
        return None if plan_id is None else self.index.plans.get(plan_id)

    def plan_for_price(self, price_id: str) -> Plan | None:
        return self.index.prices.get(price_id)

    def pack(self, pack_id: str) -> Pack | None:
        return self.index.packs.get(pack_id)

    def pack_for_price(self, price_id: str) -> Pack | None:
        return self.index.pack_prices.get(price_id)

    def usage_type(self, name: str) -> UsageType | None:
        return self.usage_types.get(name)

    def alerts_for(self, usage_type: str) -> tuple[Alert, ...]:
        """The alerts of one usage type (empty for most: a dict lookup on the record path)."""
        return self.index.alerts.get(usage_type, ())


def cross_check(
    declared: Sequence[str],
    usage_types: Mapping[str, UsageType],
    plans: Sequence[tuple[int, Plan]],
    packs: Sequence[tuple[int, Pack]],
    *,
    complete: bool = True,
    alerts: Sequence[tuple[int, Alert]] = (),
) -> list[str]:
    """Rules that span entries. `declared` is every usage type key in the file (valid or not);
    `plans` / `packs` are the entries that validated, with their position in the file. With
    `complete=False` some plan failed to validate, so "no free plan" is not reported."""
    problems: list[str] = []
    if not declared:
        problems.append("usage_types: must declare at least one usage type")
    if complete and not plans:
        problems.append("plans: must list at least one plan")

    problems += _duplicates("plan id", [(f"plans[{i}].id", plan.id) for i, plan in plans])
    problems += _duplicates("pack id", [(f"packs[{i}].id", pack.id) for i, pack in packs])

    free = [i for i, plan in plans if plan.free]
    if not free and complete and plans:
        problems.append("plans: exactly one plan must have free: true (none has)")
    for i in free[1:]:
        problems.append(f"plans[{i}].free: exactly one plan may have free: true (plans[{free[0]}] has too)")

    known = set(declared)
    for i, plan in plans:
        problems += [
            f"plans[{i}].limits.{key}: undeclared usage type" for key in plan.limits if key not in known
        ]
        problems += [
            f"plans[{i}].limits.{key}: missing (every plan lists every usage type; null = unlimited)"
            for key in declared
            if key not in plan.limits
        ]

    prices: list[tuple[str, str]] = [
        (f"plans[{i}].stripe_prices[{j}]", price)
        for i, plan in plans
        for j, price in enumerate(plan.stripe_prices)
    ]
    prices += [
        (f"packs[{i}].stripe_prices[{j}]", price)
        for i, pack in packs
        for j, price in enumerate(pack.stripe_prices)
    ]
    problems += _duplicates("Stripe price", prices)

    for i, pack in packs:
        if pack.usage_type not in known:
            problems.append(f"packs[{i}].usage_type: undeclared usage type {pack.usage_type!r}")
        elif (kind := usage_types.get(pack.usage_type)) is not None and not kind.pools:
            problems.append(
                f"packs[{i}].usage_type: {pack.usage_type!r} is a plain counter (pools: false);"
                " a pack credits the purchased pool, so its usage type must use pools"
            )

    problems += _duplicates("alert id", [(f"alerts[{i}].id", alert.id) for i, alert in alerts])
    for i, alert in alerts:
        if alert.usage_type not in known:
            problems.append(f"alerts[{i}].usage_type: undeclared usage type {alert.usage_type!r}")
        elif (
            alert.when is not None
            and (kind := usage_types.get(alert.usage_type)) is not None
            and not kind.pools
        ):
            problems.append(
                f"alerts[{i}].when: {alert.usage_type!r} is a plain counter (pools: false), whose"
                " available never runs out on record; use at_percent"
            )
    return problems


def _duplicates(what: str, entries: Iterable[tuple[str, str]]) -> list[str]:
    first: dict[str, str] = {}
    problems: list[str] = []
    for path, value in entries:
        if value in first:
            problems.append(f"{path}: duplicate {what} {value!r} (already at {first[value]})")
        else:
            first[value] = path
    return problems


# --- YAML ------------------------------------------------------------------------------------------


def _duplicate_keys(node: "yaml.Node") -> list[str]:
    """Every duplicate mapping key under `node` (PyYAML's SafeLoader silently keeps the last)."""
    import yaml

    problems: list[str] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen:  # aliases may point back up the tree
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    where = f"{path}.{key_node.value}" if path else key_node.value
                    if key in keys:
                        problems.append(f"{where}: duplicate key (line {line}, first at line {keys[key]})")
                    else:
                        keys[key] = line
                    walk(value_node, where)
                else:
                    walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{path}[{index}]")

    walk(node, "")
    return problems


def _read_yaml(text: str, source: str) -> Any:
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(node)
        if duplicates:
            raise CatalogError(source, duplicates)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise CatalogError(source, [f"{where}: YAML syntax error: {what}"]) from None
    except yaml.YAMLError as exc:
        raise CatalogError(source, [f"YAML error: {exc}"]) from None
    finally:
        loader.dispose()


def _translate(prefix: str, exc: ValidationError) -> list[str]:
    """pydantic errors as "prefix.field[index]: message" lines."""
    out: list[str] = []
    for err in exc.errors():
        path = prefix
        for part in err["loc"]:
            if part == "[key]":
                continue
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        kind = err["type"]
        if kind == "missing":
            message = "required"
        elif kind == "extra_forbidden":
            message = "unknown key"
        elif kind in {"tuple_type", "list_type"}:
            message = f"must be a list (got {_show(err['input'])})"
        elif kind in {"dict_type", "model_type", "model_attributes_type", "mapping_type"}:
            message = f"must be a mapping (got {_show(err['input'])})"
        elif kind == "string_type":
            message = f"must be a string (got {_show(err['input'])})"
        elif kind == "catalog":
            message = err["msg"]
        else:
            message = err["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
        out.append(f"{path}: {message}")
    return out


def _validate[M: BaseModel](model: type[M], data: Any, path: str, problems: list[str]) -> M | None:
    if not isinstance(data, Mapping):
        problems.append(f"{path}: must be a mapping (got {_show(data)})")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems += _translate(path, exc)
        return None


def _entries(data: Mapping[Any, Any], key: str, problems: list[str], *, required: bool) -> list[Any]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: {'required' if key not in data else f'must be a list (got {_show(value)})'}")
        return []
    return value


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    """Validate a catalog YAML document; every problem at once, as one CatalogError."""
    return validate_catalog(_read_yaml(text, source), source)


def validate_catalog(data: Any, source: str = "<data>") -> Catalog:
    """THE validation of a catalog (read from YAML, or built in code): each entry on its own, then
    the rules that span entries; every problem at once, as one CatalogError naming its field."""
    if not isinstance(data, dict):
        raise CatalogError(
            source, [f"top level: must be a mapping with usage_types and plans (got {_show(data)})"]
        )

    problems = [f"{key}: unknown key" for key in data if key not in _TOP_LEVEL_KEYS]

    raw_types = data.get("usage_types")
    declared: list[str] = []
    usage_types: dict[str, UsageType] = {}
    if not isinstance(raw_types, dict):
        problems.append(
            "usage_types: required"
            if "usage_types" not in data
            else f"usage_types: must be a mapping (got {_show(raw_types)})"
        )
    else:
        for key, body in raw_types.items():
            if not isinstance(key, str) or not _ID_RE.match(key):
                problems.append(f"usage_types.{key}: key must be an id matching {ID_PATTERN}")
                continue
            declared.append(key)
            if isinstance(body, Mapping):
                if "id" in body:
                    problems.append(f"usage_types.{key}.id: unknown key (a usage type's id is its key)")
                body = {**{k: v for k, v in body.items() if k != "id"}, "id": key}
            kind = _validate(UsageType, body, f"usage_types.{key}", problems)
            if kind is not None:
                usage_types[key] = kind

    raw_plans = _entries(data, "plans", problems, required=True)
    plans = [
        (i, plan)
        for i, raw in enumerate(raw_plans)
        if (plan := _validate(Plan, raw, f"plans[{i}]", problems)) is not None
    ]
    raw_packs = _entries(data, "packs", problems, required=False)
    packs = [
        (i, pack)
        for i, raw in enumerate(raw_packs)
        if (pack := _validate(Pack, raw, f"packs[{i}]", problems)) is not None
    ]

    raw_alerts = _entries(data, "alerts", problems, required=False)
    alerts = [
        (i, alert)
        for i, raw in enumerate(raw_alerts)
        if (alert := _validate(Alert, raw, f"alerts[{i}]", problems)) is not None
    ]

    problems += cross_check(
        declared, usage_types, plans, packs, complete=len(plans) == len(raw_plans), alerts=alerts
    )
    if problems:
        raise CatalogError(source, problems)
    return Catalog(
        usage_types=usage_types,
        plans=tuple(plan for _, plan in plans),
        packs=tuple(pack for _, pack in packs),
        alerts=tuple(alert for _, alert in alerts),
    )


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load and validate a catalog file; None is the default catalog shipped with the package."""
    file = DEFAULT_CATALOG if path is None else Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(str(file), [f"cannot read the file: {exc}"]) from None
    return parse_catalog(text, str(file))
