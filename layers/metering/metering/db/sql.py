"""How the repositories (`metering.db.ledger`, `reads`, `stripe_mirror`) run their SQL: one style.

A `Statement` is SQL text with `:name` placeholders, turned into the server's `$n` form once, at
import. `fetch` sends several statements (after whatever was `queue`d) in one round trip on the
pipelined driver (`metering.db.wire`), and returns each one's rows as named tuples; `rows`,
`first` and `one` are the single-statement forms; `queue` sends a write with the transaction's
next round trip (usually COMMIT). Driver errors are raised as SQLAlchemy's DBAPIError, so
`metering.db.engine` retries and translates them in one place.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from metering.db import exc

if TYPE_CHECKING:
    from sqlalchemy import Connection

# SQLAlchemy's own rule for text() bind names: `:name`, but not `::type` casts
_BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?!:)")


class Statement:
    """SQL text with `:name` placeholders, converted once to the server's `$n` form."""

    __slots__ = ("names", "numbered", "text")

    def __init__(self, text: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.text = text
        self.numbered = _BIND.sub(number, text)
        self.names = tuple(names)

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        return self.numbered, tuple(params[name] for name in self.names)


type Params = Mapping[str, Any]


def fetch(conn: Connection, *statements: tuple[Statement, Params]) -> list[list[Any]]:
    """Run `statements` (after anything queued) in one round trip; the rows of each."""
    bound = [statement.bind(params) for statement, params in statements]
    try:
        contexts = _driver(conn).exchange(bound)
    except OSError:
        raise
    except Exception as error:
        raise translated(error, bound[-1][0] if bound else "(queued statements)") from error
    return [_rows(context) for context in contexts]


def rows(conn: Connection, statement: Statement, params: Params) -> list[Any]:
    return fetch(conn, (statement, params))[0]


def first(conn: Connection, statement: Statement, params: Params) -> Any | None:
    found = rows(conn, statement, params)
    return found[0] if found else None


def one(conn: Connection, statement: Statement, params: Params) -> Any:
    (row,) = rows(conn, statement, params)
    return row


def queue(conn: Connection, statement: Statement, params: Params) -> None:
    """Run `statement` with the transaction's next round trip (the next `fetch` or COMMIT); nobody
    reads its rows, and its error fails that round trip."""
    _driver(conn).queue(*statement.bind(params))


def translated(error: Exception, statement: str) -> Exception:
    """A driver error as SQLAlchemy would raise it (DBAPIError subclasses); anything else as is."""
    from metering.db.wire import dbapi

    if not isinstance(error, dbapi.Error):
        return error
    return exc.DBAPIError.instance(statement, None, error, dbapi.Error, hide_parameters=True)


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
