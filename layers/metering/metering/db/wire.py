"""pg8000 with statements pipelined: one network round trip for several statements.

pg8000 (1.31) runs a parameterised statement as three exchanges with the server: Parse+Sync,
Describe+Sync, then Bind+Execute+Sync, waiting for an answer after each. Its results are all in
text format, so nothing in the later messages depends on the earlier answers, and the whole
sequence can be sent at once and answered once, as libpq's PQexecParams does: Parse, Bind,
Describe (portal), Execute. Several statements can go in one write before a single Sync, as in
libpq's pipeline mode: the server runs them in order, and after an error skips the rest up to the
Sync, so nothing after a failed statement runs (a queued COMMIT included). pg8000's own message
handlers read the answers, cut out of the socket's read buffer (pg8000 reads each message with two
calls and two copies, ~60 messages per record).

That lets a transaction send BEGIN with its first statement, and writes whose rows nobody reads
with its COMMIT (`PipelinedConnection.queue`, `metering.db.sql`).

Only unnamed statements are sent, as before: nothing here prepares named statements or sets
session state, so RDS Proxy can still multiplex the connection.

Python lists are sent as array literals (the set-based record passes its rows as arrays, cast in
the SQL). pg8000 escapes every string of an array character by character in Python; lists of
str, int and None are written here with `str.replace` instead (every element quoted, which the
array syntax always allows), anything else still by pg8000. Strings and lists skip pg8000's
converter lookup, and a one-element list (a single record's arrays) has its own shortcut.
"""

from __future__ import annotations

import struct
import types
from datetime import datetime
from typing import Any
from uuid import UUID

import pg8000
from pg8000 import converters, core, legacy
from pg8000.converters import make_param

# The pg8000 release this module was written against: it subclasses pg8000's connection and uses
# its message handlers and socket helpers (`core._write`, `core._flush`, `core._read`), which are
# not a public API. `tests/unit/test_driver_pin.py` fails when the installed or pinned version
# differs: read pg8000's changes to those before moving the pin.
PG8000_VERSION = "1.31.6"

_DESCRIBE_MSG = bytes([*core.DESCRIBE, 0, 0, 0, 6, *core.PORTAL, 0])  # Describe the unnamed portal


_PLAIN = frozenset({int, UUID})  # their text needs no quoting in an array literal


def _array_literal(values: list[Any]) -> str:
    """A list as a PostgreSQL array literal. The set-based record sends ~30 arrays of up to 500
    elements per statement, so lists of one kind are written with C-level joins and replaces;
    only lists mixing strings and NULLs go element by element."""
    if len(values) == 1:  # a single record's statements: one element per array
        kind = type(values[0])
        if kind in _PLAIN:
            return "{" + str(values[0]) + "}"
        if kind is str:
            return '{"' + values[0].replace("\\", "\\\\").replace('"', '\\"') + '"}'
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        return "{" + ",".join(map(str, values)) + "}"
    if kinds == {str}:
        joined = "\x00".join(values)  # text cannot hold NUL, so it cannot be mistaken for a value's
        if joined.count("\x00") == len(values) - 1:
            return '{"' + joined.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", '","') + '"}'
    if kinds == {type(None)}:
        return "{" + ",".join(["NULL"] * len(values)) + "}"
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


_BEGIN = ("BEGIN", ())
_PARSE_UNNAMED = core.NULL_BYTE
_BIND_HEAD = core.NULL_BYTE + core.NULL_BYTE + core.H_pack(0)  # unnamed portal and statement, text params
_TEXT_RESULTS = core.H_pack(0)
_ADVANCE = (core.COMMAND_COMPLETE, core.EMPTY_QUERY_RESPONSE)
_NULL_PARAM = core.i_pack(-1)
_ci_unpack_from = struct.Struct("!ci").unpack_from


def _buffered(sock: Any) -> bytes:
    """What the socket's read buffer holds, without consuming it; if it is empty, one read from
    the network first (waiting as pg8000's reads do)."""
    try:
        chunk: bytes = sock.peek(1)
    except OSError as error:
        raise pg8000.InterfaceError("network error") from error
    if not chunk:
        raise pg8000.InterfaceError("network error")
    return chunk


