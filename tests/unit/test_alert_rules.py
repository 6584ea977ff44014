"""Usage alerts: the catalog's `alerts` (validated like the rest, errors naming the field) and the
crossing rules of `metering.domain.alerts` (api.md section 7)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from metering.catalog import Alert, CatalogError, load_catalog, validate_catalog
from metering.domain.alerts import Level, crossed, level

BASE: dict[str, Any] = {
    "usage_types": {
        "chars": {"name": "Characters", "pools": True},
        "calls": {"name": "Calls"},
    },
    "plans": [{"id": "free", "name": "Free", "rank": 0, "free": True, "limits": {"chars": 100, "calls": 10}}],
}


def _catalog(alerts: Any) -> Any:
    data = copy.deepcopy(BASE)
    data["alerts"] = alerts
    return validate_catalog(data, "test.yaml")


def _problems(alerts: Any) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        _catalog(alerts)
    return list(caught.value.problems)


def test_alerts_are_optional_and_indexed_by_usage_type():
    assert validate_catalog(copy.deepcopy(BASE)).alerts == ()
    catalog = _catalog(
        [
            {"id": "chars_80", "usage_type": "chars", "at_percent": 80},
            {"id": "chars_out", "usage_type": "chars", "when": "available_depleted"},
            {"id": "calls_100", "usage_type": "calls", "at_percent": 100},
        ]
    )
    assert [a.id for a in catalog.alerts_for("chars")] == ["chars_80", "chars_out"]
    assert [a.id for a in catalog.alerts_for("calls")] == ["calls_100"]
    assert catalog.alerts_for("unknown") == ()
    assert catalog.alerts_for("chars")[0].threshold == {"at_percent": 80}
    assert catalog.alerts_for("chars")[1].threshold == {"when": "available_depleted"}


def test_the_shipped_catalog_declares_alerts():
    catalog = load_catalog()
    assert {a.id for a in catalog.alerts} >= {"ocr_80", "ocr_100", "ocr_depleted"}


@pytest.mark.parametrize(
    ("alerts", "problem"),
    [
        ("nope", "alerts: must be a list (got 'nope')"),
        (["x"], "alerts[0]: must be a mapping (got 'x')"),
        (
            [{"id": "a", "usage_type": "chars", "at_percent": 0}],
            "alerts[0].at_percent: must be an integer from 1 to 100 (got 0)",
        ),
        (
            [{"id": "a", "usage_type": "chars", "at_percent": 101}],
            "alerts[0].at_percent: must be an integer from 1 to 100 (got 101)",
        ),
        (
            [{"id": "a", "usage_type": "chars", "at_percent": 80.5}],
            "alerts[0].at_percent: must be an integer from 1 to 100 (got 80.5)",
        ),
        (
            [{"id": "a", "usage_type": "chars", "at_percent": True}],
            "alerts[0].at_percent: must be an integer from 1 to 100 (got true)",
        ),
        (
            [{"id": "a", "usage_type": "chars", "when": "empty"}],
            "alerts[0].when: must be one of available_depleted (got 'empty')",
        ),
        (
            [{"id": "a", "usage_type": "chars"}],
            "alerts[0]: give exactly one of at_percent (1..100) or when (available_depleted)",
        ),
        (
            [{"id": "a", "usage_type": "chars", "at_percent": 50, "when": "available_depleted"}],
            "alerts[0]: give exactly one of at_percent (1..100) or when (available_depleted)",
        ),
        ([{"id": "A b", "usage_type": "chars", "at_percent": 5}], "alerts[0].id: must be an id matching"),
        ([{"usage_type": "chars", "at_percent": 5}], "alerts[0].id: required"),
        ([{"id": "a", "usage_type": "chars", "at_percent": 5, "to": "x"}], "alerts[0].to: unknown key"),
        (
            [{"id": "a", "usage_type": "words", "at_percent": 5}],
            "alerts[0].usage_type: undeclared usage type 'words'",
        ),
        (
            [{"id": "a", "usage_type": "calls", "when": "available_depleted"}],
            "alerts[0].when: 'calls' is a plain counter (pools: false)",
        ),
        (
            [
                {"id": "a", "usage_type": "chars", "at_percent": 5},
                {"id": "a", "usage_type": "chars", "at_percent": 50},
            ],
            "alerts[1].id: duplicate alert id 'a' (already at alerts[0].id)",
        ),
    ],
)
def test_bad_alerts_are_named_by_field(alerts, problem):
    problems = _problems(alerts)
    assert any(p.startswith(problem) for p in problems), problems


def test_every_bad_alert_is_reported_at_once():
    problems = _problems(
        [
            {"id": "ok", "usage_type": "chars", "at_percent": 80},
            {"id": "b", "usage_type": "chars", "at_percent": 0},
            {"id": "c", "usage_type": "words", "when": "available_depleted"},
        ]
    )
    assert [p.split(":")[0] for p in problems] == ["alerts[1].at_percent", "alerts[2].usage_type"]


# --- crossing -------------------------------------------------------------------------------------

P80 = Alert(id="p80", usage_type="chars", at_percent=80)
P100 = Alert(id="p100", usage_type="chars", at_percent=100)
OUT = Alert(id="out", usage_type="chars", when="available_depleted")
ALL = (P80, P100, OUT)


def _ids(before: Level, after: Level) -> list[str]:
    return [a.id for a in crossed(ALL, before, after)]


def pooled(used: int, *, limit: int | None = 100, rollover: int = 0, purchased: int = 0) -> Level:
    return level(limit=limit, used=used, rollover=rollover, purchased=purchased, pools=True)


def test_a_share_of_the_allowance_is_crossed_once_between_two_levels():
    assert _ids(pooled(79), pooled(80)) == ["p80"]
    assert _ids(pooled(0), pooled(79)) == []
    assert _ids(pooled(80), pooled(90)) == []  # already over 80 before
    assert _ids(pooled(50, purchased=10), pooled(100, purchased=10)) == ["p80", "p100"]
    assert _ids(pooled(0), pooled(100)) == ["p80", "p100", "out"]


def test_percentages_are_exact_integers():
    # 80 % of 7 is 5.6: 5 is under, 6 is over
    assert _ids(pooled(5, limit=7, purchased=9), pooled(6, limit=7, purchased=9)) == ["p80"]
    assert _ids(pooled(4, limit=7, purchased=9), pooled(5, limit=7, purchased=9)) == []


def test_unlimited_and_zero_allowances_have_no_shares():
    assert _ids(pooled(0, limit=None), pooled(10**9, limit=None)) == []
    assert _ids(pooled(0, limit=0, purchased=10), pooled(0, limit=0, purchased=5)) == []


def test_available_depleted_when_rollover_and_purchased_are_spent():
    assert _ids(pooled(100, purchased=5), pooled(100, purchased=0)) == ["out"]
    assert _ids(pooled(100, rollover=5), pooled(100, rollover=-3)) == ["out"]  # into debt
    assert _ids(pooled(100, purchased=0), pooled(100, rollover=-3)) == []  # it was 0 already
    assert _ids(pooled(0, limit=0, purchased=10), pooled(0, limit=0, purchased=0)) == ["out"]


def test_a_lower_allowance_crosses_shares_without_usage():
    # a plan corrected from 1000 to 100 with 90 used: 80 % is crossed by the change of plan
    assert _ids(pooled(90, limit=1000, purchased=50), pooled(90, limit=100, purchased=50)) == ["p80"]
    # from unlimited to a limit already exceeded
    assert _ids(pooled(100, limit=None), pooled(100, limit=100)) == ["p80", "p100", "out"]


def test_plain_counter_shares_go_past_the_limit():
    before = level(limit=10, used=7, rollover=0, purchased=0, pools=False)
    after = level(limit=10, used=25, rollover=0, purchased=0, pools=False)
    assert [a.id for a in crossed((P80, P100), before, after)] == ["p80", "p100"]
