"""The catalog loader: the shipped default, the contract's example, every load error, lookups."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from metering.catalog import (
    DEFAULT_CATALOG,
    Breakdown,
    CatalogError,
    Plan,
    get_catalog,
    load_catalog,
    parse_catalog,
    validate_catalog,
)
from metering.config import get_settings

INT64_MAX = 2**63 - 1

# api.md section 4, verbatim
CONTRACT_EXAMPLE = """\
usage_types:
  premium_voice:
    name: Premium voice characters      # display name
    pools: true                          # waterfall through rollover / purchased / debt
    rollover_cap: 1000000                # integer; 0 or absent = unused allowance never rolls over
    breakdown:
      group_by: [details.voice_slug, details.model_slug]   # fields: reference_id, details.<key>
      label: details.voice_name                            # optional display label field
      measures: [details.duration_ms]                      # optional numeric fields to sum
      distinct: []                                         # optional fields to count distinct
  ocr_tokens:
    name: OCR tokens
    pools: true
    rollover_cap: 10000000
    breakdown: {group_by: [reference_id], label: details.document_title, distinct: [details.page_idx]}
  server_kokoro:
    name: TTS characters
    pools: false
    breakdown: {group_by: [details.voice_slug, details.model_slug], measures: [details.duration_ms]}
plans:
  - id: free                 # exactly one plan has free: true
    name: Free
    rank: 0
    free: true
    limits: {server_kokoro: 0, premium_voice: 0, ocr_tokens: 0}
  - id: basic
    name: Basic
    rank: 2
    trial_days: 3
    stripe_prices: [price_basic_monthly, price_basic_yearly]
    limits: {server_kokoro: null, premium_voice: 0, ocr_tokens: 5000000}   # null = unlimited
packs:
  - id: ocr_1m
    usage_type: ocr_tokens
    amount: 1000000
    stripe_prices: [price_ocr_pack_1m]
