"""The pipelined driver (metering.db.wire, metering.db.sql) against a real PostgreSQL: several
statements per round trip, BEGIN and queued writes sent lazily, an error stopping everything after
it, and the decoding shortcuts giving exactly what pg8000 gives."""

from datetime import UTC, datetime
from uuid import UUID

import pytest
from pg8000 import converters
from sqlalchemy import exc

from bench import wire
from metering.db.engine import get_engine, transaction
from metering.db.sql import Statement, fetch, queue, rows
from tests.support.state import query


@pytest.fixture
def scratch(clean):
    with get_engine().connect() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS wire_scratch (k text PRIMARY KEY, n int)")
        conn.exec_driver_sql("TRUNCATE wire_scratch")
    yield
    with get_engine().connect() as conn:
        conn.exec_driver_sql("DROP TABLE wire_scratch")


INSERT = Statement("INSERT INTO wire_scratch (k, n) VALUES (:k, :n)")
ROWS = Statement("SELECT k, n FROM wire_scratch ORDER BY k")


def test_statement_numbers_each_name_once_and_leaves_casts_alone():
    statement = Statement("SELECT CAST(:a AS int), :b, '{}'::jsonb, :a + 1")
    assert statement.numbered == "SELECT CAST($1 AS int), $2, '{}'::jsonb, $1 + 1"
    assert statement.bind({"b": "x", "a": 3}) == (statement.numbered, (3, "x"))


def test_several_statements_in_one_round_trip_each_with_its_rows(scratch):
    with get_engine().connect() as conn, wire.measure() as sent:
        first, second = fetch(
            conn,
            (Statement("SELECT CAST(:x AS int) AS x, CAST(:y AS text) AS y"), {"x": 1, "y": "a"}),
            (Statement("SELECT g AS n FROM generate_series(1, :m) AS g"), {"m": 3}),
        )
    assert (sent.pg, sent.pg_flushes) == (1, 1)
    assert [tuple(r) for r in first] == [(1, "a")] and first[0].y == "a"
    assert [r.n for r in second] == [1, 2, 3]


def test_a_transaction_sends_begin_with_its_first_statement_and_writes_with_commit(scratch):
    with wire.measure() as sent, transaction() as conn:
        assert rows(conn, ROWS, {}) == []  # round trip 1: BEGIN + this read
        queue(conn, INSERT, {"k": "a", "n": 1})
        queue(conn, INSERT, {"k": "b", "n": 2})
    assert sent.pg == 2  # round trip 2: both writes + COMMIT
    assert query("SELECT k, n FROM wire_scratch ORDER BY k") == [("a", 1), ("b", 2)]


def test_a_transaction_that_did_nothing_costs_nothing(scratch):
    with get_engine().connect():  # a pooled connection exists already
        pass
    with wire.measure() as sent, transaction():
        pass
    assert (sent.pg, sent.pg_flushes) == (0, 0)


def test_a_failing_queued_write_skips_commit_and_leaves_nothing(scratch):
    with pytest.raises(exc.DBAPIError) as raised, transaction() as conn:
        rows(conn, ROWS, {})
        queue(conn, INSERT, {"k": "a", "n": 1})
        queue(conn, INSERT, {"k": "a", "n": 2})  # duplicate key: fails, so COMMIT never runs
    assert raised.value.orig.args[0]["C"] == "23505"
    assert query("SELECT count(*) FROM wire_scratch") == [(0,)]
    with transaction() as conn:  # the pooled connection was rolled back and works
        queue(conn, INSERT, {"k": "c", "n": 3})
    assert query("SELECT k FROM wire_scratch") == [("c",)]


def test_an_error_stops_the_rest_of_the_pipeline(scratch):
    with pytest.raises(exc.DBAPIError), transaction() as conn:
        fetch(
            conn,
            (INSERT, {"k": "a", "n": 1}),
            (Statement("SELECT CAST(:v AS int)"), {"v": "not a number"}),
            (INSERT, {"k": "b", "n": 2}),
        )
    assert query("SELECT count(*) FROM wire_scratch") == [(0,)]


def test_rows_decode_as_pg8000_decodes_them(clean):
    """The row-description cache and the timestamptz shortcut give pg8000's own values."""
    values = Statement(
        "SELECT CAST(:a AS timestamptz) AS a, CAST('infinity' AS timestamptz) AS b, "
        "CAST('2026-11-24 06:55:27.12+05:30' AS timestamptz) AS c, CAST(:n AS bigint) AS n"
    )
    other = Statement("SELECT CAST(:n AS text) AS label")
    when = datetime(2026, 11, 24, 6, 55, 27, 120000, tzinfo=UTC)
    with get_engine().connect() as conn:
        for _ in range(2):  # the second time from the cache
            (row,) = rows(conn, values, {"a": when, "n": 7})
            (label,) = rows(conn, other, {"n": "x"})
            assert row.a == when and row.a.utcoffset() is not None
            assert row.b == "infinity"
            assert row.c == converters.timestamptz_in("2026-11-24 01:25:27.12+00")
            assert row.n == 7 and label._fields == ("label",) and label.label == "x"


