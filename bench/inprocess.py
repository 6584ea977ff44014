"""Measurements made in the bench's own process (one warm container): check and record latency,
and round trips per operation."""

from __future__ import annotations

import gc
import time
import uuid
from typing import Any

from bench import events, handlers, wire
from bench.stats import latency_summary

CHECK_USERS = [f"check-{i:03d}" for i in range(100)]


def _call(handler: Any, event: dict[str, Any], name: str) -> dict[str, Any]:
    from metering_dev.context import make_context

    return handler(event, make_context(name))


def seed(users: list[str], usage_bodies_per_user: int = 1, check: bool = False) -> None:
    """One recorded event per user (in batches of 500), so that every user has its period and
    balances rows before anything is timed: the timed paths are those of existing users."""
    record = handlers.handler("record")
    bodies = []
    for user in users:
        for n in range(usage_bodies_per_user):
            body = events.usage_body(f"seed-{uuid.uuid4().hex}-{n}", user)
            if check:
                body = {**body, "usage_type": events.CHECK_TYPE, "details": None, "reference_id": None}
            bodies.append(body)
    with handlers.quiet():
        for start in range(0, len(bodies), 500):
            result = _call(record, events.batch_event(bodies[start : start + 500]), "record")
            assert result["statusCode"] == 200, result


def check_latency(calls: int, warmup: int, reservation: bool) -> dict[str, float]:
    """Warm check calls over CHECK_USERS round-robin; p50/p99 of the handler call (perf_counter_ns)."""
    check = handlers.handler("check")
    from metering_dev.context import make_context

    run = uuid.uuid4().hex[:8]

    def event(i: int) -> dict[str, Any]:
        user = CHECK_USERS[i % len(CHECK_USERS)]
        return events.check_event(user, f"r-{run}-{i}" if reservation else None)

    with handlers.quiet():
        for i in range(warmup):
            result = check(event(i), make_context("check"))
            assert result["statusCode"] == 200, result
        prepared = [(event(warmup + i), make_context("check")) for i in range(calls)]
        samples: list[int] = []
        statuses: dict[int, int] = {}
        gc.collect()
        cpu0 = time.process_time()
        for ev, ctx in prepared:
            t0 = time.perf_counter_ns()
            result = check(ev, ctx)
            samples.append(time.perf_counter_ns() - t0)
            statuses[result["statusCode"]] = statuses.get(result["statusCode"], 0) + 1
        cpu = time.process_time() - cpu0
    if set(statuses) != {200}:
        raise RuntimeError(f"check returned {statuses}")
    return {**latency_summary(samples), "client_cpu_ms_per_call": cpu * 1000 / calls}


def record_latency(calls: int, warmup: int, users: list[str]) -> dict[str, float]:
    """Single-event records from one process, users round-robin (informational)."""
    record = handlers.handler("record")
    from metering_dev.context import make_context

    run = uuid.uuid4().hex[:8]
    with handlers.quiet():
        for i in range(warmup):
            _call(record, events.record_event(f"lw-{run}-{i}", users[i % len(users)]), "record")
        prepared = [
            (events.record_event(f"lt-{run}-{i}", users[i % len(users)]), make_context("record"))
            for i in range(calls)
        ]
        samples: list[int] = []
        gc.collect()
        cpu0 = time.process_time()
        for ev, ctx in prepared:
            t0 = time.perf_counter_ns()
            result = record(ev, ctx)
            samples.append(time.perf_counter_ns() - t0)
            if result["statusCode"] != 201:
                raise RuntimeError(f"record returned {result}")
        cpu = time.process_time() - cpu0
    return {**latency_summary(samples), "client_cpu_ms_per_call": cpu * 1000 / calls}


def _each_wrote_one_alert(users: list[str], alert_id: str) -> None:
    """The crossing records did write their alert (outside the counted calls)."""
    from metering.services.alert_delivery import list_alerts

    for user in users:
        written = [a.alert_id for a in list_alerts(state="pending", user_id=user)]
        if written != [alert_id]:
            raise RuntimeError(f"{user}: expected one {alert_id} alert, found {written}")


