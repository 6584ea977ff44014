"""Ledger history (api.md section 7 "Ledger history"): GET /v1/users/{user_id}/ledger and
/v1/me/ledger, newest first, paged by an opaque cursor that neither repeats nor skips a row while
new rows are written, `balance_after` right for every entry, read by index."""

from __future__ import annotations

import json
import multiprocessing
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from metering.db.engine import get_engine
from tests.support import api
from tests.support.state import assert_reconciled, iso, query, subscribe, use_test_catalog


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def history(user="u1", **q):
    status, body = api.read("ledger", user, **q)
    assert status == 200, body
    return body


def every_page(user="u1", **q):
    entries, cursor, pages = [], None, 0
    while True:
        body = history(user, **q, **({"cursor": cursor} if cursor else {}))
        entries += body["entries"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return entries, pages


def some_activity():
    subscribe("u1", "basic")
    assert api.record("e1", "u1", "premium_voice", 4900)[0] == 201
    assert api.adjust("u1", "a1", "premium_voice", "purchased", 100)[0] == 201
    assert api.grant("u1", "g1", "premium_voice", 50, iso(datetime.now(UTC) + timedelta(days=3)))[0] == 201
    assert api.record("e2", "u1", "premium_voice", 300)[0] == 201  # 100 + 50 grant + 100 purchased + 50 debt
    assert api.record("k1", "u1", "server_kokoro", 7)[0] == 201


def test_entries_newest_first_with_the_balance_after_each():
    some_activity()
    body = history()
    assert body["next_cursor"] is None
    rows = [
        (e["usage_type"], e["pool"], e["delta"], e["balance_after"], e["reason"], e["ref"])
        for e in body["entries"]
    ]
    assert rows == [
        ("server_kokoro", "used", 7, 7, "usage", "k1"),
        ("premium_voice", "purchased", -100, 0, "usage", "e2"),
        ("premium_voice", "grant", -50, 0, "usage", "e2"),
        ("premium_voice", "rollover", -50, -50, "usage", "e2"),
        ("premium_voice", "used", 100, 5000, "usage", "e2"),
        ("premium_voice", "grant", 50, 50, "grant", "g1"),
        ("premium_voice", "purchased", 100, 100, "adjustment", "a1"),
        ("premium_voice", "used", 4900, 4900, "usage", "e1"),
    ]
    first = body["entries"][0]
    assert set(first) == {"id", "at", "usage_type", "pool", "delta", "balance_after", "reason", "ref"}
    assert datetime.fromisoformat(first["at"]) <= datetime.now(UTC)
    # the summary's debt is what the ledger says the rollover pool is
    assert api.read("summary", "u1")[1]["usage_types"]["premium_voice"]["rollover"] == -50
    assert history(usage_type="server_kokoro")["entries"] == body["entries"][:1]
    assert_reconciled()


def test_pages_cover_every_entry_once():
    some_activity()
    everything = history(limit="500")["entries"]
    for size in (1, 2, 3, 7):
        entries, pages = every_page(limit=str(size))
        assert entries == everything, size
        assert -(-len(everything) // size) <= pages <= len(everything) // size + 1
    only_voice, _ = every_page(limit="2", usage_type="premium_voice")
    assert only_voice == [e for e in everything if e["usage_type"] == "premium_voice"]


@pytest.mark.parametrize(
    ("query_args", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "eyJ2IjoxLCJ0IjpudWxsLCJwIjp7InByZW1pdW1fdm9pY2UiOiJ4In19"}, "cursor"),  # p: a string
        ({"usage_type": "nope"}, "usage_type"),
    ],
)
def test_bad_queries_are_400_naming_the_parameter(query_args, named):
    status, body = api.read("ledger", "u1", **query_args)
    assert status == 400, body
    assert named in body["error"]["message"]


def test_a_cursor_belongs_to_its_usage_type_filter():
    some_activity()
    cursor = history(limit="1")["next_cursor"]
    status, body = api.read("ledger", "u1", limit="1", cursor=cursor, usage_type="premium_voice")
    assert status == 400 and "cursor" in body["error"]["message"]