@pytest.mark.parametrize(
    ("values", "cast"),
    [
        (
            ["plain", 'a "quote"', "back\\slash", "", "ünïcødé", "a,b", "{braces}", "NULL", " spaced "],
            "text[]",
        ),
        (["only", None, 'q"'], "text[]"),
        ([None, None], "text[]"),
        ([], "text[]"),
        ([0, -1, 2**63 - 1], "bigint[]"),
        ([1, None], "bigint[]"),
        ([UUID("12345678-1234-5678-1234-567812345678")], "uuid[]"),
        # one element (a single record's arrays, written by a shortcut)
        (['a "quote"'], "text[]"),
        (["back\\slash"], "text[]"),
        (["NULL"], "text[]"),  # the text NULL, not a null element
        ([""], "text[]"),
        ([" spaced, {braced} "], "text[]"),
        ([None], "text[]"),
        ([-7], "bigint[]"),
        ([UUID("12345678-1234-5678-1234-567812345678")], "uuid[]"),
    ],
)
def test_array_parameters_arrive_exactly(clean, values, cast):
    """The record sends its rows as array parameters; every element must arrive as it was."""
    with get_engine().connect() as conn:
        (row,) = rows(conn, Statement(f"SELECT CAST(:v AS {cast}) AS v"), {"v": values})
    assert row.v == values


def test_scalar_parameters_arrive_exactly(clean):
    """Strings and lists are written by a shortcut, everything else by pg8000's converters."""
    from decimal import Decimal

    values = {
        "s": 'it\'s "quoted" \\ ünïcødé',
        "e": "",
        "i": -(2**63),
        "b": True,
        "d": Decimal("12.3400"),
        "t": datetime(2026, 11, 24, 6, 55, 27, 120000, tzinfo=UTC),
        "u": UUID("12345678-1234-5678-1234-567812345678"),
        "n": None,
    }
    statement = Statement(
        "SELECT CAST(:s AS text) AS s, CAST(:e AS text) AS e, CAST(:i AS bigint) AS i, CAST(:b AS bool) AS b,"
        " CAST(:d AS numeric) AS d, CAST(:t AS timestamptz) AS t, CAST(:u AS uuid) AS u, CAST(:n AS text) AS n"
    )
    with get_engine().connect() as conn:
        (row,) = rows(conn, statement, values)
    assert row._asdict() == values


def test_answers_larger_than_the_read_buffer_arrive_whole(clean):
    """Answers are cut out of the socket's read buffer; a message that is not buffered whole (a
    100 kB value) and answers spread over many reads (thousands of rows) must arrive exactly, and
    the statements after them still get their own rows."""
    big = Statement("SELECT repeat(CAST(:c AS text), :n) AS v")
    many = Statement("SELECT g AS n, repeat('x', g % 50) AS pad FROM generate_series(1, :m) AS g")
    small = Statement("SELECT CAST(:x AS int) AS x")
    with get_engine().connect() as conn:
        with wire.measure() as sent:
            first, spread, last = fetch(
                conn, (big, {"c": "ab", "n": 50_000}), (many, {"m": 5000}), (small, {"x": 3})
            )
        assert (sent.pg, sent.pg_flushes) == (1, 1)
        assert [(small_row.x) for small_row in rows(conn, small, {"x": 4})] == [4]
    assert first[0].v == "ab" * 50_000
    assert [(r.n, r.pad) for r in spread] == [(g, "x" * (g % 50)) for g in range(1, 5001)]
    assert [r.x for r in last] == [3]


def test_a_message_the_server_sends_unasked_is_handled_where_it_lands(clean):
    """A notification arrives whenever the server has one, before or between a statement's answers:
    it goes to pg8000's handler and every statement still gets its own rows."""
    from tests.support.state import execute

    probe = Statement("SELECT CAST(:x AS int) AS x, CAST(:y AS text) AS y")
    with get_engine().connect() as conn:
        conn.exec_driver_sql("LISTEN wire_test")
        driver = conn.connection.driver_connection
        try:
            execute("NOTIFY wire_test, 'hello'")  # committed by another connection
            for attempt in range(10_000):
                first, second = fetch(
                    conn, (probe, {"x": attempt, "y": "a"}), (probe, {"x": -attempt, "y": "b"})
                )
                assert [tuple(first[0]), tuple(second[0])] == [(attempt, "a"), (-attempt, "b")]
                if driver.notifications:
                    break
            assert [n[1:] for n in driver.notifications] == [("wire_test", "hello")]
        finally:
            conn.exec_driver_sql("UNLISTEN wire_test")
            driver.notifications.clear()
