"""GET /v1/users/{user_id}/stats and /v1/me/stats: lifetime totals per usage type and group, from
the maintained aggregates (never a scan of the usage log)."""

import pytest

from bench import wire
from tests.support import api
from tests.support.state import query, subscribe, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def stats(user_id):
    return api.read("stats", user_id)


def my_stats(sub=None):
    return api.read_me("stats", sub)


def record(event_id, usage_type, amount, user="u1", **fields):
    status, body = api.record(event_id, user, usage_type, amount, **fields)
    assert status in (200, 201), body
    return status


def seed():
    subscribe("u1", "plus")
    record(
        "v1",
        "premium_voice",
        500,
        details={"voice_slug": "heart", "model_slug": "m1", "voice_name": "Heart", "duration_ms": 1000},
    )
    record(
        "v2", "premium_voice", 700, details={"voice_slug": "heart", "model_slug": "m1", "duration_ms": 2000}
    )
    record(
        "v3",
        "premium_voice",
        1500,
        details={"voice_slug": "bella", "model_slug": "m1", "voice_name": "Bella", "duration_ms": 0.5},
    )
    record(
        "v4",
        "premium_voice",
        10,
        details={"voice_slug": "heart", "model_slug": "m1", "voice_name": "Heart 2", "duration_ms": "n/a"},
    )
    record("o1", "ocr_tokens", 300, reference_id="doc-a", details={"document_title": "A", "page_idx": 1})
    record("o2", "ocr_tokens", 200, reference_id="doc-a", details={"page_idx": 2})


EXPECTED = {
    "user_id": "u1",
    "usage_types": {
        "premium_voice": {
            "total": 2710,
            "events": 4,
            "measures": {"details.duration_ms": 3000.5},
            "rows": [
                {
                    "key": {"details.voice_slug": "bella", "details.model_slug": "m1"},
                    "label": "Bella",
                    "total": 1500,
                    "events": 1,
                    "measures": {"details.duration_ms": 0.5},
                },
                {
                    "key": {"details.voice_slug": "heart", "details.model_slug": "m1"},
                    "label": "Heart 2",
                    "total": 1210,
                    "events": 3,
                    "measures": {"details.duration_ms": 3000},
                },
            ],
        },
        "ocr_tokens": {
            "total": 500,
            "events": 2,
            "measures": {},
            "rows": [
                {"key": {"reference_id": "doc-a"}, "label": "A", "total": 500, "events": 2, "measures": {}}
            ],
        },
        "server_kokoro": {"total": 0, "events": 0, "measures": {"details.duration_ms": 0}, "rows": []},
    },
}


def test_lifetime_totals_per_type_and_group():
    seed()
    status, body = stats("u1")
    assert status == 200
    assert body == EXPECTED


def test_duplicates_are_not_counted_twice():
    seed()
    assert record("v1", "premium_voice", 500, details={"voice_slug": "heart", "model_slug": "m1"}) == 200
    assert stats("u1")[1] == EXPECTED


def test_served_from_the_aggregates_not_the_usage_log():
    from metering.db.engine import get_engine

    seed()
    query("DELETE FROM usage_events RETURNING 1")  # the log is gone; the aggregates are not
    with wire.measure(get_engine()) as sent:
        status, body = stats("u1")
    assert (status, body) == (200, EXPECTED)
    assert len(sent.sql) == 1 and "usage_events" not in sent.sql[0] and "lifetime_stats" in sent.sql[0]


def test_stranger_gets_every_usage_type_empty_and_nothing_is_written():
    status, body = stats("never-seen")
    assert status == 200
    assert body == {
        "user_id": "never-seen",
        "usage_types": {
            "premium_voice": {"total": 0, "events": 0, "measures": {"details.duration_ms": 0}, "rows": []},
            "ocr_tokens": {"total": 0, "events": 0, "measures": {}, "rows": []},
            "server_kokoro": {"total": 0, "events": 0, "measures": {"details.duration_ms": 0}, "rows": []},
        },
    }
    assert query("SELECT (SELECT count(*) FROM periods) + (SELECT count(*) FROM lifetime_stats)")[0][0] == 0


def test_other_users_are_not_mixed_in():
    seed()
    record("x1", "premium_voice", 99, user="u2", details={"voice_slug": "heart", "model_slug": "m1"})
    assert stats("u1")[1] == EXPECTED
    assert stats("u2")[1]["usage_types"]["premium_voice"]["total"] == 99


def test_me_stats_acts_for_the_jwt_subject_and_needs_one():
    seed()
    assert my_stats("u1") == (200, EXPECTED)
    status, body = my_stats(None)
    assert (status, body["error"]["code"]) == (401, "unauthorized")


def test_one_batch_keeps_groups_apart_that_are_equal_only_as_python_values():
    """1, 1.0 and true are one dict key in Python but three groups (three JSON values); measures
    are summed exactly (0.1 + 0.2 = 0.3, as PostgreSQL's numeric sums), all within one set."""
    subscribe("u1", "plus")
    events = [
        {
            "event_id": f"g{i}",
            "user_id": "u1",
            "usage_type": "premium_voice",
            "amount": 10,
            "details": {"voice_slug": slug, "model_slug": "m1", "duration_ms": ms},
        }
        for i, (slug, ms) in enumerate([(1, 0.1), (1.0, 0.2), (True, 1), (1, 0.2), ("1", 5)])
    ]
    status, body = api.batch(events)
    assert status == 200 and [r["status"] for r in body["results"]] == ["recorded"] * 5
    rows = stats("u1")[1]["usage_types"]["premium_voice"]["rows"]
    by_key = {
        repr(r["key"]["details.voice_slug"]) + type(r["key"]["details.voice_slug"]).__name__: r for r in rows
    }
    assert {k: (r["total"], r["events"], r["measures"]) for k, r in by_key.items()} == {
        "1int": (20, 2, {"details.duration_ms": 0.3}),
        "1.0float": (10, 1, {"details.duration_ms": 0.2}),
        "Truebool": (10, 1, {"details.duration_ms": 1}),
        "'1'str": (10, 1, {"details.duration_ms": 5}),
    }


def test_an_empty_label_is_no_label_in_breakdown_and_stats_alike():
    """issue 23.6: labels "Named" then "": both reads show "Named" (one rule: "" is no label)."""
    details = {"voice_slug": "v", "model_slug": "m"}
    record("e1", "premium_voice", 10, details={**details, "voice_name": "Named"})
    record("e2", "premium_voice", 10, details={**details, "voice_name": ""})
    (row,) = stats("u1")[1]["usage_types"]["premium_voice"]["rows"]
    assert row["label"] == "Named"
    (row,) = api.read("breakdown", "u1")[1]["usage_types"]["premium_voice"]["rows"]
    assert row["label"] == "Named"
