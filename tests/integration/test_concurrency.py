"""Several warm containers at once: reservations never over-grant, records serialize per user and
never lose or double-apply an update, redelivery storms apply each event once, and different
users never wait for each other."""

import os
import random
import time

import pytest
from sqlalchemy import create_engine, text

from tests.support.containers import check_and_reserve, record_events, run_containers
from tests.support.state import assert_reconciled, query, subscribe, use_test_catalog

pytestmark = pytest.mark.xdist_group("concurrency")


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def test_concurrent_check_and_reserve_never_grants_more_than_available():
    subscribe("u1", "basic")  # premium_voice: 5,000 available
    containers = 6
    granted = run_containers(
        check_and_reserve,
        [("u1", "premium_voice", 700, [f"c{c}-r{i}" for i in range(4)]) for c in range(containers)],
    )
    total = sum(700 for per_container in granted for ok in per_container if ok)
    # 24 requests of 700 against 5,000: exactly 7 fit
    assert total == 4900


def test_concurrent_records_for_one_user_end_where_the_sequential_sum_says():
    subscribe("hot", "basic")  # 5,000 allowance
    from tests.support import api

    api.adjust("hot", "r", "premium_voice", "rollover", 1000)
    api.adjust("hot", "p", "premium_voice", "purchased", 2000)
    rng = random.Random(7)
    events = [
        {"event_id": f"e{i}", "user_id": "hot", "usage_type": "premium_voice", "amount": rng.randint(1, 200)}
        for i in range(240)
    ]
    total = sum(e["amount"] for e in events)
    assert total > 8000  # crosses allowance, rollover and purchased into debt
    results = run_containers(record_events, [(events[c::4],) for c in range(4)])

    statuses = [status for per in results for status, _ in per]
    assert statuses == [201] * len(events)
    breakdowns = [body["breakdown"] for per in results for _, body in per]
    assert sum(b["from_subscription"] for b in breakdowns) == 5000
    assert sum(b["from_rollover"] for b in breakdowns) == 1000
    assert sum(b["from_purchased"] for b in breakdowns) == 2000
    assert sum(b["overflow_to_debt"] for b in breakdowns) == total - 8000
    (row,) = query(
        "SELECT rollover, purchased FROM balances WHERE user_id = 'hot' AND usage_type = 'premium_voice'"
    )
    assert (row.rollover, row.purchased) == (-(total - 8000), 0)
    assert query("SELECT used FROM period_usage")[0][0] == 5000
    assert_reconciled()


def test_a_storm_of_redelivered_event_ids_applies_each_once():
    events = [
        {"event_id": f"job-{i}", "user_id": f"u{i % 3}", "usage_type": "server_kokoro", "amount": i + 1}
        for i in range(60)
    ]
    deliveries = []
    for c in range(4):
        mine = events[:]  # every container delivers every event, in its own order
        random.Random(c).shuffle(mine)
        deliveries.append((mine,))
    results = run_containers(record_events, deliveries)

    created = [body["event_id"] for per in results for status, body in per if status == 201]
    duplicates = [body for per in results for status, body in per if status == 200]
    assert sorted(created) == sorted(e["event_id"] for e in events)
    assert len(duplicates) == 3 * len(events) and all(d["duplicate"] for d in duplicates)
    assert query("SELECT count(*), sum(amount) FROM usage_events")[0] == (60, sum(range(1, 61)))
    assert query("SELECT sum(used) FROM period_usage")[0][0] == sum(range(1, 61))
    assert_reconciled()


def test_a_user_locked_by_a_slow_transaction_does_not_block_other_users():
    from tests.support import api

    api.record("warm-a", "a", "premium_voice", 1)
    api.record("warm-b", "b", "premium_voice", 1)
    engine = create_engine(os.environ["DATABASE_URL"])
    with engine.connect() as holder:
        holder.execute(text("SELECT * FROM balances WHERE user_id = 'a' FOR UPDATE"))  # stays open
        # user b records at once while a's row is locked
        assert api.record("b-1", "b", "premium_voice", 5)[0] == 201
        # a record for user a in another container waits on the lock ...
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=_record_one, args=(dict(os.environ), results))
        proc.start()
        deadline = time.monotonic() + 60
        while not _waiting_on_a_lock() and time.monotonic() < deadline:
            assert proc.is_alive(), f"finished without waiting: {results.get(timeout=5)}"
        assert _waiting_on_a_lock(), "the record for user a should be waiting on a's row lock"
        holder.rollback()
    # ... and completes once the lock is gone
    assert results.get(timeout=60) == 201
    proc.join(timeout=30)
    engine.dispose()
    assert_reconciled()


def _waiting_on_a_lock() -> bool:
    # its own autocommit connection: statistics views are frozen for the length of a transaction
    engine = create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar()
    engine.dispose()
    return bool(waiting)


def _record_one(env, results):
    os.environ.update(env)
    from tests.support import api

    results.put(api.record("a-1", "a", "premium_voice", 5)[0])


