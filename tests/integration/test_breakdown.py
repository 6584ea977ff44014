"""GET /v1/users/{user_id}/breakdown and /v1/me/breakdown: grouping, labels, distinct counts,
measures, order, windows and their 400s, and an index range scan on a large usage log."""

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from tests.support import api
from tests.support.state import iso, query, subscribe, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def breakdown(user_id, **params):
    return api.read("breakdown", user_id, **params)


def my_breakdown(sub=None, **params):
    return api.read_me("breakdown", sub, **params)


def voice(event_id, amount, slug, model, name=None, duration=None, user="u1", **extra):
    details = {"voice_slug": slug, "model_slug": model, **extra}
    if name is not None:
        details["voice_name"] = name
    if duration is not None:
        details["duration_ms"] = duration
    status, body = api.record(event_id, user, "premium_voice", amount, details=details)
    assert status == 201, body


def backdate(event_id, moment):
    query("UPDATE usage_events SET recorded_at = :at WHERE event_id = :e RETURNING 1", at=moment, e=event_id)


def test_groups_labels_measures_distinct_and_order():
    subscribe("u1", "plus")
    voice("v1", 500, "heart", "m1", name="Heart", duration=1000)
    voice("v2", 700, "heart", "m1", name="Heart (new)", duration=2500)
    voice("v3", 10, "heart", "m1", duration="n/a")  # no label, a non-numeric measure
    voice("v4", 1500, "bella", "m1", name="Bella", duration=1.5)
    voice("v5", 1210, "heart", "m2")
    voice("v6", 5, 7, None, name=42)  # numbers stay numbers, a JSON null stays null
    for i, (page, ref) in enumerate(
        [(1, "doc-a"), (1, "doc-a"), (2, "doc-a"), (None, "doc-a"), (5, "doc-b")]
    ):
        details = (
            {"document_title": f"Doc {ref}"} if page is None else {"page_idx": page, "document_title": ref}
        )
        assert (
            api.record(f"o{i}", "u1", "ocr_tokens", 100 * (i + 1), reference_id=ref, details=details)[0]
            == 201
        )
    assert api.record("o9", "u1", "ocr_tokens", 1, details={"page_idx": 3})[0] == 201  # no reference_id

    status, body = breakdown("u1")
    assert status == 200
    voice_rows = body["usage_types"]["premium_voice"]
    assert voice_rows["group_by"] == ["details.voice_slug", "details.model_slug"]
    assert voice_rows["rows"] == [
        {
            "key": {"details.voice_slug": "bella", "details.model_slug": "m1"},
            "label": "Bella",
            "total": 1500,
            "events": 1,
            "distinct": {},
            "measures": {"details.duration_ms": 1.5},
        },
        # equal totals: ordered by key
        {
            "key": {"details.voice_slug": "heart", "details.model_slug": "m1"},
            "label": "Heart (new)",
            "total": 1210,
            "events": 3,
            "distinct": {},
            "measures": {"details.duration_ms": 3500},
        },
        {
            "key": {"details.voice_slug": "heart", "details.model_slug": "m2"},
            "label": None,
            "total": 1210,
            "events": 1,
            "distinct": {},
            "measures": {"details.duration_ms": 0},
        },
        {
            "key": {"details.voice_slug": 7, "details.model_slug": None},
            "label": "42",
            "total": 5,
            "events": 1,
            "distinct": {},
            "measures": {"details.duration_ms": 0},
        },
    ]
    ocr = body["usage_types"]["ocr_tokens"]
    assert ocr["group_by"] == ["reference_id"]
    assert ocr["rows"] == [
        # 100 + 200 + 300 + 400; pages 1, 2 (a missing page is not a value); the latest label
        {
            "key": {"reference_id": "doc-a"},
            "label": "Doc doc-a",
            "total": 1000,
            "events": 4,
            "distinct": {"details.page_idx": 2},
            "measures": {},
        },
        {
            "key": {"reference_id": "doc-b"},
            "label": "doc-b",
            "total": 500,
            "events": 1,
            "distinct": {"details.page_idx": 1},
            "measures": {},
        },
        {
            "key": {"reference_id": None},
            "label": None,
            "total": 1,
            "events": 1,
            "distinct": {"details.page_idx": 1},
            "measures": {},
        },
    ]
    assert body["usage_types"]["server_kokoro"] == {
        "group_by": ["details.voice_slug", "details.model_slug"],
        "rows": [],
    }