def _param_text(py_types: dict[type, Any], value: Any) -> str | None:
    """A parameter's text (None for NULL): pg8000's `make_param`, with the two kinds the service
    sends most (strings, and lists as arrays) looked up first."""
    kind = type(value)
    if kind is str:
        return value
    if kind is list:
        return _array_literal(value)
    return make_param(py_types, value)


def _message(buffer: bytearray, code: bytes, payload: bytes | bytearray) -> None:
    buffer += code
    buffer += core.i_pack(len(payload) + 4)
    buffer += payload


def _parse(buffer: bytearray, statement: str, encoding: str) -> None:
    """Parse `statement` as the unnamed statement, every parameter's type left to the server."""
    _message(buffer, core.PARSE, _PARSE_UNNAMED + statement.encode(encoding) + b"\x00\x00\x00")


def _timestamptz_in(text: str) -> Any:
    """PostgreSQL's timestamptz text ("2026-11-24 06:55:27.12+00") with `fromisoformat`, ten times
    faster than pg8000's `strptime`; anything it does not take (infinity, BC, beyond year 9999)
    goes to pg8000's own converter."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return converters.timestamptz_in(text)


class PipelinedConnection(legacy.Connection):
    """pg8000's connection, with statements sent in pipelines.

    `exchange` sends several statements in one write and reads all their answers: one round trip.
    A statement whose answer nobody needs (BEGIN, a write whose effects the transaction's later
    statements or COMMIT depend on, but whose rows nobody reads) can be *queued*: it travels with
    the next statement that needs an answer, or with COMMIT. So a transaction that reads once and
    writes once costs two round trips: BEGIN + the reads, then the writes + COMMIT.
    """

    def __init__(self, user: str, **kwargs: Any) -> None:
        super().__init__(user, **kwargs)
        self.py_types[list] = _array_literal
        self.pg_types[converters.TIMESTAMPTZ] = _timestamptz_in
        self._queued: list[tuple[str, Any]] = []
        self._begin_unsent = False
        self._row_descriptions: dict[bytes, tuple[Any, Any]] = {}

    # --- lazy transactions (used by metering.db.engine.transaction) -----------------------------

    def lazy_begin(self) -> None:
        """BEGIN, sent with the first statement of the transaction."""
        if self._queued:
            raise RuntimeError("statements queued outside a transaction")
        self._queued.append(_BEGIN)
        self._begin_unsent = True

    def lazy_commit(self) -> None:
        """Queued statements and COMMIT in one round trip; nothing at all if the transaction never
        sent or queued anything (no BEGIN was sent, so there is nothing to end)."""
        if self._begin_unsent and self._queued == [_BEGIN]:
            self._queued.clear()
            self._begin_unsent = False
            return
        self._queued.append(("COMMIT", ()))
        self.exchange([])

    def lazy_rollback(self) -> None:
        """Drop what is queued; ROLLBACK only if BEGIN reached the server."""
        self._queued.clear()
        if self._begin_unsent:
            self._begin_unsent = False
            return
        super().execute_simple("ROLLBACK")

    def queue(self, statement: str, vals: Any = ()) -> None:
        """Send `statement` (with $n placeholders) with the next round trip; its rows are dropped
        and its error, if any, is raised by that round trip."""
        self._queued.append((statement, vals))

    # --- one round trip for many statements -----------------------------------------------------

    def exchange(self, statements: list[tuple[str, Any]]) -> list[core.Context]:
        """Run the queued statements, then `statements`, with one write and one Sync; returns the
        contexts of `statements`. After an error the server skips the rest up to the Sync, and the
        first error is raised here."""
        items = self._queued + statements if self._queued else statements
        self._queued = []
        self._begin_unsent = False
        encoding, py_types = self._client_encoding, self.py_types
        buffer = bytearray()
        contexts = []
        for statement, vals in items:
            contexts.append(core.Context(statement))
            _parse(buffer, statement, encoding)
            bind = bytearray(_BIND_HEAD)
            bind += core.H_pack(len(vals))
            for value in vals:
                text = _param_text(py_types, value)
                if text is None:
                    bind += _NULL_PARAM
                else:
                    encoded = text.encode(encoding)
                    bind += core.i_pack(len(encoded))
                    bind += encoded
            bind += _TEXT_RESULTS
            _message(buffer, core.BIND, bind)
            buffer += _DESCRIBE_MSG
            buffer += core.EXECUTE_MSG
        buffer += core.SYNC_MSG
        try:
            core._write(self._sock, buffer)
            core._flush(self._sock)
        except (AttributeError, ValueError) as error:  # pg8000's way of saying the socket is gone
            raise pg8000.InterfaceError("connection is closed") from error
        self._read_answers(contexts)
        for context in contexts:
            if context.error is not None:
                raise context.error
        return contexts[len(items) - len(statements) :]

    def _read_answers(self, contexts: list[core.Context]) -> None:
        """Hand each answer up to ReadyForQuery to pg8000's handler, advancing to the next
        statement's context after each CommandComplete. The messages are cut out of what the
        socket's buffer already holds (a record's ~30 answers arrive in one or two reads), where
        pg8000 reads each message's header and body with two calls and two copies; a message that
        is not buffered whole is read pg8000's way. Nothing past ReadyForQuery is consumed."""
        sock, handlers, last = self._sock, self.message_types, len(contexts) - 1
        index, code = 0, None
        while code != core.READY_FOR_QUERY:
            chunk = _buffered(sock)
            buffered = len(chunk) >= 5 and 1 + _ci_unpack_from(chunk, 0)[1] <= len(chunk)
            if not buffered:  # the next message is not buffered whole: read just it
                header = core._read(sock, 5)
                chunk = header + core._read(sock, core.ci_unpack(header)[1] - 4)
            pos, size = 0, len(chunk)
            while size - pos >= 5 and code != core.READY_FOR_QUERY:
                kind, length = _ci_unpack_from(chunk, pos)
                end = pos + 1 + length
                if end > size:
                    break
                code = kind
                handlers[code](chunk[pos + 5 : end], contexts[index])
                pos = end
                if code in _ADVANCE and index < last:
                    index += 1
            if buffered:
                sock.read(pos)  # what was handled leaves the buffer (already there: no wait)

    def handle_ROW_DESCRIPTION(self, data: bytes, context: core.Context) -> None:
        """pg8000 decodes every row description field by field; the same statement always gets
        the same bytes, so the result is kept (the service runs a few dozen statements)."""
        known = self._row_descriptions.get(data)
        if known is None:
            super().handle_ROW_DESCRIPTION(data, context)
            if len(self._row_descriptions) >= 256:
                self._row_descriptions.clear()
            self._row_descriptions[bytes(data)] = (context.columns, context.input_funcs)
            return
        context.columns, context.input_funcs = known
        if context.rows is None:
            context.rows = []

    # --- what pg8000's cursor (and so SQLAlchemy) calls -------------------------------------------

    def execute_unnamed(self, statement: str, vals: Any = (), oids: Any = (), stream: Any = None) -> Any:
        if stream is not None:  # COPY keeps pg8000's own exchange
            if self._queued:
                self.exchange([])
            return super().execute_unnamed(statement, vals=vals, oids=oids, stream=stream)
        return self.exchange([(statement, vals)])[0]

    def execute_simple(self, statement: str) -> Any:
        if self._queued:
            return self.exchange([(statement, ())])[0]
        return super().execute_simple(statement)


def _connect(user: str, **kwargs: Any) -> PipelinedConnection:
    return PipelinedConnection(user, **kwargs)


# The DBAPI module handed to SQLAlchemy's pg8000 dialect: pg8000 itself, connecting pipelined.
dbapi = types.ModuleType("pg8000_pipelined")
dbapi.__dict__.update({k: v for k, v in vars(pg8000).items() if not k.startswith("__") or k == "__version__"})
dbapi.connect = _connect  # type: ignore[attr-defined]
