"""Statements run by the driver directly, several per round trip.

The hot paths (check, record) know their SQL in advance. Running it through SQLAlchemy costs
about 0.1 ms of CPU per statement and one round trip each; here a statement's `:name` placeholders
are turned into `$n` once, its rows come back as named tuples, and `fetch` sends several
statements (plus whatever was `queue`d) in one round trip (`metering.db.wire.PipelinedConnection`).
Driver errors are raised as SQLAlchemy's DBAPIError, exactly as from `Connection.execute`, so
`engine.run_in_transaction` treats both paths alike.

The service's statements are also *routines* (`Statement(..., routine=True)`): `metering migrate`
installs each on the server as a PL/pgSQL function named after a hash of its text
(`metering.db.routines`), and the statement is sent as a call of that function. PL/pgSQL keeps
each function's parsed and planned statements for the life of the server connection, so the
server stops parsing and planning them on every execution (half its CPU per record) without
named prepared statements, which would pin RDS Proxy connections.
A container whose database lacks a routine (code deployed before its migration ran) sends the
statements' text instead, and tries the routines again a minute later (`use_routines`, set by
the engine's attempt loop).

Statements always fetched together can be declared a *group* (`Group`): its routine calls each
member's routine and returns all their rows in one result, so `fetch` sends one call instead of
one per statement (each call is parsed, planned and set up by the server: ≈ 30 µs of its CPU).
The rows come back split per statement, exactly as the members' own calls would give them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import namedtuple
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, exc

# SQLAlchemy's own rule for text() bind names: `:name`, but not `::type` casts
_BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?!:)")


ROUTINE_PREFIX = "metering_r_"
STATEMENTS: dict[str, Statement] = {}  # routine name -> statement, for every routine
GROUPS: dict[tuple[Statement, ...], Group] = {}  # members -> group, for every group


class Statement:
    """SQL text with `:name` placeholders, converted once to the server's `$n` form, and the
    routine that runs it on the server (`routine`, called by `call`)."""

    __slots__ = ("call", "names", "numbered", "routine", "text")

    def __init__(self, text: str, *, routine: bool = False) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.text = text
        self.numbered = _BIND.sub(number, text)
        self.names = tuple(names)
        self.routine = ""
        self.call = self.numbered
        if routine:  # made at import time (metering.db.routines.STATEMENT_MODULES)
            self.routine = _routine_name(self.numbered)
            self.call = _numbered_call(self.routine, len(names))
            STATEMENTS.setdefault(self.routine, self)

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        return self.call if routines_in_use() else self.numbered, tuple(params[name] for name in self.names)


def _routine_name(source: str) -> str:
    """A routine's name: a hash of what it runs, so that different code is a different routine."""
    return ROUTINE_PREFIX + hashlib.sha256(source.encode()).hexdigest()[:20]


def _numbered_call(routine: str, count: int) -> str:
    return f"SELECT * FROM {routine}({', '.join(f'${n}' for n in range(1, count + 1))})"


class Group:
    """Statements fetched together, in this order, each with its own parameters (`fetch`), run by
    one routine (`metering.db.routines` installs it after its members'). Its result has a column
    "#" (which member a row comes from), then every member's columns, named "<member>.<column>"
    and NULL in the rows of the other members."""

    __slots__ = ("_shapes", "call", "routine", "statements")

    def __init__(self, *statements: Statement) -> None:
        if len(statements) < 2 or not all(s.routine for s in statements):
            raise ValueError("a group is two or more statements with routines")
        self.statements = statements
        self.routine = _routine_name("+".join(s.routine for s in statements))
        self.call = _numbered_call(self.routine, sum(len(s.names) for s in statements))
        self._shapes: dict[tuple[str, ...], list[tuple[int, int, Any]]] = {}
        GROUPS.setdefault(statements, self)

    def bind(self, params: list[Mapping[str, Any]]) -> tuple[str, tuple[Any, ...]]:
        return self.call, tuple(
            p[name] for statement, p in zip(self.statements, params, strict=True) for name in statement.names
        )

    def split(self, context: Any) -> list[list[Any]]:
        """The group's rows as each member's rows (named tuples of the member's columns)."""
        names = tuple(c["name"] for c in context.columns)
        shapes = self._shapes.get(names)
        if shapes is None:  # (first column, end, row type) of each member, from the column names
            shapes = []
            for member in range(len(self.statements)):
                at = [i for i, name in enumerate(names) if name.split(".", 1)[0] == str(member)]
                columns = tuple(names[i].split(".", 1)[1] for i in at)
                shapes.append((at[0], at[-1] + 1, _row_type(columns)._make))
            self._shapes[names] = shapes
        out: list[list[Any]] = [[] for _ in shapes]
        for row in context.rows or ():
            start, end, make = shapes[row[0]]
            out[row[0]].append(make(row[start:end]))
        return out


