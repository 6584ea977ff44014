"""Round trips counted at the wire.

PostgreSQL: pg8000 writes protocol messages into a buffered socket file and sends them with
`pg8000.core._flush`; it then blocks in `pg8000.core._read` for the answer, or, in the service's
pipelined driver, in `metering.db.wire._buffered`. All are module-level functions looked up at call
time, so wrapping them counts every exchange of every connection: a round trip is a flush followed
by a read (messages written after a flush and before the next read, like pg8000's Bind after its
Describe, travel with the next flush; they add no wait). The calibration runs known cases through
both drivers, so a read path the counter misses shows up there.

Redis: redis-py sends a command (or a whole pipeline) with `Connection.send_packed_command` and
waits in `Connection.read_response`; a round trip is a send followed by a read (a health-check PING
that the send does first counts as one of its own).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Counter:
    pg: int = 0
    redis: int = 0
    pg_flushes: int = 0
    _pg_pending: bool = False
    _redis_pending: bool = False

    def snapshot(self) -> tuple[int, int]:
        return self.pg, self.redis


COUNTER = Counter()
_installed = False
_originals: dict[str, object] = {}


def install() -> Counter:
    """Wrap pg8000's and redis-py's send/receive functions (idempotent; for this process)."""
    global _installed
    if _installed:
        return COUNTER
    import pg8000.core as core
    from redis.connection import AbstractConnection

    from metering.db import wire as driver

    flush, read, buffered = core._flush, core._read, driver._buffered
    _originals.update(pg_flush=flush, pg_read=read, pg_buffered=buffered)

    def counting_flush(sock):  # type: ignore[no-untyped-def]
        COUNTER.pg_flushes += 1
        COUNTER._pg_pending = True
        return flush(sock)

    def answer_awaited() -> None:
        if COUNTER._pg_pending:
            COUNTER._pg_pending = False
            COUNTER.pg += 1

    def counting_read(sock, size):  # type: ignore[no-untyped-def]
        answer_awaited()
        return read(sock, size)

    def counting_buffered(sock):  # type: ignore[no-untyped-def]
        answer_awaited()
        return buffered(sock)

    core._flush = counting_flush
    core._read = counting_read
    driver._buffered = counting_buffered

    send, receive = AbstractConnection.send_packed_command, AbstractConnection.read_response
    _originals.update(redis_send=send, redis_read=receive)

    def counting_send(self, command, check_health=True):  # type: ignore[no-untyped-def]
        result = send(self, command, check_health)
        COUNTER._redis_pending = True
        return result

    def counting_receive(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if COUNTER._redis_pending:
            COUNTER._redis_pending = False
            COUNTER.redis += 1
        return receive(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign]
    AbstractConnection.read_response = counting_receive  # type: ignore[method-assign]
    _installed = True
    return COUNTER


def uninstall() -> None:
    """Put the original functions back (so that timed runs carry no counting overhead)."""
    global _installed
    if not _installed:
        return
    import pg8000.core as core
    from redis.connection import AbstractConnection

    from metering.db import wire as driver

    core._flush = _originals["pg_flush"]
    core._read = _originals["pg_read"]
    driver._buffered = _originals["pg_buffered"]
    AbstractConnection.send_packed_command = _originals["redis_send"]  # type: ignore[method-assign]
    AbstractConnection.read_response = _originals["redis_read"]  # type: ignore[method-assign]
    _installed = False


@dataclass
class Delta:
    pg: int
    redis: int
    # (label, pg round trips, ms from execute to result, client CPU ms within it)
    statements: list[tuple[str, int, float, float]]
    sql: list[str]  # the text of every statement sent through the service's driver, in order
    pg_flushes: int = 0  # sends of PostgreSQL messages (a round trip is a send answered)

    def counts(self) -> dict[str, int]:
        return {"db": self.pg, "redis": self.redis}


@contextlib.contextmanager
def measure(engine=None) -> Iterator[Delta]:  # type: ignore[no-untyped-def]
    """Round trips made inside the block; with `engine`, also each SQL statement and its trips.
    The one counter of the project: the tests count with it too (tests/integration/test_round_trips.py,
    test_wire.py, ...)."""
    counter = install()
    delta = Delta(0, 0, [], [])
    pg0, redis0 = counter.snapshot()
    flushes0 = counter.pg_flushes
    real_exchange = None
    if engine is not None:
        from metering.db import wire as driver

        real_exchange = driver.PipelinedConnection.exchange

        def exchange(self, statements):  # type: ignore[no-untyped-def]
            sent = [sql for sql, _ in self._queued + statements]
            delta.sql.extend(sent)
            pg0, t0, c0 = counter.pg, time.perf_counter_ns(), time.process_time_ns()
            try:
                return real_exchange(self, statements)
            finally:
                ms = (time.perf_counter_ns() - t0) / 1e6
                cpu = (time.process_time_ns() - c0) / 1e6
                label = " + ".join(statement_label(sql) for sql in sent)
                delta.statements.append((label, counter.pg - pg0, ms, cpu))

        driver.PipelinedConnection.exchange = exchange  # type: ignore[method-assign]
    try:
        yield delta
    finally:
        delta.pg = counter.pg - pg0
        delta.redis = counter.redis - redis0
        delta.pg_flushes = counter.pg_flushes - flushes0
        if real_exchange is not None:
            driver.PipelinedConnection.exchange = real_exchange  # type: ignore[method-assign]


_ROUTINE = re.compile(r"\bmetering\.(\w+)\(")


def statement_label(sql: str) -> str:
    """A short name for a statement: the routine it calls (`metering.lock_pairs_v1` ->
    `lock_pairs_v1`), else its words up to a column list (`INSERT INTO alerts`)."""
    words = " ".join(sql.split())
    found = _ROUTINE.search(words)
    return found.group(1) if found else words.split(" (")[0][:40]


def calibrate(admin_url: str, redis_url: str) -> dict[str, int]:
    """Known cases, to show what the counters count (printed with the results)."""
    import redis
    from sqlalchemy import create_engine, text

    from metering.db.sql import Statement, fetch, queue, rows
    from metering.db.wire import dbapi

    counter = install()
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    pipelined = create_engine(admin_url, module=dbapi, isolation_level="AUTOCOMMIT", pool_size=1)
    out: dict[str, int] = {}
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").all()  # connect + dialect initialisation first
            pg0 = counter.pg
            conn.exec_driver_sql("SELECT 1").all()
            out["pg: SELECT 1 (autocommit, simple query)"] = counter.pg - pg0
            pg0 = counter.pg
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("SELECT 1").all()
            conn.exec_driver_sql("COMMIT")
            out["pg: BEGIN; SELECT 1; COMMIT (3 simple queries)"] = counter.pg - pg0
            pg0 = counter.pg
            conn.execute(text("SELECT CAST(:x AS int)"), {"x": 1}).all()
            out["pg: SELECT :x with a parameter (pg8000 unnamed extended query)"] = counter.pg - pg0
        with pipelined.connect() as conn:
            one = Statement("SELECT CAST(:x AS int) AS x")
            rows(conn, one, {"x": 1})  # connect + dialect initialisation first
            pg0 = counter.pg
            fetch(conn, (one, {"x": 1}), (one, {"x": 2}))
            out["pg: two statements in one pipeline (the service's driver)"] = counter.pg - pg0
            driver = conn.connection.driver_connection
            pg0 = counter.pg
            driver.lazy_begin()
            queue(conn, one, {"x": 1})
            rows(conn, one, {"x": 2})
            driver.lazy_commit()
            out["pg: BEGIN + queued + statement; COMMIT (the service's transaction)"] = counter.pg - pg0
        client = redis.Redis.from_url(redis_url)
        client.ping()
        r0 = counter.redis
        client.ping()
        out["redis: PING"] = counter.redis - r0
        r0 = counter.redis
        pipe = client.pipeline(transaction=False)
        pipe.get("bench:calibration").get("bench:calibration").get("bench:calibration")
        pipe.execute()
        out["redis: pipeline of 3 GETs"] = counter.redis - r0
        client.close()
    finally:
        engine.dispose()
        pipelined.dispose()
    return out