def test_equal_totals_are_ordered_by_key_for_a_stable_answer():
    subscribe("u1", "plus")
    for i, slug in enumerate(["c", "a", "b"]):
        voice(f"v{i}", 100, slug, "m")
    rows = breakdown("u1", usage_type="premium_voice")[1]["usage_types"]["premium_voice"]["rows"]
    assert [r["key"]["details.voice_slug"] for r in rows] == ["a", "b", "c"]


def test_default_window_is_the_current_period():
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
    subscribe("u1", "plus", start=start, end=start + timedelta(days=30))
    voice("now", 100, "heart", "m1")
    voice("before", 900, "heart", "m1")
    backdate("before", start - timedelta(seconds=1))
    status, body = breakdown("u1")
    assert status == 200
    assert (body["user_id"], body["from"], body["to"]) == ("u1", iso(start), iso(start + timedelta(days=30)))
    (row,) = body["usage_types"]["premium_voice"]["rows"]
    assert (row["total"], row["events"]) == (100, 1)


def test_stranger_default_window_is_the_calendar_month_and_nothing_is_written():
    status, body = breakdown("never-seen")
    assert status == 200
    now = datetime.now(UTC)
    assert body["from"] == iso(datetime(now.year, now.month, 1, tzinfo=UTC))
    assert all(v["rows"] == [] for v in body["usage_types"].values())
    assert set(body["usage_types"]) == {"premium_voice", "ocr_tokens", "server_kokoro"}
    assert query("SELECT count(*) FROM periods")[0][0] == 0


def test_explicit_window_with_offsets_and_z_is_half_open():
    subscribe("u1", "plus")
    for event_id, day in (("d1", 1), ("d2", 2), ("d3", 3)):
        voice(event_id, 10 * day, "heart", "m1")
        backdate(event_id, datetime(2026, 3, day, tzinfo=UTC))
    status, body = breakdown(
        "u1",
        usage_type="premium_voice",
        **{"from": "2026-03-02T02:00:00+02:00", "to": "2026-03-03T00:00:00Z"},
    )
    assert status == 200
    assert (body["from"], body["to"]) == ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z")
    assert list(body["usage_types"]) == ["premium_voice"]
    (row,) = body["usage_types"]["premium_voice"]["rows"]
    assert (row["total"], row["events"]) == (20, 1)  # the 3rd is at `to`: excluded


def test_only_from_given_runs_to_the_end_of_the_current_period():
    now = datetime.now(UTC)
    status, body = breakdown("u1", **{"from": iso(now - timedelta(days=40))})
    assert status == 200
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    assert body["to"] == iso(end)


