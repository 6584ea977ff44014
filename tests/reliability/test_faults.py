"""Faults with real servers (issue 7): a connection killed mid-transaction or at COMMIT, PostgreSQL
restarted or down under warm containers, Redis stopped or frozen, a statement timeout, and a Lambda
killed with its transaction open. Each ends with the exact balances and a clean reconcile.

Every fault runs against private servers (tests/reliability/conftest.py). Nothing sleeps to
synchronise: a test waits for the server to show the request blocked where it wants it
(pg_stat_activity), then injects the fault.

The running example is metering.md's worked example: limit 5,000, used 4,900, rollover 50,
purchased 100; recording 300 gives 100 / 50 / 100 / 50 and leaves used 5,000, rollover -50,
purchased 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from metering import reservations
from metering.config import get_settings
from tests.support import api
from tests.support import stripe_events as stripe
from tests.support.lambda_events import call, http_event
from tests.support.private_servers import WarmContainer, wait_for
from tests.support.servers import reset_caches
from tests.support.state import assert_reconciled, iso, query, subscribe

pytestmark = pytest.mark.xdist_group("reliability")

USER, TYPE = "u1", "premium_voice"
EVENT = "job-300"
LOCK_STATEMENT = "metering.lock_pairs_v2"  # the routine where a record waits for the user's row
PERIOD_START = datetime.now(UTC) - timedelta(days=10)
APPLIED = {
    "event_id": EVENT,
    "recorded": True,
    "duplicate": False,
    "breakdown": {
        "from_subscription": 100,
        "from_rollover": 50,
        "from_grants": 0,
        "from_purchased": 100,
        "overflow_to_debt": 50,
    },
    "balance": {"used": 5000, "rollover": -50, "purchased": 0, "granted": 0},
    "period": {"start": iso(PERIOD_START), "end": iso(PERIOD_START + timedelta(days=30))},
}
REPLAYED = {**APPLIED, "recorded": False, "duplicate": True}


# --- given / then ------------------------------------------------------------------------------------


def given_worked_example() -> dict[str, Any]:
    subscribe(USER, "basic", start=PERIOD_START)
    assert api.record("warmup", USER, TYPE, 4900)[0] == 201
    assert api.adjust(USER, "adj-r", TYPE, "rollover", 50)[0] == 201
    assert api.adjust(USER, "adj-p", TYPE, "purchased", 100)[0] == 201
    return snapshot()


def snapshot() -> dict[str, Any]:
    """Everything a record of (USER, TYPE) may change."""
    (b,) = query(
        "SELECT rollover, purchased, version FROM balances WHERE user_id = :u AND usage_type = :t",
        u=USER,
        t=TYPE,
    )
    return {
        "balances": tuple(b),
        "used": query("SELECT coalesce(sum(used), 0) FROM period_usage WHERE usage_type = :t", t=TYPE)[0][0],
        "events": query("SELECT count(*) FROM usage_events")[0][0],
        "journal": query("SELECT count(*) FROM journal")[0][0],
        "stats": tuple(
            query("SELECT coalesce(sum(total), 0), coalesce(sum(events), 0) FROM lifetime_stats")[0]
        ),
        "periods": query("SELECT count(*) FROM periods")[0][0],
    }


def assert_untouched(before: dict[str, Any]) -> None:
    assert snapshot() == before
    assert query("SELECT count(*) FROM usage_events WHERE event_id = :e", e=EVENT)[0][0] == 0
    assert_reconciled()


def assert_applied_once() -> None:
    """Exactly one effect of EVENT: one log row, one journal entry per account, exact balances."""
    assert query(
        "SELECT amount, from_subscription, from_rollover, from_purchased, overflow_to_debt FROM usage_events "
        "WHERE event_id = :e",
        e=EVENT,
    ) == [(300, 100, 50, 100, 50)]
    journal = query("SELECT account, delta, reason FROM journal WHERE ref = :e ORDER BY account", e=EVENT)
    assert [tuple(r) for r in journal] == [
        ("purchased", -100, "usage"),
        ("rollover", -100, "usage"),
        ("used", 100, "usage"),
    ]
    (b,) = query(
        "SELECT rollover, purchased FROM balances WHERE user_id = :u AND usage_type = :t", u=USER, t=TYPE
    )
    assert tuple(b) == (-50, 0)
    assert query("SELECT sum(used) FROM period_usage WHERE usage_type = :t", t=TYPE)[0][0] == 5000
    assert query("SELECT count(*), sum(amount) FROM usage_events")[0] == (2, 5200)
    assert tuple(query("SELECT sum(total), sum(events) FROM lifetime_stats")[0]) == (5200, 2)
    assert_reconciled()


@contextlib.contextmanager
def row_locked(user: str = USER) -> Iterator[Any]:
    """Hold the user's balances rows from a separate connection (as a slow concurrent transaction
    would) until the block exits."""
    engine = create_engine(os.environ["DATABASE_URL"])
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT * FROM balances WHERE user_id = :u FOR UPDATE"), {"u": user})
            yield holder
            holder.rollback()
    finally:
        engine.dispose()


@contextlib.contextmanager
def usage_log_insert_blocked(event_id: str = EVENT) -> Iterator[None]:
    """An uncommitted row with the same event_id in usage_events: a record's INSERT waits for it,
    after the record has already locked and bumped the balances row."""
    engine = create_engine(os.environ["DATABASE_URL"])
    try:
        with engine.connect() as holder:
            holder.execute(
                text(
                    "INSERT INTO usage_events (event_id, user_id, usage_type, amount, period_id, from_subscription, "
                    "from_rollover, from_purchased, overflow_to_debt, recorded_at) "
                    "SELECT :e, :u, :t, 1, period_id, 0, 0, 0, 0, now() FROM periods WHERE user_id = :u LIMIT 1"
                ),
                {"e": event_id, "u": USER, "t": TYPE},
            )
            yield
            holder.rollback()
    finally:
        engine.dispose()


class InThread:
    """Run a blocking invocation on a thread while the test injects a fault."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self._result: list[Any] = []
        self._thread = threading.Thread(
            target=lambda: self._result.append(_capture(function, *args)), daemon=True
        )
        self._thread.start()

    def result(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"invocation still running after {timeout} s"
        value = self._result[0]
        if isinstance(value, BaseException):
            raise value
        return value


def _capture(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except BaseException as error:
        return error


# Invocations run inside warm containers (module-level so that spawned processes can import them).


def invoke_record(event_id: str, user: str, usage_type: str, amount: int) -> tuple[int, Any]:
    return api.record(event_id, user, usage_type, amount)


def invoke_check(user: str, usage_type: str, amount: int) -> tuple[int, Any]:
    return api.check(user, usage_type, amount)


def invoke_summary(user: str) -> tuple[int, Any]:
    path = f"/v1/users/{user}/summary"
    return call(
        "summary",
        http_event("GET", path, route="/v1/users/{user_id}/summary", path_parameters={"user_id": user}),
    )


GRANT_EXPIRES = (datetime.now(UTC) + timedelta(days=30)).isoformat()


def top_up_event(session_id: str = "cs_topup_1") -> dict[str, Any]:
    session = stripe.checkout_session(session_id, mode="payment", pack="voice_1k", quantity="1", user_id=USER)
    return stripe.event("checkout.session.completed", session, int(time.time()))


# --- a killed connection ------------------------------------------------------------------------------


@pytest.mark.parametrize("kills", [1, 3], ids=["killed-once", "killed-on-every-attempt"])
def test_connection_killed_while_a_record_waits_then_the_retry_applies_once(private, kills):
    before = given_worked_example()
    with row_locked():
        delivery = InThread(api.record, EVENT, USER, TYPE, 300)
        killed: tuple[int, ...] = ()
        for _ in range(kills):
            pid = private.waiting_pid(LOCK_STATEMENT, exclude=killed)
            private.terminate(pid)  # pg_terminate_backend: the connection is gone mid-transaction
            killed += (pid,)
        if kills < 3:  # run_in_transaction reconnects and runs the transaction again: it waits anew
            private.waiting_pid(LOCK_STATEMENT, exclude=killed)
    status, body = delivery.result()

    if kills < 3:
        # the service's own retry applied it: the caller sees a normal 201
        assert (status, body) == (201, APPLIED)
        assert api.record(EVENT, USER, TYPE, 300) == (200, REPLAYED)
    else:
        # three lost connections exhaust the retries: 503, and not a trace of the attempt
        assert (status, body["error"]["code"]) == (503, "unavailable")
        assert_untouched(before)
        # the caller retries the same delivery: applied exactly once
        assert api.record(EVENT, USER, TYPE, 300) == (201, APPLIED)
        assert api.record(EVENT, USER, TYPE, 300) == (200, REPLAYED)
    assert_applied_once()


def test_connection_killed_at_commit_then_the_record_converges_to_one_effect(private):
    """The COMMIT reached the server but its answer never reached the service (the classic lost
    acknowledgement). Made deterministic with synchronous replication to a standby that does not
    exist: the COMMIT is durable locally and then waits (wait_event SyncRep) for the standby, and the
    connection is killed right there."""
    given_worked_example()
    private.sql("ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'")
    private.sql("SELECT pg_reload_conf()")
    try:
        delivery = InThread(api.record, EVENT, USER, TYPE, 300)
        (row,) = wait_for(
            lambda: private.backends("wait_event = 'SyncRep'"), 30, "a COMMIT waiting for the standby"
        )
        assert row.query.strip().upper() == "COMMIT"
        private.terminate(row.pid)
    finally:
        private.sql("ALTER SYSTEM RESET synchronous_standby_names")
        private.sql("SELECT pg_reload_conf()")
    status, body = delivery.result()

    # run_in_transaction ran the transaction again; it found the event already committed, so the
    # caller's first delivery is answered as a replay, with the original breakdown
    assert (status, body) == (200, REPLAYED)
    assert api.record(EVENT, USER, TYPE, 300) == (200, REPLAYED)
    assert_applied_once()


@pytest.mark.parametrize("kills", [1, 3], ids=["killed-once", "killed-on-every-attempt"])
def test_connection_killed_while_a_webhook_top_up_waits_then_it_is_credited_once(private, kills):
    assert api.adjust(USER, "seed", TYPE, "rollover", 10)[0] == 201  # the balances row exists
    event = top_up_event()
    with row_locked():
        delivery = InThread(stripe.deliver, event)
        killed: tuple[int, ...] = ()
        for _ in range(kills):
            pid = private.waiting_pid(LOCK_STATEMENT, exclude=killed)
            private.terminate(pid)
            killed += (pid,)
        if kills < 3:
            private.waiting_pid(LOCK_STATEMENT, exclude=killed)
    status, body = delivery.result()

    if kills < 3:
        assert (status, body) == (200, {"status": "ok"})
    else:
        assert (status, body["error"]["code"]) == (503, "unavailable")  # Stripe retries a non-2xx
        assert query("SELECT count(*) FROM stripe_events")[0][0] == 0
        assert query("SELECT count(*) FROM topups")[0][0] == 0
        assert query("SELECT rollover, purchased FROM balances")[0] == (10, 0)
        assert stripe.deliver(event) == (200, {"status": "ok"})  # Stripe's retry
    assert stripe.deliver(event) == (200, {"status": "duplicate"})
    assert query(
        "SELECT rollover, purchased FROM balances WHERE user_id = :u AND usage_type = :t", u=USER, t=TYPE
    ) == [(10, 1000)]
    assert query("SELECT account, delta, reason, ref FROM journal WHERE reason = 'topup'") == [
        ("purchased", 1000, "topup", "cs_topup_1")
    ]
    assert query("SELECT checkout_session_id, amount FROM topups") == [("cs_topup_1", 1000)]
    assert query("SELECT event_id, outcome FROM stripe_events") == [(event["id"], "ok")]
    assert_reconciled()


# --- PostgreSQL restarted or down ------------------------------------------------------------------------


def test_postgres_restarted_while_containers_are_warm_the_next_invocations_succeed(private):
    subscribe(USER, "basic", start=PERIOD_START)
    record_c, check_c, summary_c = WarmContainer.start(private.env, 3)
    try:
        # warm: each container made one successful invocation, its pooled connection is open
        assert record_c.call(invoke_record, "before", USER, TYPE, 100)[0] == 201
        assert check_c.call(invoke_check, USER, TYPE, 10)[0] == 200
        assert summary_c.call(invoke_summary, USER)[0] == 200

        private.pg.restart()  # pg_ctl stop -m fast; start: every open connection is closed

        # the first invocation of every container after the restart
        rec = record_c.call(invoke_record, "after", USER, TYPE, 200)
        chk = check_c.call(invoke_check, USER, TYPE, 10)
        summ = summary_c.call(invoke_summary, USER)
    finally:
        for c in (record_c, check_c, summary_c):
            c.close()
    assert rec == (
        201,
        {
            "event_id": "after",
            "recorded": True,
            "duplicate": False,
            "breakdown": {
                "from_subscription": 200,
                "from_rollover": 0,
                "from_grants": 0,
                "from_purchased": 0,
                "overflow_to_debt": 0,
            },
            "balance": {"used": 300, "rollover": 0, "purchased": 0, "granted": 0},
            "period": APPLIED["period"],
        },
    )
    assert (chk[0], summ[0]) == (200, 200), f"after the restart: check {chk}; summary {summ}"
    assert (chk[1]["allowed"], chk[1]["used"], chk[1]["available"]) == (True, 300, 4700)
    assert summ[1]["usage_types"][TYPE]["used"] == 300
    assert query("SELECT count(*), sum(amount) FROM usage_events")[0] == (2, 300)
    assert_reconciled()


def test_postgres_down_every_route_answers_503_and_the_retries_apply_once(private):
    subscribe(USER, "basic")
    assert api.record("warmup", USER, TYPE, 100)[0] == 201  # warm: the pool holds a connection
    event = top_up_event()
    batch = [{"event_id": "b1", "user_id": USER, "usage_type": TYPE, "amount": 10}]

    private.pg.stop()
    try:
        status, body = api.record(EVENT, USER, TYPE, 300)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        status, body = api.check(USER, TYPE, 10)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        status, body = api.adjust(USER, "adj-p", TYPE, "purchased", 100)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        status, body = api.grant(USER, "g-1", TYPE, 50, GRANT_EXPIRES)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        status, body = api.read("ledger", USER)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        status, body = stripe.deliver(event)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        status, body = api.batch(batch)
        assert status == 200
        assert [(r["event_id"], r["status"], r["error"]["code"]) for r in body["results"]] == [
            ("b1", "rejected", "unavailable")
        ]
    finally:
        private.pg.start()

    # every caller retries once the database is back: each effect exactly once
    assert api.adjust(USER, "adj-p", TYPE, "purchased", 100)[0] == 201
    assert api.grant(USER, "g-1", TYPE, 50, GRANT_EXPIRES)[0] == 201
    assert api.grant(USER, "g-1", TYPE, 50, GRANT_EXPIRES)[0] == 200
    assert stripe.deliver(event) == (200, {"status": "ok"})
    status, body = api.record(EVENT, USER, TYPE, 300)
    assert status == 201 and body["balance"] == {"used": 400, "rollover": 0, "purchased": 1100, "granted": 50}
    assert [e["reason"] for e in api.read("ledger", USER)[1]["entries"]][:3] == ["usage", "topup", "grant"]
    assert api.batch(batch)[1]["results"][0]["status"] == "recorded"
    assert api.record(EVENT, USER, TYPE, 300)[0] == 200
    assert query("SELECT rollover, purchased FROM balances")[0] == (0, 1100)
    assert query("SELECT sum(used) FROM period_usage")[0][0] == 410
    assert query("SELECT count(*) FROM usage_events")[0][0] == 3
    assert_reconciled()


# --- Redis stopped or frozen -----------------------------------------------------------------------------


def test_redis_stopped_checks_answer_from_the_database_and_records_are_unaffected(private):
    subscribe(USER, "basic")  # premium_voice: 5,000 a period
    status, body = api.check(USER, TYPE, 1000, {"id": "r1", "ttl_seconds": 300})
    assert (status, body["reservations_counted"], body["reservation"]["id"]) == (200, True, "r1")

    private.redis.stop()
    # the hold r1 can no longer be counted: the database alone says 5,000
    status, body = api.check(USER, TYPE, 1000, {"id": "r2", "ttl_seconds": 300})
    assert (status, body) == (
        200,
        {
            "allowed": True,
            "user_id": USER,
            "usage_type": TYPE,
            "requested": 1000,
            "limit": 5000,
            "used": 0,
            "reserved": 0,
            "available": 5000,
            "reservation": None,
            "reservations_counted": False,
        },
    )
    status, body = api.record("e1", USER, TYPE, 1000, reservation_id="r1")  # settling r1 is best effort
    assert (status, body["balance"]) == (201, {"used": 1000, "rollover": 0, "purchased": 0, "granted": 0})
    status, body = api.check(USER, TYPE, 4000)
    assert (status, body["allowed"], body["available"], body["reservations_counted"]) == (
        200,
        True,
        4000,
        False,
    )
    status, body = api.release(USER, "r1")
    assert (status, body["error"]["code"]) == (503, "unavailable")

    private.redis.start()  # same port, empty (no persistence): r1 is gone, which only loosens checks
    status, body = api.check(USER, TYPE, 500, {"id": "r3", "ttl_seconds": 300})
    assert (status, body["reservations_counted"], body["reserved"], body["reservation"]["id"]) == (
        200,
        True,
        0,
        "r3",
    )
    status, body = api.check(USER, TYPE, 3600)  # 4,000 left, 500 of it held by r3
    assert (status, body["allowed"], body["reserved"], body["available"], body["reservations_counted"]) == (
        200,
        False,
        500,
        3500,
        True,
    )
    assert api.release(USER, "r3") == (204, None)
    assert api.check(USER, TYPE, 4000)[1]["available"] == 4000
    assert query("SELECT sum(used) FROM period_usage")[0][0] == 1000
    assert_reconciled()


def test_redis_frozen_a_check_answers_within_its_timeout_and_creates_no_hold(private):
    """Redis accepts the connection but does not answer (SIGSTOP): the check gives up after
    REDIS_TIMEOUT_S and answers from the database. Its response says no reservation was made, so
    none may appear once Redis wakes up (metering.md: reservations are then "not counted nor
    created")."""
    subscribe(USER, "basic")
    assert api.check(USER, TYPE, 1)[1]["reservations_counted"]  # warm: the client is connected
    redis_pid = private.redis.proc.pid
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        started, sent_at = time.monotonic(), time.time()
        status, body = api.check(USER, TYPE, 2000, {"id": "r1", "ttl_seconds": 300})
        elapsed = time.monotonic() - started
        # Redis stays paused until the script's deadline has passed for sure (the deadline is
        # computed before sending, so later than `sent_at` it cannot be)
        deadline = sent_at + get_settings().redis_timeout_s + reservations.LATE_SCRIPT_MARGIN_S
        while time.time() <= deadline + 0.05:
            time.sleep(0.05)  # waiting for the clock to pass a known instant, not for another process
    finally:
        os.kill(redis_pid, signal.SIGCONT)
        resumed = time.monotonic()
    assert (status, body["allowed"], body["reservation"], body["reservations_counted"]) == (
        200,
        True,
        None,
        False,
    )
    assert elapsed < 2.0, f"a check with Redis frozen took {elapsed:.2f} s"

    # Redis has run whatever it was sent while frozen once no connection active since it resumed
    # is still unread (a fresh connection shows cmd NULL) or holds unprocessed input; connections
    # idle since before the freeze carried nothing and do not matter
    probe = redis.Redis.from_url(private.redis.url)
    own = str(probe.client_id())  # the probe's own connection, busy listing clients
    lingering: list[Any] = []

    def caught_up() -> bool:
        active_since_resume = time.monotonic() - resumed + 1
        lingering[:] = [
            c
            for c in probe.client_list()
            if c["id"] != own
            and c["cmd"] != "flushall"
            and int(c["idle"]) <= active_since_resume
            and (c["cmd"] == "NULL" or c["qbuf"] != "0")
        ]
        return not lingering

    try:
        wait_for(caught_up, 30, "Redis to process what it was sent while frozen")
    except TimeoutError as error:
        raise AssertionError(f"{error}; still connected: {lingering}") from None
    probe.close()

    status, body = api.check(USER, TYPE, 5000)
    assert body["reservations_counted"] is True
    assert (body["reserved"], body["available"], body["allowed"]) == (0, 5000, True), (
        "a hold the check reported as not made was created when Redis woke up"
    )


# --- timeouts -----------------------------------------------------------------------------------------


def test_statement_timeout_mid_record_answers_503_and_leaves_nothing_partial(private):
    """A statement that runs past the database's statement_timeout (set on the database, not by the
    service, which never sends SET) while the user's row is locked by a slow transaction."""
    before = given_worked_example()
    private.sql("ALTER DATABASE metering SET statement_timeout = '300ms'")
    reset_caches()  # the setting applies to new connections
    with row_locked():
        status, body = api.record(EVENT, USER, TYPE, 300)
    private.sql("ALTER DATABASE metering RESET statement_timeout")
    reset_caches()

    assert_untouched(before)
    assert api.record(EVENT, USER, TYPE, 300) == (201, APPLIED)  # the caller's retry
    assert api.record(EVENT, USER, TYPE, 300) == (200, REPLAYED)
    assert_applied_once()
    # a timeout is neither bad input nor a bug: the caller should retry later (503), not be told 500
    assert (status, body["error"]["code"]) == (503, "unavailable"), (status, body)


@pytest.mark.parametrize("blocked_in", ["row lock", "usage log insert"])
def test_lambda_killed_with_its_transaction_open_is_all_or_nothing(private, blocked_in):
    """Lambda ends a timed-out invocation by killing the runtime: the socket closes with the
    transaction open. Blocked before writing (waiting for the user's row), PostgreSQL finds the
    client gone when it answers, and rolls everything back. Blocked in the write (the balances row
    already locked and bumped, the usage insert waiting), COMMIT was already sent with the write
    (one round trip), so the server completes the whole transaction: the caller's retry replays
    it. Either way nothing is partial and the retry converges on exactly one effect."""
    before = given_worked_example()
    (container,) = WarmContainer.start(private.env)
    try:
        assert container.call(invoke_check, USER, TYPE, 1)[0] == 200  # warm
        blocker, statement = (
            (row_locked(), LOCK_STATEMENT)
            if blocked_in == "row lock"
            else (usage_log_insert_blocked(), "metering.post_usage_v2")
        )
        with blocker:
            container.submit(invoke_record, EVENT, USER, TYPE, 300)
            pid = private.waiting_pid(statement)
            container.kill()  # SIGKILL mid-transaction
        wait_for(lambda: not private.backends("pid = :p", p=pid), 30, f"orphaned backend {pid} to end")
    finally:
        container.close()
    if blocked_in == "row lock":
        assert_untouched(before)
        # the invocation is retried (Lambda retry, SQS redelivery or the caller): applied once
        assert api.record(EVENT, USER, TYPE, 300) == (201, APPLIED)
    else:
        assert_applied_once()
    assert api.record(EVENT, USER, TYPE, 300) == (200, REPLAYED)
    assert_applied_once()
