"""Routines: each of the service's statements kept on the server as a PL/pgSQL function.

PostgreSQL parses and plans an unnamed statement on every execution; for a single record that
was half of the server's CPU. A named prepared statement would keep the plan, but it is session
state, and RDS Proxy pins a client to its database connection for good once it sees one. A
PL/pgSQL function keeps the parsed and planned statements of its body for the life of the server
connection, whichever client the proxy lends that connection to, and the proxy sees nothing but a
function call. So `metering migrate` installs one function per `Statement`
(`metering.db.sql.STATEMENTS`), and the driver sends `SELECT * FROM <routine>($1, ...)` instead of
the statement's text:

- The function is named after a hash of the statement's text, so code and database cannot drift
  apart: changed SQL is a new routine, installed by the migration that ships with it, and the
  routines of the code still running during a deploy stay until `drop_others` (`metering
  migrate --drop-other-routines`, once the deploy is done).
- Parameter and result types are what the server infers for the statement itself (a Describe,
  nothing run), so a routine answers with exactly the columns and types the statement would.
- Each runs with `plan_cache_mode = force_generic_plan` (a setting of the function, restored when
  it returns: no session state): PL/pgSQL would otherwise keep re-planning statements whose array
  parameters make a custom plan look cheaper. Every statement of the service looks rows up by key,
  so the generic plan is an index plan (`tests/integration/test_routines.py` checks them).
- And with `random_page_cost = 1.1` (the usual value for data in memory or on SSD; PostgreSQL's
  default 4 assumes spinning disks): a generic plan assumes an array parameter holds 10 keys, and
  at 4 ten index probes looked dearer than reading a table of a thousand rows, so a new
  deployment's small tables were scanned whole for every check and record (0.2 ms of server CPU
  each, against 0.04 ms through the index).
- It is VOLATILE and SECURITY INVOKER, so each call takes its snapshot when it starts, locks and
  writes as the statement would, and runs with the caller's privileges.
- A container that finds a routine missing (code deployed before its migration ran) sends the
  statements' text from then on (`metering.db.engine`), and says so in its log and metrics.
- Statements always fetched together (`metering.db.sql.Group`: the record's lock and reads, the
  check's reads) also get one routine for the group, which calls the members' routines: one call
  per round trip instead of one per statement.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Any

from sqlalchemy import Connection, text

from metering.db.sql import GROUPS, ROUTINE_PREFIX, STATEMENTS, Group, Statement

# The modules that define statements (all at import time, so the set is known to the migration).
STATEMENT_MODULES = ("metering.db.store", "metering.services.record")
# Settings of every routine, restored when it returns (no session state): see the module doc.
SETTINGS = "SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1"
_UNKNOWN = 705  # the pseudo-type of a parameter whose type the server could not infer
_QUOTE = "$metering$"


def statements() -> list[Statement]:
    for module in STATEMENT_MODULES:
        importlib.import_module(module)
    return sorted(STATEMENTS.values(), key=lambda s: s.routine)


def groups() -> list[Group]:
    statements()
    return sorted(GROUPS.values(), key=lambda g: g.routine)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Parameter types, and (name, type) of each result column.
type Signature = tuple[list[str], list[tuple[str, str]]]


def _signature(conn: Connection, statement: Statement) -> Signature:
    """The types the server infers for `statement`: of each parameter, and (name, type) of each
    result column."""
    driver: Any = conn.connection.driver_connection
    parameters, columns = driver.describe(statement.numbered)
    if _UNKNOWN in parameters:
        position = parameters.index(_UNKNOWN) + 1
        raise ValueError(f"{statement.routine}: the type of ${position} cannot be inferred; add a CAST")
    oids = [*parameters, *(oid for _, oid, _ in columns)]
    mods = [-1] * len(parameters) + [mod for _, _, mod in columns]
    types = (
        conn.execute(
            text(
                "SELECT format_type(t.oid, t.mod) FROM unnest(CAST(:oids AS oid[]), CAST(:mods AS int[]))"
                " WITH ORDINALITY AS t (oid, mod, n) ORDER BY t.n"
            ),
            {"oids": oids, "mods": mods},
        )
        .scalars()
        .all()
    )
    results = list(types[len(parameters) :])
    return list(types[: len(parameters)]), [
        (name, t) for (name, _, _), t in zip(columns, results, strict=True)
    ]


def _function(name: str, arguments: list[str], returns: str, body: str) -> str:
    return (
        f"CREATE FUNCTION {name}({', '.join(arguments)}) RETURNS {returns}\n"
        f"LANGUAGE plpgsql VOLATILE SECURITY INVOKER {SETTINGS}\n"
        f"AS {_QUOTE}\n#variable_conflict use_column\nBEGIN\n{body}\nEND\n{_QUOTE}"
    )


def _table(columns: list[tuple[str, str]]) -> str:
    return "TABLE (" + ", ".join(f"{_quoted(name)} {t}" for name, t in columns) + ")"


def definition(statement: Statement, signature: Signature) -> str:
    """CREATE FUNCTION for `statement`, with the types the server infers for it (`_signature`)."""
    arguments, columns = signature
    if _QUOTE in statement.numbered:
        raise ValueError(f"{statement.routine}: the statement contains {_QUOTE}")
    if columns:
        returns, body = _table(columns), f"RETURN QUERY {statement.numbered.strip()};"
    else:
        returns, body = "void", f"{statement.numbered.strip()};"
    return _function(statement.routine, arguments, returns, body)


def group_definition(group: Group, signatures: list[Signature]) -> str:
    """CREATE FUNCTION for `group`: each member's routine called in turn, with its own arguments,
    its rows placed in its own columns (`metering.db.sql.Group`). Each member sees what its own
    call would: in READ COMMITTED its statement takes a snapshot when it starts, after the members
    before it (so the reads see what the lock's previous holder committed). `signatures`: the
    members', in order."""
    if not all(columns for _, columns in signatures):
        raise ValueError(f"{group.routine}: every member of a group must return rows")
    union = [(m, name, t) for m, (_, columns) in enumerate(signatures) for name, t in columns]
    body, first = [], 1
    for m, (member, (arguments, _)) in enumerate(zip(group.statements, signatures, strict=True)):
        values = [f"x.{_quoted(name)}" if owner == m else f"CAST(NULL AS {t})" for owner, name, t in union]
        call = f"{member.routine}({', '.join(f'${n}' for n in range(first, first + len(arguments)))})"
        body.append(f"RETURN QUERY SELECT {m}, {', '.join(values)} FROM {call} AS x;")
        first += len(arguments)
    arguments = [t for member_arguments, _ in signatures for t in member_arguments]
    columns = [("#", "integer"), *((f"{m}.{name}", t) for m, name, t in union)]
    return _function(group.routine, arguments, _table(columns), "\n".join(body))


def _installed(conn: Connection) -> dict[str, tuple[str, str | None]]:
    """Every routine in the database, of any code version: name -> (signature, fingerprint)."""
    return {
        row.name: (row.signature, row.fingerprint)
        for row in conn.execute(
            text(
                "SELECT p.proname AS name, CAST(p.oid AS regprocedure)::text AS signature,"
                " obj_description(p.oid, 'pg_proc') AS fingerprint"
                " FROM pg_proc p WHERE p.proname LIKE :prefix"
            ),
            {"prefix": ROUTINE_PREFIX.replace("_", r"\_") + "%"},
        )
    }


def install(conn: Connection) -> list[str]:
    """Create every statement's routine that is missing or differs (in the caller's transaction,
    the migration's); returns the routines created. Routines of other code versions are left:
    code still running during a deploy calls them (`drop_others` removes them afterwards)."""
    existing = _installed(conn)
    created = []
    members = statements()
    signatures = {s.routine: _signature(conn, s) for s in members}  # one Describe each
    wanted = [(s.routine, definition(s, signatures[s.routine])) for s in members]
    wanted += [  # after their members
        (g.routine, group_definition(g, [signatures[s.routine] for s in g.statements])) for g in groups()
    ]
    for name, ddl in wanted:
        fingerprint = hashlib.sha256(ddl.encode()).hexdigest()
        signature, installed = existing.get(name, (None, None))
        if installed == fingerprint:
            continue
        if signature is not None:
            conn.execute(text(f"DROP FUNCTION {signature}"))
        conn.execute(text(ddl))
        conn.execute(text(f"COMMENT ON FUNCTION {name} IS '{fingerprint}'"))
        created.append(name)
    return created


def missing(error: Exception) -> bool:
    """Whether a database error says one of the routines does not exist."""
    orig = getattr(error, "orig", error)
    args = getattr(orig, "args", ())
    fields = args[0] if args and isinstance(args[0], dict) else {}
    return fields.get("C") == "42883" and ROUTINE_PREFIX in str(fields.get("M", ""))


def drop_others(conn: Connection) -> list[str]:
    """Drop the routines of other code versions (in the caller's transaction); returns their names.
    For after a deploy has finished: a container still running older code would find its routines
    missing and send its statements' text instead (correct, slower, logged)."""
    ours = {s.routine for s in statements()} | {g.routine for g in groups()}
    dropped = []
    for name, (signature, _) in sorted(_installed(conn).items()):
        if name not in ours:
            conn.execute(text(f"DROP FUNCTION {signature}"))
            dropped.append(name)
    return dropped