def test_me_ledger_is_the_callers_own():
    some_activity()
    status, body = api.read_me("ledger", "u1")
    assert status == 200 and body == history()
    assert api.read_me("ledger", "someone-else")[1] == {"entries": [], "next_cursor": None}
    assert api.read_me("ledger", None)[0] == 401


def test_balance_after_is_the_running_sum_of_each_pool():
    some_activity()
    assert api.record("e3", "u1", "premium_voice", 20, occurred_at=iso(datetime.now(UTC)))[0] == 201
    rows = query(
        "SELECT usage_type, account, coalesce(period_id::text, grant_id, ''), delta, balance_after"
        " FROM journal WHERE user_id = 'u1' ORDER BY usage_type, seq"
    )
    running: dict[tuple[str, str, str], int] = defaultdict(int)
    for usage_type, account, stream, delta, after in rows:
        running[(usage_type, account, stream)] += delta
        assert after == running[(usage_type, account, stream)]
    assert_reconciled()


def _warm(_: int) -> bool:
    from tests.support import api as calls

    return calls is not None


def _write(args: tuple[int, int]) -> int:
    """A warm container recording `count` events for u1 while the pages are read."""
    from tests.support import api as calls

    worker, count = args
    for i in range(count):
        usage_type = "server_kokoro" if i % 2 else "ocr_tokens"
        status, _ = calls.record(f"w{worker}-{i}", "u1", usage_type, 1)
        assert status == 201
    return count


def _journal_size() -> int:
    return query("SELECT count(*) FROM journal WHERE user_id = 'u1'")[0][0]


def test_pages_stay_exact_while_new_entries_are_written():
    """Three processes write while a reader pages through; between two pages at least one new
    entry commits. Every entry that existed at the first page appears exactly once; none written
    since appears in a later page."""
    for i in range(40):
        assert api.record(f"old-{i}", "u1", "server_kokoro" if i % 2 else "ocr_tokens", 1)[0] == 201
    existing = {str(r[0]) for r in query("SELECT entry_id FROM journal WHERE user_id = 'u1'")}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3, initializer=use_test_catalog) as pool:
        assert all(pool.map(_warm, range(3)))
        body = history(limit="2")
        seen = [e["id"] for e in body["entries"]]
        writing = pool.map_async(_write, [(w, 200) for w in range(3)])
        size = _journal_size()
        while body["next_cursor"] is not None:
            while _journal_size() == size and not writing.ready():
                pass  # wait for the next commit: each page is read after some write
            size = _journal_size()
            body = history(limit="2", cursor=body["next_cursor"])
            seen += [e["id"] for e in body["entries"]]
        assert sum(writing.get(timeout=300)) == 600
    assert len(seen) == len(set(seen)), "an entry appeared twice"
    assert set(seen) == existing, "an entry was skipped, or a new one appeared in a later page"
    assert _journal_size() == len(existing) + 600
    assert_reconciled()


def test_the_history_is_read_by_its_index():
    """On a journal of many users, one user's page is an index range scan of journal_history."""
    subscribe("u1", "basic")
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO balances (user_id, usage_type, seq) SELECT 'x' || g, 'server_kokoro', 20"
                " FROM generate_series(1, 2000) g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO journal (user_id, usage_type, account, period_id, delta, reason, ref, seq,"
                " balance_after) SELECT 'x' || (g / 20), 'server_kokoro', 'rollover', NULL, 1, 'adjustment',"
                " 'r', g % 20 + 1, g % 20 + 1 FROM generate_series(20, 40019) g"
            )
        )
        conn.execute(text("ANALYZE journal; ANALYZE balances"))
        from metering.db.reads import _LEDGER

        params = {
            "user_id": "x7",
            "usage_type": None,
            "types": [],
            "before": [],
            "paged": False,
            "limit": 100,
        }
        plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + _LEDGER.text), params).scalar()
    scans = {n["Node Type"] for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == "journal"}
    assert scans == {"Index Scan"}, json.dumps(plan)
    assert "journal_history" in json.dumps(plan)


def _nodes(node):
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)