@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"from": "2026-01-01T00:00:00"}, "validation_error", "from: needs a timezone"),
        ({"to": "2026-01-01"}, "validation_error", "to: needs a timezone"),
        ({"from": "yesterday"}, "validation_error", "from: not an ISO-8601"),
        ({"to": "2026-13-01T00:00:00Z"}, "validation_error", "to: not an ISO-8601"),
        (
            {"from": "2026-02-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
            "validation_error",
            "to: must be later",
        ),
        (
            {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            "validation_error",
            "to: must be later",
        ),
        (
            {"from": "2025-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"},
            "validation_error",
            "to: the window",
        ),
        ({"from": "2020-01-01T00:00:00Z"}, "validation_error", "from: the window"),
        ({"from": "x" * 65}, "validation_error", "from"),
        ({"usage_type": "nope"}, "unknown_usage_type", "usage_type: unknown usage type 'nope'"),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(params, code, field):
    status, body = breakdown("u1", **params)
    assert status == 400, body
    assert body["error"]["code"] == code
    assert field in body["error"]["message"]


def test_window_of_exactly_366_days_is_allowed():
    status, _ = breakdown("u1", **{"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"})
    assert status == 200


def test_me_breakdown_acts_for_the_jwt_subject_and_needs_one():
    subscribe("u1", "plus")
    voice("v1", 100, "heart", "m1", name="Heart")
    status, body = my_breakdown("u1", usage_type="premium_voice")
    assert status == 200
    assert body == breakdown("u1", usage_type="premium_voice")[1]
    status, body = my_breakdown(None)
    assert (status, body["error"]["code"]) == (401, "unauthorized")


# --- a large usage log ------------------------------------------------------------------------------

SEED_SQL = """
WITH p AS (
    INSERT INTO periods (user_id, period_start, period_end, plan_id, kind)
    VALUES (:u, '2000-01-01', '2100-01-01', 'plus', 'calendar') RETURNING period_id
), ins AS (
INSERT INTO usage_events (event_id, user_id, usage_type, amount, reference_id, details, period_id,
    from_subscription, from_rollover, from_purchased, overflow_to_debt, recorded_at)
SELECT :u || '-' || g, :u, (ARRAY['premium_voice', 'ocr_tokens', 'server_kokoro'])[1 + mod(g, 3)], 1 + mod(g, 50),
       'doc-' || (mod(g, 40)),
       jsonb_build_object('voice_slug', 'v' || (mod(g, 12)), 'model_slug', 'm' || (mod(g, 3)),
                          'voice_name', 'Voice ' || (mod(g, 12)), 'duration_ms', mod(g, 1000), 'page_idx', mod(g, 17),
                          'document_title', 'Title ' || (mod(g, 40))),
       p.period_id, 1 + mod(g, 50), 0, 0, 0,
       CAST(:now AS timestamptz) - make_interval(secs => (g * CAST(:spread_s AS double precision)) / CAST(:n AS integer))
FROM p, generate_series(1, :n) AS g
RETURNING 1
)
SELECT count(*) FROM ins
"""


def seed(user, n, spread_days, now):
    assert query(SEED_SQL, u=user, n=n, spread_s=spread_days * 86400, now=now)[0][0] == n


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_large_log_is_read_through_the_index():
    from metering.catalog import get_catalog
    from metering.db.reads import breakdown_params, breakdown_statement

    now = datetime.now(UTC)
    # the user under test: 20k events over a year; other users: 60k events, so the table is shared
    seed("big", 20_000, 365, now)
    for i in range(6):
        seed(f"other-{i}", 10_000, 365, now)
    engine = create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    kinds = tuple(get_catalog().usage_types.values())
    with engine.connect() as conn:
        conn.execute(text("ANALYZE usage_events"))
        for days in (30, 366):  # a month (the default) and the longest window allowed
            bind = breakdown_params(kinds, "big", now - timedelta(days=days), now + timedelta(seconds=1))
            sql = breakdown_statement(kinds).text
            plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), bind).scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            scans = [n for n in plan_nodes(plan[0]["Plan"]) if n.get("Relation Name") == "usage_events"]
            assert len(scans) == 3, scans  # one per usage type
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Bitmap Heap Scan", "Index Only Scan"), (
                    days,
                    scan,
                )
                index = scan.get("Index Name") or next(
                    n["Index Name"] for n in plan_nodes(scan) if n["Node Type"] == "Bitmap Index Scan"
                )
                assert index == "usage_events_user_time"
            assert not any(n["Node Type"] == "Seq Scan" for n in plan_nodes(plan[0]["Plan"]))
    engine.dispose()

    window = {"from": iso(now - timedelta(days=365, minutes=1)), "to": iso(now + timedelta(seconds=1))}
    status, body = breakdown("big", **window)
    assert status == 200
    assert sum(r["events"] for t in body["usage_types"].values() for r in t["rows"]) == 20_000
