"""pg8000 with one network round trip per parameterised statement.

pg8000 (1.31) runs a parameterised statement as three exchanges with the server: Parse+Sync,
Describe+Sync, then Bind+Execute+Sync, waiting for an answer after each. Its results are all in
text format, so nothing in the later messages depends on the earlier answers, and the whole
sequence can be sent at once and answered once, as libpq's PQexecParams does: Parse, Bind,
Describe (portal), Execute, Sync. Errors still arrive in order before ReadyForQuery (the server
skips to the Sync after the first error), and pg8000's own message handlers do the rest.

Only unnamed statements are sent, as before: nothing here prepares named statements or sets
session state, so RDS Proxy can still multiplex the connection.

pg8000 also rewrites `%s` placeholders to `$n` by scanning the SQL text character by character on
every execute (a third of a record's CPU time in a profile). For the `format` paramstyle that
SQLAlchemy uses, the result depends on the text alone and the arguments pass through unchanged,
so it is computed once per statement text.

Python lists are sent as array literals (the set-based record passes its rows as arrays, cast in
the SQL). pg8000 escapes every string of an array character by character in Python; lists of
str, int and None are written here with `str.replace` instead (every element quoted, which the
array syntax always allows), anything else still by pg8000.
"""

from __future__ import annotations

import types
from functools import lru_cache
from typing import Any

import pg8000
from pg8000 import converters, core, legacy
from pg8000.converters import make_params

_DESCRIBE_PORTAL = b"P" + core.NULL_BYTE
_convert_paramstyle = legacy.convert_paramstyle


@lru_cache(maxsize=1024)
def _format_to_numbered(query: str) -> str:
    return str(_convert_paramstyle("format", query, ())[0])


def convert_paramstyle(style: str, query: str, args: Any) -> tuple[str, Any]:
    if style == "format":
        return _format_to_numbered(query), args
    statement, vals = _convert_paramstyle(style, query, args)
    return statement, vals


legacy.convert_paramstyle = convert_paramstyle  # what legacy.Cursor.execute calls


def _array_literal(values: list[Any]) -> str:
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif type(v) is int:
            parts.append(str(v))
        elif type(v) is str:
            parts.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            return str(converters.array_out(values))
    return "{" + ",".join(parts) + "}"


class PipelinedConnection(legacy.Connection):
    def __init__(self, user: str, **kwargs: Any) -> None:
        super().__init__(user, **kwargs)
        self.py_types[list] = _array_literal

    def execute_unnamed(self, statement: str, vals: Any = (), oids: Any = (), stream: Any = None) -> Any:
        if stream is not None:  # COPY keeps pg8000's own exchange
            return super().execute_unnamed(statement, vals=vals, oids=oids, stream=stream)
        context = core.Context(statement, stream=stream)
        self.send_PARSE(core.NULL_BYTE, statement, oids)
        self.send_BIND(core.NULL_BYTE, make_params(self.py_types, vals))
        self._send_message(core.DESCRIBE, _DESCRIBE_PORTAL)
        self.send_EXECUTE()
        core._write(self._sock, core.SYNC_MSG)
        core._flush(self._sock)
        self.handle_messages(context)
        return context


def _connect(user: str, **kwargs: Any) -> PipelinedConnection:
    return PipelinedConnection(user, **kwargs)


# The DBAPI module handed to SQLAlchemy's pg8000 dialect: pg8000 itself, connecting pipelined.
dbapi = types.ModuleType("pg8000_pipelined")
dbapi.__dict__.update({k: v for k, v in vars(pg8000).items() if not k.startswith("__") or k == "__version__"})
dbapi.connect = _connect  # type: ignore[attr-defined]