"""


def base() -> dict[str, Any]:
    """A small valid catalog that each error case breaks in one place."""
    return {
        "usage_types": {
            "chars": {"name": "Chars", "breakdown": {"group_by": ["details.voice"]}},
            "tokens": {"name": "Tokens", "pools": True, "rollover_cap": 100},
        },
        "plans": [
            {"id": "free", "name": "Free", "rank": 0, "free": True, "limits": {"chars": 0, "tokens": 0}},
            {
                "id": "pro",
                "name": "Pro",
                "rank": 1,
                "stripe_prices": ["price_pro"],
                "limits": {"chars": None, "tokens": 10},
            },
        ],
        "packs": [{"id": "tok", "usage_type": "tokens", "amount": 5, "stripe_prices": ["price_tok"]}],
    }


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def problem(text: str, source: str = "<string>") -> str:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, source)
    message = str(info.value)
    assert source in message
    assert info.value.problems
    return message


# --- the shipped default and the contract example ---------------------------------------------------


def test_default_catalog_values() -> None:
    catalog = load_catalog()
    assert list(catalog.usage_types) == ["server_kokoro", "premium_voice", "ocr_tokens"]

    kokoro = catalog.usage_types["server_kokoro"]
    assert (kokoro.id, kokoro.name, kokoro.pools, kokoro.rollover_cap) == (
        "server_kokoro",
        "TTS characters",
        False,
        0,
    )
    assert kokoro.breakdown == Breakdown(
        group_by=("details.voice_slug", "details.model_slug"), measures=("details.duration_ms",)
    )
    voice = catalog.usage_types["premium_voice"]
    assert (voice.name, voice.pools, voice.rollover_cap) == ("Premium voice characters", True, 1_000_000)
    assert voice.breakdown == Breakdown(
        group_by=("details.voice_slug", "details.model_slug"),
        label="details.voice_name",
        measures=("details.duration_ms",),
    )
    ocr = catalog.usage_types["ocr_tokens"]
    assert (ocr.name, ocr.pools, ocr.rollover_cap) == ("OCR tokens", True, 10_000_000)
    assert ocr.breakdown == Breakdown(
        group_by=("reference_id",), label="details.document_title", distinct=("details.page_idx",)
    )

    plans = {plan.id: plan for plan in catalog.plans}
    assert [(p.id, p.rank, p.free) for p in catalog.plans] == [
        ("free", 0, True),
        ("basic", 1, False),
        ("plus", 2, False),
        ("max", 3, False),
    ]
    assert plans["free"].limits == {"server_kokoro": 0, "premium_voice": 0, "ocr_tokens": 0}
    assert plans["free"].stripe_prices == ()
    assert plans["basic"].trial_days == 3
    assert plans["basic"].stripe_prices == ("price_basic_monthly", "price_basic_yearly")
    assert plans["basic"].limits == {"server_kokoro": None, "premium_voice": 0, "ocr_tokens": 5_000_000}
    assert plans["plus"].stripe_prices == ("price_plus_monthly", "price_plus_yearly")
    assert plans["plus"].limits == {"server_kokoro": None, "premium_voice": 500_000, "ocr_tokens": 20_000_000}
    assert plans["max"].stripe_prices == ("price_max_monthly", "price_max_yearly")
    assert plans["max"].limits == {
        "server_kokoro": None,
        "premium_voice": 2_000_000,
        "ocr_tokens": 50_000_000,
    }

    assert [(p.id, p.usage_type, p.amount, p.stripe_prices) for p in catalog.packs] == [
        ("ocr_1m", "ocr_tokens", 1_000_000, ("price_ocr_pack_1m",)),
        ("ocr_10m", "ocr_tokens", 10_000_000, ("price_ocr_pack_10m",)),
        ("voice_100k", "premium_voice", 100_000, ("price_voice_pack_100k",)),
        ("voice_1m", "premium_voice", 1_000_000, ("price_voice_pack_1m",)),
    ]


def test_default_catalog_is_the_file_next_to_the_package() -> None:
    assert DEFAULT_CATALOG.name == "default.yaml"
    assert load_catalog(DEFAULT_CATALOG) == load_catalog(None)


def test_contract_example_loads() -> None:
    catalog = parse_catalog(CONTRACT_EXAMPLE)
    assert list(catalog.usage_types) == ["premium_voice", "ocr_tokens", "server_kokoro"]
    assert catalog.free_plan.id == "free"
    assert catalog.free_plan.stripe_prices == ()
    basic = catalog.plan("basic")
    assert (basic.rank, basic.trial_days) == (2, 3)
    assert basic.limit("server_kokoro") is None
    assert basic.limit("ocr_tokens") == 5_000_000
    assert catalog.usage_types["premium_voice"].breakdown.distinct == ()
    assert catalog.usage_types["server_kokoro"].rollover_cap == 0
    pack = catalog.pack("ocr_1m")
    assert pack is not None
    assert (pack.usage_type, pack.amount, pack.name) == ("ocr_tokens", 1_000_000, None)


# --- load errors -----------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Set a value by a dotted path whose parts may be list indexes."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


def _append_plan(**fields: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        plan = {"id": "team", "name": "Team", "rank": 2, "limits": {"chars": None, "tokens": 20}}
        data["plans"].append({**plan, **fields})

    return mutate


def _append_pack(**fields: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["packs"].append({"id": "more", "usage_type": "tokens", "amount": 50, **fields})

    return mutate


def _rename_usage_type(old: str, new: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["usage_types"][new] = data["usage_types"].pop(old)

    return mutate


ERROR_CASES: list[tuple[str, Mutation, str]] = [
    # unknown and missing keys
    ("unknown top-level key", _set("currency", "eur"), "currency: unknown key"),
    (
        "unknown usage type key",
        _set("usage_types.chars.colour", "red"),
        "usage_types.chars.colour: unknown key",
    ),
    (
        "unknown breakdown key",
        _set("usage_types.chars.breakdown.sort", "x"),
        "usage_types.chars.breakdown.sort: unknown key",
    ),
    ("unknown plan key", _set("plans.1.price", 5), "plans[1].price: unknown key"),
    ("unknown pack key", _set("packs.0.amt", 5), "packs[0].amt: unknown key"),
    ("id inside a usage type", _set("usage_types.chars.id", "chars"), "usage_types.chars.id: unknown key"),
    ("usage_types missing", _delete("usage_types"), "usage_types: required"),
    ("plans missing", _delete("plans"), "plans: required"),
    ("plans not a list", _set("plans", {"free": 1}), "plans: must be a list"),
    ("usage type not a mapping", _set("usage_types.chars", "Chars"), "usage_types.chars: must be a mapping"),
    ("usage type without name", _delete("usage_types.chars.name"), "usage_types.chars.name: required"),
    ("plan without name", _delete("plans.1.name"), "plans[1].name: required"),
    ("plan without rank", _delete("plans.1.rank"), "plans[1].rank: required"),
    ("plan without limits", _delete("plans.1.limits"), "plans[1].limits: required"),
    ("pack without amount", _delete("packs.0.amount"), "packs[0].amount: required"),
    ("empty name", _set("plans.1.name", ""), "plans[1].name: must be a non-empty string"),
    ("no usage types", _set("usage_types", {}), "usage_types: must declare at least one usage type"),
    # duplicate ids
    ("duplicate plan id", _append_plan(id="pro"), "plans[2].id: duplicate plan id 'pro'"),
    ("duplicate pack id", _append_pack(id="tok"), "packs[1].id: duplicate pack id 'tok'"),
    # the free plan
    ("no free plan", _delete("plans.0.free"), "plans: exactly one plan must have free: true"),
    ("two free plans", _set("plans.1.free", True), "plans[1].free: exactly one plan may have free: true"),
    ("free not a boolean", _set("plans.0.free", "yes"), "plans[0].free: must be true or false"),
    (
        "pools not a boolean",
        _set("usage_types.tokens.pools", 1),
        "usage_types.tokens.pools: must be true or false",
    ),
    # limits
    ("plan lacks a usage type", _delete("plans.1.limits.tokens"), "plans[1].limits.tokens: missing"),
    (
        "plan names an undeclared type",
        _set("plans.1.limits.voice", 5),
        "plans[1].limits.voice: undeclared usage type",
    ),
    ("negative limit", _set("plans.1.limits.tokens", -1), "plans[1].limits.tokens: must be >= 0 or null"),
    ("fractional limit", _set("plans.1.limits.tokens", 1.5), "plans[1].limits.tokens: must be an integer"),
    ("float limit", _set("plans.1.limits.tokens", 2.0), "plans[1].limits.tokens: must be an integer"),
    ("boolean limit", _set("plans.1.limits.tokens", True), "plans[1].limits.tokens: must be an integer"),
    ("string limit", _set("plans.1.limits.tokens", "10"), "plans[1].limits.tokens: must be an integer"),
    (
        "limit beyond int64",
        _set("plans.1.limits.tokens", INT64_MAX + 1),
        "plans[1].limits.tokens: must fit in a signed 64-bit",
    ),
    ("negative rank", _set("plans.1.rank", -1), "plans[1].rank: must be >= 0"),
    ("negative trial", _set("plans.1.trial_days", -3), "plans[1].trial_days: must be >= 0 or null"),
    # Stripe prices
    (
        "price in two plans",
        _set("plans.0.stripe_prices", ["price_pro"]),
        "plans[1].stripe_prices[0]: duplicate Stripe price 'price_pro'",
    ),
    (
        "price twice in a plan",
        _set("plans.1.stripe_prices", ["p", "p"]),
        "plans[1].stripe_prices[1]: duplicate Stripe price 'p'",
    ),
    (
        "price in plan and pack",
        _set("packs.0.stripe_prices", ["price_pro"]),
        "packs[0].stripe_prices[0]: duplicate Stripe price 'price_pro'",
    ),
    (
        "price in two packs",
        _append_pack(stripe_prices=["price_tok"]),
        "packs[1].stripe_prices[0]: duplicate Stripe price 'price_tok'",
    ),
    (
        "price not a string",
        _set("plans.1.stripe_prices", [12]),
        "plans[1].stripe_prices[0]: must be a Stripe price id",
    ),
    (
        "prices not a list",
        _set("plans.1.stripe_prices", "price_pro"),
        "plans[1].stripe_prices: must be a list",
    ),
    # packs
    (
        "pack for an undeclared type",
        _set("packs.0.usage_type", "voice"),
        "packs[0].usage_type: undeclared usage type 'voice'",
    ),
    (
        "pack for a plain counter",
        _set("packs.0.usage_type", "chars"),
        "packs[0].usage_type: 'chars' is a plain counter",
    ),
    ("pack amount 0", _set("packs.0.amount", 0), "packs[0].amount: must be >= 1"),
    (
        "pack amount beyond int64",
        _set("packs.0.amount", INT64_MAX + 1),
        "packs[0].amount: must fit in a signed 64-bit",
    ),
    ("expiring pack of 0 days", _set("packs.0.expires_in_days", 0), "packs[0].expires_in_days: must be >= 1"),
    (
        "expiring pack of text",
        _set("packs.0.expires_in_days", "30"),
        "packs[0].expires_in_days: must be an integer",
    ),
    (
        "expiring pack beyond ten years",
        _set("packs.0.expires_in_days", 4000),
        "packs[0].expires_in_days: must be at most 3660 days",
    ),
    # breakdown field syntax
    (
        "bare group_by field",
        _set("usage_types.chars.breakdown.group_by", ["voice"]),
        "usage_types.chars.breakdown.group_by[0]: must be reference_id or details.<key>",
    ),
    (
        "empty details key",
        _set("usage_types.chars.breakdown.label", "details."),
        "usage_types.chars.breakdown.label: must be reference_id or details.<key>",
    ),
    (
        "space in a measure",
        _set("usage_types.chars.breakdown.measures", ["details.ok", "details.a b"]),
        "usage_types.chars.breakdown.measures[1]: must be reference_id",
    ),
    (
        "nested distinct",
        _set("usage_types.chars.breakdown.distinct", ["details.a.b"]),
        "usage_types.chars.breakdown.distinct[0]: must be reference_id",
    ),
    (
        "repeated group_by field",
        _set("usage_types.chars.breakdown.group_by", ["reference_id", "reference_id"]),
        "usage_types.chars.breakdown.group_by: 'reference_id' is listed twice",
    ),
    (
        "group_by not a list",
        _set("usage_types.chars.breakdown.group_by", "reference_id"),
        "usage_types.chars.breakdown.group_by: must be a list",
    ),
    # rollover
    (
        "negative rollover cap",
        _set("usage_types.tokens.rollover_cap", -1),
        "usage_types.tokens.rollover_cap: must be >= 0",
    ),
    (
        "rollover cap on a plain counter",
        _set("usage_types.chars.rollover_cap", 10),
        "usage_types.chars.rollover_cap: a plain counter (pools: false) never rolls over",
    ),
    (
        "fractional rollover cap",
        _set("usage_types.tokens.rollover_cap", 0.5),
        "usage_types.tokens.rollover_cap: must be an integer",
    ),
    # ids
    ("upper-case plan id", _set("plans.1.id", "Pro"), "plans[1].id: must be an id matching"),
    ("plan id with a space", _set("plans.1.id", "pro plan"), "plans[1].id: must be an id matching"),
    ("pack id starting with a dash", _set("packs.0.id", "-tok"), "packs[0].id: must be an id matching"),
    ("numeric plan id", _set("plans.1.id", 7), "plans[1].id: must be an id matching"),
    ("upper-case usage type", _rename_usage_type("chars", "Chars"), "usage_types.Chars: key must be an id"),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [case[1:] for case in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_load_errors_name_the_field(mutate: Mutation, expected: str) -> None:
    data = base()
    mutate(data)
    assert expected in problem(dump(data), "catalog.yaml")


def test_base_is_valid_and_int64_max_fits() -> None:
    data = base()
    data["plans"][1]["limits"]["tokens"] = INT64_MAX
    data["packs"][0]["amount"] = INT64_MAX
    data["usage_types"]["tokens"]["rollover_cap"] = INT64_MAX
    catalog = parse_catalog(dump(data))
    assert catalog.plan("pro").limit("tokens") == INT64_MAX
    assert parse_catalog(dump(base())).plan("pro").limit("chars") is None


def test_plain_counter_may_say_rollover_cap_zero() -> None:
    data = base()
    data["usage_types"]["chars"]["rollover_cap"] = 0
    assert parse_catalog(dump(data)).usage_types["chars"].rollover_cap == 0


def test_a_pack_may_expire_after_some_days() -> None:
    data = base()
    data["packs"][0]["expires_in_days"] = 30
    assert parse_catalog(dump(data)).packs[0].expires_in_days == 30
    assert parse_catalog(dump(base())).packs[0].expires_in_days is None


def test_null_packs_means_none() -> None:
    data = base()
    data["packs"] = None
    assert parse_catalog(dump(data)).packs == ()
    del data["packs"]
    assert parse_catalog(dump(data)).packs == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("usage_types: [a\nplans: []\n", "line 2"),
        ("usage_types:\n  a: {name: A\n", "YAML syntax error"),
        ("- 1\n- 2\n", "top level: must be a mapping"),
        ("", "top level: must be a mapping"),
        ("just text", "top level: must be a mapping"),
    ],
)
def test_yaml_level_errors(text: str, expected: str) -> None:
    assert expected in problem(text)


def test_duplicate_yaml_keys_are_caught() -> None:
    text = textwrap.dedent(
        """\
        usage_types:
          chars: {name: Chars}
          chars: {name: Chars again}
        plans:
          - id: free
            name: Free
            rank: 0
            free: true
            limits: {chars: 0, chars: null}
        plans: []
        """
    )
    message = problem(text)
    assert "usage_types.chars: duplicate key (line 3, first at line 2)" in message
    assert "plans[0].limits.chars: duplicate key" in message
    assert "plans: duplicate key (line 10, first at line 4)" in message


def test_several_problems_reported_together() -> None:
    data = base()
    data["plans"][1]["limits"]["tokens"] = -5
    data["plans"][0]["stripe_prices"] = ["price_tok"]
    data["packs"][0]["amount"] = 0
    data["usage_types"]["chars"]["rollover_cap"] = 3
    data["extra"] = True
    with pytest.raises(CatalogError) as info:
        parse_catalog(dump(data), "/etc/catalog.yaml")
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == "invalid catalog /etc/catalog.yaml:"
    for expected in (
        "extra: unknown key",
        "usage_types.chars.rollover_cap:",
        "plans[1].limits.tokens: must be >= 0 or null (got -5)",
        "packs[0].amount: must be >= 1 (got 0)",
    ):
        assert sum(expected in line for line in lines[1:]) == 1, expected
    assert len(info.value.problems) == len(lines) - 1 == 4  # the price clash involves a pack that failed


def test_cross_checks_reported_together() -> None:
    data = base()
    data["plans"][0]["free"] = False
    data["plans"][1]["stripe_prices"] = ["price_tok"]
    data["packs"][0]["usage_type"] = "chars"
    del data["plans"][1]["limits"]["chars"]
    problems = set(problem(dump(data)).splitlines()[1:])
    assert {line.split(":")[0].strip() for line in problems} == {
        "plans",
        "plans[1].limits.chars",
        "packs[0].stripe_prices[0]",
        "packs[0].usage_type",
    }


def test_catalog_error_is_a_value_error() -> None:
    assert issubclass(CatalogError, ValueError)


def test_load_catalog_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    data = base()
    data["plans"][1]["limits"]["tokens"] = -1
    path.write_text(dump(data))
    with pytest.raises(CatalogError, match=r"broken\.yaml") as info:
        load_catalog(path)
    assert "plans[1].limits.tokens" in str(info.value)

    with pytest.raises(CatalogError, match=r"missing\.yaml"):
        load_catalog(tmp_path / "missing.yaml")


# --- the model -------------------------------------------------------------------------------------


def test_lookups() -> None:
    catalog = load_catalog()
    assert catalog.free_plan.id == "free"
    plus = catalog.plan_for_price("price_plus_yearly")
    assert plus is not None and plus.id == "plus"
    assert catalog.plan_for_price("price_ocr_pack_1m") is None
    assert catalog.plan_for_price("nope") is None
    pack = catalog.pack("voice_1m")
    assert pack is not None and (pack.usage_type, pack.amount) == ("premium_voice", 1_000_000)
    assert catalog.pack("nope") is None
    assert catalog.find_plan(None) is None
    assert catalog.find_plan("gone") is None
    assert catalog.find_plan("max") is catalog.plan("max")
    with pytest.raises(KeyError):
        catalog.plan("gone")
    assert catalog.plan("plus").limit("premium_voice") == 500_000
    with pytest.raises(KeyError):
        catalog.plan("plus").limit("nope")
    kind = catalog.usage_type("ocr_tokens")
    assert kind is not None and kind.pools
    assert catalog.usage_type("nope") is None


def test_models_are_frozen() -> None:
    catalog = load_catalog()
    with pytest.raises(ValidationError):
        catalog.free_plan.rank = 5
    with pytest.raises(ValidationError):
        catalog.packs = ()


def test_catalog_built_in_code_is_checked_by_the_same_validation() -> None:
    data = copy.deepcopy(base())
    catalog = validate_catalog(data)  # usage type ids come from the keys
    assert catalog.usage_types["tokens"].id == "tokens"
    data["plans"][1]["free"] = True
    with pytest.raises(CatalogError, match=r"plans\[1\]\.free"):
        validate_catalog(data)
    with pytest.raises(ValidationError):
        Plan.model_validate({"id": "x", "name": "X", "rank": 0, "limits": {"a": -1}})


# --- get_catalog -----------------------------------------------------------------------------------


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    get_settings.cache_clear()
    get_catalog.cache_clear()
    yield
    get_settings.cache_clear()
    get_catalog.cache_clear()


@pytest.mark.usefixtures("fresh_caches")
def test_get_catalog_honours_metering_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CONTRACT_EXAMPLE)
    monkeypatch.setenv("METERING_CATALOG", str(path))
    catalog = get_catalog()
    assert [plan.id for plan in catalog.plans] == ["free", "basic"]
    assert get_catalog() is catalog  # cached


@pytest.mark.usefixtures("fresh_caches")
def test_get_catalog_defaults_to_shipped_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METERING_CATALOG", raising=False)
    assert get_catalog() == load_catalog()


@pytest.mark.usefixtures("fresh_caches")
def test_get_catalog_bad_file_is_a_start_up_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("usage_types: {}\nplans: []\n")
    monkeypatch.setenv("METERING_CATALOG", str(path))
    with pytest.raises(CatalogError, match=r"bad\.yaml"):
        get_catalog()


# --- property: random valid catalogs round-trip ----------------------------------------------------

ids = st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,11}", fullmatch=True)
limits = st.none() | st.integers(min_value=0, max_value=INT64_MAX)
fields = st.sampled_from(["reference_id"]) | st.from_regex(r"details\.[A-Za-z0-9_\-]{1,8}", fullmatch=True)


@st.composite
def catalogs(draw: st.DrawFn) -> dict[str, Any]:
    type_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    usage_types: dict[str, Any] = {}
    for type_id in type_ids:
        pools = draw(st.booleans())
        body: dict[str, Any] = {"name": draw(st.text(min_size=1, max_size=12).filter(str.strip))}
        if pools:
            body["pools"] = True
            body["rollover_cap"] = draw(st.integers(min_value=0, max_value=INT64_MAX))
        group_by = draw(st.lists(fields, max_size=3, unique=True))
        if group_by:
            body["breakdown"] = {"group_by": group_by, "label": draw(st.none() | fields)}
        usage_types[type_id] = body

    prices = iter(draw(st.lists(ids.map("price_".__add__), min_size=20, max_size=20, unique=True)))
    plan_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    free_index = draw(st.integers(min_value=0, max_value=len(plan_ids) - 1))
    plans = []
    for index, plan_id in enumerate(plan_ids):
        plan: dict[str, Any] = {
            "id": plan_id,
            "name": plan_id.upper(),
            "rank": draw(st.integers(min_value=0, max_value=100)),
            "limits": {type_id: draw(limits) for type_id in draw(st.permutations(type_ids))},
        }
        if index == free_index:
            plan["free"] = True
        else:
            plan["stripe_prices"] = [next(prices) for _ in range(draw(st.integers(0, 2)))]
            plan["trial_days"] = draw(st.none() | st.integers(0, 30))
        plans.append(plan)

    pooled = [type_id for type_id, body in usage_types.items() if body.get("pools")]
    packs = []
    if pooled:
        for pack_id in draw(st.lists(ids, max_size=3, unique=True)):
            packs.append(
                {
                    "id": pack_id,
                    "usage_type": draw(st.sampled_from(pooled)),
                    "amount": draw(st.integers(min_value=1, max_value=INT64_MAX)),
                    "stripe_prices": [next(prices)],
                }
            )
    return {"usage_types": usage_types, "plans": plans, "packs": packs}


@settings(max_examples=150, deadline=None)
@given(catalogs())
def test_random_valid_catalogs_round_trip(data: dict[str, Any]) -> None:
    catalog = parse_catalog(dump(data))
    assert list(catalog.usage_types) == list(data["usage_types"])
    for type_id, body in data["usage_types"].items():
        kind = catalog.usage_types[type_id]
        assert (kind.id, kind.pools, kind.rollover_cap) == (
            type_id,
            body.get("pools", False),
            body.get("rollover_cap", 0),
        )
    assert [plan.id for plan in catalog.plans] == [plan["id"] for plan in data["plans"]]
    for raw, plan in zip(data["plans"], catalog.plans, strict=True):
        assert plan.limits == raw["limits"]
        for type_id in data["usage_types"]:
            assert plan.limit(type_id) == raw["limits"][type_id]
        for price in raw.get("stripe_prices", []):
            assert catalog.plan_for_price(price) is plan
    assert catalog.free_plan.id == next(plan["id"] for plan in data["plans"] if plan.get("free"))
    assert [(p.id, p.usage_type, p.amount) for p in catalog.packs] == [
        (p["id"], p["usage_type"], p["amount"]) for p in data["packs"]
    ]