def round_trips(users: list[str], samples: int = 20, batch_samples: int = 2) -> dict[str, Any]:
    """Round trips per operation: (min, max, mean) over `samples` warm calls, and per SQL statement
    (grouped by kind): how many per call, round trips each, and the mean time from execute to
    result as the handler sees it (the wall time of the whole call is given beside it)."""
    from metering.db.engine import get_engine

    check = handlers.handler("check")
    record = handlers.handler("record")
    queue = handlers.handler("record", "queue_handler")
    run = uuid.uuid4().hex[:8]
    engine = get_engine()
    out: dict[str, Any] = {}

    def measure(name: str, make: Any, handler: Any, expect: Any, n: int = samples, warm: Any = None) -> None:
        pg, rd, wall, cpu = [], [], [], []
        by_sql: dict[str, list[float]] = {}  # label -> [occurrences, round trips, ms, client CPU ms]
        with handlers.quiet():
            # warm: connection open, Lua script cached, idle ping done
            _call(handler, (warm or make)(-1), name)
            for i in range(n):
                event = make(i)
                with wire.measure(engine) as delta:
                    c0, t0 = time.process_time_ns(), time.perf_counter_ns()
                    result = _call(handler, event, name)
                    wall.append((time.perf_counter_ns() - t0) / 1e6)
                    cpu.append((time.process_time_ns() - c0) / 1e6)
                expect(result)
                pg.append(delta.pg)
                rd.append(delta.redis)
                for label, trips, ms, ms_cpu in delta.statements:
                    agg = by_sql.setdefault(label, [0, 0, 0.0, 0.0])
                    agg[0] += 1
                    agg[1] += trips
                    agg[2] += ms
                    agg[3] += ms_cpu
        out[name] = {
            "pg": {"min": min(pg), "max": max(pg), "mean": sum(pg) / n},
            "redis": {"min": min(rd), "max": max(rd), "mean": sum(rd) / n},
            "samples": n,
            "wall_ms_mean": sum(wall) / n,
            "client_cpu_ms_mean": sum(cpu) / n,
            "sql_ms_per_call": sum(a[2] for a in by_sql.values()) / n,
            "sql_client_cpu_ms_per_call": sum(a[3] for a in by_sql.values()) / n,
            "statements": [
                {
                    "sql": label,
                    "per_call": count / n,
                    "pg_round_trips": trips / count,
                    "ms_mean": ms / count,
                    "client_cpu_ms_mean": ms_cpu / count,
                }
                for label, (count, trips, ms, ms_cpu) in by_sql.items()
            ],
        }

    def ok(status: int) -> Any:
        def expect(result: dict[str, Any]) -> None:
            if result.get("statusCode", status) != status:
                raise RuntimeError(f"expected {status}: {result}")
            if result.get("batchItemFailures"):
                raise RuntimeError(f"queue failures: {result}")

        return expect

    user_at = lambda i: users[i % len(users)]  # noqa: E731
    measure("check", lambda i: events.check_event(CHECK_USERS[i % 100]), check, ok(200))
    measure(
        "check with reservation",
        lambda i: events.check_event(CHECK_USERS[i % 100], f"rt-{run}-{i}"),
        check,
        ok(200),
    )
    measure("record (new event)", lambda i: events.record_event(f"rt-{run}-{i}", user_at(i)), record, ok(201))
    measure(
        "record (duplicate event)",
        lambda i: events.record_event(f"rt-{run}-{i}", user_at(i)),
        record,
        ok(200),
    )
    measure(
        "record (first event of a new user)",
        lambda i: events.record_event(f"rtn-{run}-{i}", f"new-{run}-{i}"),
        record,
        ok(201),
    )
    # 900 of a new user's free 1000 server_kokoro: crosses the bench catalog's kokoro_80 alert
    crossing = lambda i: f"alert-{run}-{i}"  # noqa: E731
    measure(
        "record crossing an alert (first event of a new user)",
        lambda i: events.http_event(
            "POST", "/v1/usage", events.usage_body(f"rta-{run}-{i}", crossing(i), 900, events.CHECK_TYPE)
        ),
        record,
        ok(201),
    )
    _each_wrote_one_alert([crossing(i) for i in range(-1, samples)], "kokoro_80")
    measure(
        "record with reservation_id",
        lambda i: events.http_event(
            "POST",
            "/v1/usage",
            {**events.usage_body(f"rtr-{run}-{i}", user_at(i)), "reservation_id": f"rt-{run}-{i}"},
        ),
        record,
        ok(201),
    )
    import random

    rng = random.Random(7)
    measure(
        "HTTP batch of 500 (50 users)",
        lambda i: events.batch_event(events.batch_bodies(f"rtb-{run}-{i}", 500, users, 50, rng)),
        record,
        ok(200),
        n=batch_samples,
        warm=lambda i: events.batch_event(events.batch_bodies(f"rtbw-{run}", 10, users, 10, rng)),
    )
    for size in (10, 100):
        measure(
            f"SQS batch of {size}",
            lambda i, size=size: events.sqs_event(
                [events.usage_body(f"rts{size}-{run}-{i}-{k}", rng.choice(users)) for k in range(size)]
            ),
            queue,
            ok(0),
            n=batch_samples,
            warm=lambda i: events.sqs_event([events.usage_body(f"rtsw-{run}-{i}", users[0])]),
        )
    return out