def test_a_batch_records_the_free_users_while_another_transaction_holds_one():
    """A batch of several users takes the pairs nobody holds first (one transaction, committed at
    once) and waits only for the held one, in a second transaction: concurrent batches sharing a
    user do not queue behind each other's whole transaction."""
    from tests.support import api

    for user in ("a", "b", "c"):
        api.record(f"warm-{user}", user, "premium_voice", 1)
    engine = create_engine(os.environ["DATABASE_URL"])
    with engine.connect() as holder:
        holder.execute(text("SELECT * FROM balances WHERE user_id = 'b' FOR UPDATE"))  # stays open
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=_record_batch, args=(dict(os.environ), results))
        proc.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            committed = {r[0] for r in query("SELECT event_id FROM usage_events WHERE event_id LIKE 'x-%'")}
            if committed == {"x-a1", "x-a2", "x-c1"} and _waiting_on_a_lock():
                break
            assert proc.is_alive(), f"finished while b was locked: {results.get(timeout=5)}"
        assert committed == {"x-a1", "x-a2", "x-c1"}, (
            f"the free users' events were not committed: {committed}"
        )
        assert _waiting_on_a_lock(), "the event of user b should be waiting on b's row lock"
        holder.rollback()
    assert results.get(timeout=60) == [
        ("x-a1", "recorded"),
        ("x-b1", "recorded"),
        ("x-c1", "recorded"),
        ("x-a2", "recorded"),
    ]
    proc.join(timeout=30)
    engine.dispose()
    assert_reconciled()


@pytest.mark.parametrize(
    ("released_before_pass", "expected_passes"),
    [
        # holders commit meanwhile: each further free pass takes what they released
        ({2: ("c",), 3: ("b", "d")}, [(True, {"a"}), (True, {"c"}), (True, {"b", "d"})]),
        # a free pass that takes nothing is followed by one that waits (released just before it,
        # since this test's holders run in the same thread)
        ({}, [(True, {"a"}), (True, set()), (False, {"b", "c", "d"})]),
        # at most FREE_PASSES free passes, then one that waits
        ({2: ("b",), 3: ("c",)}, [(True, {"a"}), (True, {"b"}), (True, {"c"}), (False, {"d"})]),
    ],
    ids=["each-pass-takes-what-was-released", "no-progress-waits", "free-passes-are-bounded"],
)
def test_a_batch_takes_pairs_freed_while_it_ran_before_waiting(
    monkeypatch, released_before_pass, expected_passes
):
    """After its first transaction, a set whose other pairs are held tries again for only the free
    ones while that makes progress (at most FREE_PASSES times), and only then waits: concurrent SQS
    batches over overlapping users keep the machine busy instead of queueing behind each other."""
    from metering.services import record
    from tests.support import api

    assert record.FREE_PASSES == 3
    users = ("a", "b", "c", "d")
    for user in users:
        api.record(f"warm-{user}", user, "premium_voice", 1)
    engine = create_engine(os.environ["DATABASE_URL"])
    holders = {}
    for user in users[1:]:
        holders[user] = engine.connect()
        holders[user].execute(text("SELECT * FROM balances WHERE user_id = :u FOR UPDATE"), {"u": user})

    passes = []
    lock_pairs = record.lock_pairs

    def observed(conn, pairs, now, ids, *, moments=(), skip_locked=False):
        released = released_before_pass.get(len(passes) + 1, ()) if skip_locked else list(holders)
        for user in released:
            holders.pop(user).rollback()
        states, rows = lock_pairs(conn, pairs, now, ids, moments=moments, skip_locked=skip_locked)
        passes.append((skip_locked, {u for u, _ in states}))
        return states, rows

    monkeypatch.setattr(record, "lock_pairs", observed)
    try:
        status, body = api.batch(
            [{"event_id": f"y-{u}", "user_id": u, "usage_type": "premium_voice", "amount": 5} for u in users]
        )
    finally:
        for holder in holders.values():
            holder.rollback()
        engine.dispose()
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["recorded"] * 4
    assert passes == expected_passes
    assert_reconciled()


def _record_batch(env, results, events=None):
    os.environ.update(env)
    from tests.support import api

    events = events or [
        {"event_id": f"x-{name}", "user_id": name[0], "usage_type": "premium_voice", "amount": 5}
        for name in ("a1", "b1", "c1", "a2")
    ]
    status, body = api.batch(events)
    results.put([(r["event_id"], r["status"]) for r in body["results"]] if status == 200 else status)


def test_an_event_id_under_two_users_keeps_input_order_even_when_one_is_held():
    """Input order decides which of two events sharing an id is the original, so such a batch is
    applied in one transaction that waits, never free users first."""
    from tests.support import api

    for user in ("a", "b"):
        api.record(f"warm-{user}", user, "premium_voice", 1)
    engine = create_engine(os.environ["DATABASE_URL"])
    with engine.connect() as holder:
        holder.execute(text("SELECT * FROM balances WHERE user_id = 'b' FOR UPDATE"))
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        events = [
            {"event_id": "shared", "user_id": "b", "usage_type": "premium_voice", "amount": 5},
            {"event_id": "shared", "user_id": "a", "usage_type": "premium_voice", "amount": 5},
        ]
        proc = ctx.Process(target=_record_batch, args=(dict(os.environ), results, events))
        proc.start()
        deadline = time.monotonic() + 60
        while not _waiting_on_a_lock() and time.monotonic() < deadline:
            assert proc.is_alive(), f"finished while b was locked: {results.get(timeout=5)}"
        assert query("SELECT count(*) FROM usage_events WHERE event_id = 'shared'") == [(0,)]
        holder.rollback()
    assert results.get(timeout=60) == [("shared", "recorded"), ("shared", "rejected")]
    assert query("SELECT user_id FROM usage_events WHERE event_id = 'shared'") == [("b",)]
    proc.join(timeout=30)
    engine.dispose()