_text_until = [0.0]  # time.monotonic() until which statements go as text (0: routines in use)
ROUTINES_RETRY_S = 60.0
_clock = time.monotonic


def use_routines(enabled: bool) -> None:
    """Send statements as calls of their routines (the default), or as their own text for
    ROUTINES_RETRY_S, after which the routines are tried again (the migration may have run)."""
    _text_until[0] = 0.0 if enabled else _clock() + ROUTINES_RETRY_S


def routines_in_use() -> bool:
    return not _text_until[0] or _clock() >= _text_until[0]


def _driver(conn: Connection) -> Any:
    return conn.connection.driver_connection


@lru_cache(maxsize=64)
def _row_type(columns: tuple[str, ...]) -> Any:
    return namedtuple("Row", columns)


def _rows(context: Any) -> list[Any]:
    if context.columns is None:
        return []
    make = _row_type(tuple(c["name"] for c in context.columns))._make
    return [make(row) for row in context.rows or ()]


def fetch(
    conn: Connection, *statements: tuple[Statement, Mapping[str, Any]], grouped: bool = True
) -> list[list[Any]]:
    """Run `statements` (after anything queued) in one round trip; the rows of each. Statements
    declared a `Group` go as one call of its routine, unless `grouped` is False: a read of many
    rows is cheaper as separate calls, since each of the group's rows carries every member's
    columns (NULL but for its own), ≈ 2.4 µs more per row against ≈ 30 µs saved per call."""
    return _answers(conn, statements, snapshot=False, grouped=grouped)


def fetch_snapshot(conn: Connection, *statements: tuple[Statement, Mapping[str, Any]]) -> list[list[Any]]:
    """`fetch` in one read-only REPEATABLE READ transaction (one snapshot for all statements);
    BEGIN and COMMIT travel with them: still one round trip. Not inside another transaction."""
    return _answers(conn, statements, snapshot=True)


def _answers(
    conn: Connection,
    statements: tuple[tuple[Statement, Mapping[str, Any]], ...],
    *,
    snapshot: bool,
    grouped: bool = True,
) -> list[list[Any]]:
    group = None
    if grouped and routines_in_use():
        group = GROUPS.get(tuple(statement for statement, _ in statements))
    if group is not None:
        bound = [group.bind([params for _, params in statements])]
    else:
        bound = [statement.bind(params) for statement, params in statements]
    driver = _driver(conn)
    try:
        contexts = driver.snapshot(bound) if snapshot else driver.exchange(bound)
    except OSError:
        raise
    except Exception as error:
        raise translated(error, bound[-1][0] if bound else "(queued statements)") from error
    if group is not None:
        return group.split(contexts[0])
    return [_rows(context) for context in contexts]


def fetch_one(conn: Connection, statement: Statement, params: Mapping[str, Any]) -> list[Any]:
    return fetch(conn, (statement, params))[0]


def queue(conn: Connection, statement: Statement, params: Mapping[str, Any]) -> None:
    """Run `statement` with the transaction's next round trip (the next `fetch`, SQLAlchemy
    execute, or COMMIT); nobody reads its rows, and its error fails that round trip."""
    _driver(conn).queue(*statement.bind(params))


def translated(error: Exception, statement: str) -> Exception:
    """A driver error as SQLAlchemy would raise it (DBAPIError subclasses); anything else as is."""
    from metering.db.wire import dbapi

    if not isinstance(error, dbapi.Error):
        return error
    return exc.DBAPIError.instance(statement, None, error, dbapi.Error, hide_parameters=True)
