"""The statements' routines (metering.db.routines): installed by the migration, called instead of
the statements' text, answering exactly as the statements do, planned with index plans, and a
database without them still served (by the statements' text)."""

import importlib
import json
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from metering.db import routines, sql, store
from metering.db.engine import get_engine, transaction
from metering.db.migrate import upgrade_to_head
from metering.db.sql import Statement, fetch
from metering.db.wire import PipelinedConnection, dbapi
from tests.support import api
from tests.support.state import execute, query, subscribe, use_test_catalog


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()
    yield
    sql.use_routines(True)


def _module_statements() -> set[str]:
    """Every Statement held by a module of STATEMENT_MODULES (directly or by a store.Writes)."""
    found = set()
    for name in routines.STATEMENT_MODULES:
        for value in vars(importlib.import_module(name)).values():
            statement = value.statement if isinstance(value, store.Writes) else value
            if isinstance(statement, Statement):
                found.add(statement.routine)
    return found


def _installed() -> dict[str, list[str]]:
    rows = query("SELECT proname, proconfig FROM pg_proc WHERE proname LIKE 'metering\\_r\\_%'")
    return dict(rows)


def test_every_statement_of_the_service_is_a_routine_the_migration_installs(services):
    statements = {s.routine for s in routines.statements()}
    assert len(statements) >= 10
    assert "" not in _module_statements()  # no statement of the service without its routine
    assert _module_statements() <= statements
    installed = _installed()
    groups = {g.routine for g in routines.groups()}
    assert len(groups) == 3
    assert statements | groups <= set(installed)
    settings = ["plan_cache_mode=force_generic_plan", "random_page_cost=1.1"]
    assert all(installed[name] == settings for name in statements | groups)
    # idempotent: a second migration finds every routine as it should be and creates none
    engine = create_engine(services["database_url"], module=dbapi)
    with engine.begin() as conn:
        assert routines.install(conn) == []
    engine.dispose()


def test_a_changed_routine_is_replaced_by_the_next_migration(services):
    name = store._LOCK.routine
    execute(f"DROP FUNCTION {name}")
    execute(f"CREATE FUNCTION {name}(text[], text[]) RETURNS int LANGUAGE sql AS 'SELECT 1'")
    upgrade_to_head(services["database_url"])
    (returns,) = query("SELECT pg_get_function_result(oid) FROM pg_proc WHERE proname = :n", n=name)[0]
    assert returns.startswith("TABLE(user_id text, usage_type text, rollover bigint")


def _sent(monkeypatch) -> list[str]:
    statements: list[str] = []
    real = PipelinedConnection.exchange

    def exchange(self, items):
        statements.extend(s for s, _ in self._queued + items)
        return real(self, items)

    monkeypatch.setattr(PipelinedConnection, "exchange", exchange)
    return statements


def test_check_and_record_send_one_routine_call_per_round_trip(monkeypatch):
    """The record's lock and reads are one call (their group's routine), its write another; the
    check's reads one call; a batch the same. Nothing but routine calls, BEGIN and COMMIT."""
    from metering.services import record

    subscribe("u1", "basic")
    api.record("warm", "u1", "premium_voice", 10)
    sent = _sent(monkeypatch)

    def calls() -> list[str]:
        out = [s for s in sent if not s.startswith(("BEGIN", "COMMIT"))]
        sent.clear()
        return out

    write = record._USAGE_WRITES.statement.call
    assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
    assert calls() == [
        sql.GROUPS[(store._LOCK, store._SUBSCRIPTIONS, store._PERIODS, store._EVENTS)].call,
        write,
    ]
    assert api.check("u1", "premium_voice", 10)[1]["allowed"]
    assert calls() == [sql.GROUPS[(store._SUBSCRIPTIONS, store._PERIODS, store._BALANCES)].call]
    assert (
        api.batch(
            [
                {"event_id": f"b{i}", "user_id": f"u{i}", "usage_type": "ocr_tokens", "amount": 1}
                for i in range(5)
            ]
        )[0]
        == 200
    )
    free = sql.GROUPS[(store._LOCK_FREE, store._SUBSCRIPTIONS, store._PERIODS, store._EVENTS)].call
    batch = calls()
    assert batch[0] == free and write in batch
    assert all(s.startswith("SELECT * FROM metering_r_") for s in batch), batch
    # more pairs than GROUPED_PAIRS: one call per statement (the group's rows would be wide)
    many = store.GROUPED_PAIRS + 1
    events = [
        {"event_id": f"m{i}", "user_id": f"m{i}", "usage_type": "ocr_tokens", "amount": 1}
        for i in range(many)
    ]
    assert api.batch(events)[0] == 200
    separate = [store._LOCK_FREE.call, store._SUBSCRIPTIONS.call, store._PERIODS.call, store._EVENTS.call]
    assert calls()[:4] == separate


def test_a_group_answers_with_each_members_rows_and_types(monkeypatch):
    """A group's one call gives each member exactly the rows, columns and Python types of the
    member's own statement (its rows carry NULL in every other member's columns)."""
    subscribe("u1", "basic")
    for i in range(3):
        assert api.record(f"e{i}", "u1", "premium_voice", 10 + i, details={"voice_slug": "aria"})[0] == 201
    api.record("n1", "u2", "ocr_tokens", 1)  # a user without a subscription
    now = datetime.now(UTC)
    state = {"users": ["u1", "u2", "nobody"], "types": ["premium_voice", "ocr_tokens"], "now": now}
    keys = {"users": ["u1", "u2", "nobody"], "types": ["premium_voice", "ocr_tokens", "ocr_tokens"]}
    events = {"ids": ["e0", "e1", "e2", "n1", "missing"]}
    group = (store._LOCK, store._SUBSCRIPTIONS, store._PERIODS, store._EVENTS)
    assert group in sql.GROUPS

    def answers() -> list[list]:
        with transaction() as conn:
            rows = fetch(conn, (group[0], keys), (group[1], state), (group[2], state), (group[3], events))
        return [
            sorted((r._replace(version=0) if hasattr(r, "version") else r) for r in member) for member in rows
        ]

    sent = _sent(monkeypatch)
    by_group = answers()
    assert [s for s in sent if s.startswith("SELECT")] == [sql.GROUPS[group].call]
    sql.use_routines(False)
    by_text = answers()
    assert by_group == by_text
    assert [len(rows) for rows in by_group] == [3, 1, 2, 4]
    for member_group, member_text in zip(by_group, by_text, strict=True):
        assert [r._fields for r in member_group] == [r._fields for r in member_text]
        assert [[type(v) for v in r] for r in member_group] == [[type(v) for v in r] for r in member_text]


def test_a_routine_answers_with_the_rows_and_types_of_its_statement():
    subscribe("u1", "basic")
    for i in range(3):
        assert api.record(f"e{i}", "u1", "premium_voice", 10 + i, details={"voice_slug": "aria"})[0] == 201
    now = datetime.now(UTC)
    params = {"users": ["u1", "nobody"], "types": ["premium_voice", "ocr_tokens"], "now": now}
    reads = [
        (store._SUBSCRIPTIONS, params),
        (store._PERIODS, params),
        (store._BALANCES, params),
        (store._EVENTS, {"ids": ["e0", "e1", "e2", "missing"]}),
    ]

    def answers():
        with get_engine().connect() as conn:
            return [sorted(rows) for rows in fetch(conn, *reads)]

    by_routine = answers()
    sql.use_routines(False)
    by_text = answers()
    assert by_routine == by_text
    assert [len(rows) for rows in by_routine] == [1, 1, 1, 3]
    assert [type(v) for v in by_routine[1][0]] == [type(v) for v in by_text[1][0]]  # uuid, datetimes, int
    # a write: the lock answers the same way, and bumps the version either way
    with transaction() as conn:
        (locked,) = fetch(conn, (store._LOCK, {"users": ["u1"], "types": ["premium_voice"]}))
    sql.use_routines(True)
    with transaction() as conn:
        (again,) = fetch(conn, (store._LOCK, {"users": ["u1"], "types": ["premium_voice"]}))
    assert [r._replace(version=0) for r in locked] == [r._replace(version=0) for r in again]
    assert again[0].version == locked[0].version + 1


def test_a_database_without_the_routines_is_served_by_the_statements_text(services, capsys, monkeypatch):
    from metering.observability import logger

    errors: list[str] = []
    monkeypatch.setattr(logger, "error", lambda message, *a, **k: errors.append(message))
    subscribe("u1", "basic")
    execute(
        "DO $$ DECLARE f regprocedure; BEGIN FOR f IN SELECT oid FROM pg_proc WHERE proname LIKE 'metering\\_r\\_%'"
        " LOOP EXECUTE 'DROP FUNCTION ' || f; END LOOP; END $$"
    )
    try:
        assert sql.routines_in_use()
        status, body = api.record("e1", "u1", "premium_voice", 10)  # the first call finds them missing
        assert status == 201 and body["recorded"], body
        assert not sql.routines_in_use()
        assert api.check("u1", "premium_voice", 10)[1]["allowed"]
        assert api.record("e2", "u1", "premium_voice", 5)[0] == 201
        assert query("SELECT count(*), sum(amount) FROM usage_events")[0] == (2, 15)
        assert len(errors) == 1 and errors[0].startswith("database routines missing"), errors
        assert '"DatabaseRoutinesMissing"' in capsys.readouterr().out  # the metric, in the EMF blob
        sent = _sent(monkeypatch)
        assert api.record("e3", "u1", "premium_voice", 1)[0] == 201
        assert not any("metering_r_" in s for s in sent)  # no new attempt for a while
    finally:
        upgrade_to_head(services["database_url"])
    # a minute later the container tries them again, and finds them (the migration has run)
    later = time.monotonic() + sql.ROUTINES_RETRY_S + 1
    monkeypatch.setattr(sql, "_clock", lambda: later)
    sent.clear()
    assert api.record("e4", "u1", "premium_voice", 1)[0] == 201
    assert sql.routines_in_use() and any("metering_r_" in s for s in sent)
    assert len(errors) == 1


def test_a_database_with_its_statements_routines_but_not_the_groups_is_served_too(services, monkeypatch):
    """The deploy that introduces a group, before its migration: the members' routines exist, the
    group's does not. The record still lands, by the statements' text, and after the migration
    the group's routine is called."""
    subscribe("u1", "basic")
    group = sql.GROUPS[(store._LOCK, store._SUBSCRIPTIONS, store._PERIODS, store._EVENTS)]
    execute(f"DROP FUNCTION {group.routine}")
    try:
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
        assert not sql.routines_in_use()
        assert query("SELECT count(*) FROM usage_events") == [(1,)]
    finally:
        upgrade_to_head(services["database_url"])
    sql.use_routines(True)
    sent = _sent(monkeypatch)
    assert api.record("e2", "u1", "premium_voice", 10)[0] == 201
    assert group.call in sent


SAMPLES = {
    "text": "'a'",
    "text[]": "'{a}'",
    "bigint": "1",
    "bigint[]": "'{1}'",
    "uuid": "'00000000-0000-0000-0000-000000000000'",
    "uuid[]": "'{00000000-0000-0000-0000-000000000000}'",
    "timestamp with time zone": "now()",
}


def _nodes(plan):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_the_generic_plan_of_every_routine_looks_rows_up_by_index():
    """The routines run with plan_cache_mode = force_generic_plan: on tables of many rows, no plan
    may read a whole table (a generic plan does not know how many keys an array holds)."""
    n = 5000
    execute(
        "INSERT INTO accounts (user_id, current_subscription_id) SELECT 'x' || g, 'sub_x' || g"
        " FROM generate_series(1, :n) g",
        n=n,
    )
    execute(
        "INSERT INTO subscriptions (subscription_id, user_id, plan_id, status, stripe_status, created,"
        " snapshot_created, status_created) SELECT 'sub_x' || g, 'x' || g, 'basic', 'active', 'active', now(), 0, 0"
        " FROM generate_series(1, :n) g",
        n=n,
    )
    for start in range(0, n, 500):
        events = [
            {
                "event_id": f"x{i}",
                "user_id": f"x{i}",
                "usage_type": ("premium_voice", "server_kokoro")[i % 2],  # debt, and a plain counter
                "amount": 1,
                "details": {"voice_slug": "aria"},
            }
            for i in range(start, start + 500)
        ]
        assert api.batch(events)[0] == 200
    # counters are small rows: a real deployment has many more of them than of anything else
    execute(
        "INSERT INTO periods (user_id, period_start, period_end, plan_id, kind)"
        " SELECT 'y' || g, now() - interval '1 day', now() + interval '29 days', 'free', 'calendar'"
        " FROM generate_series(1, 50000) g"
    )
    execute(
        "INSERT INTO period_usage (period_id, usage_type, used) SELECT period_id, 'ocr_tokens', 1 FROM periods"
    )
    execute("ANALYZE")
    engine = create_engine(get_engine().url)
    with engine.connect() as conn:
        big = _tables_of_at_least(conn, 1000)
        assert {
            "accounts",
            "subscriptions",
            "balances",
            "periods",
            "period_usage",
            "usage_events",
            "journal",
        } <= big
        assert _full_scans(conn, big) == {}
    engine.dispose()


def test_on_a_new_deployments_small_tables_the_routines_still_look_rows_up_by_index():
    """A thousand users with one event each: tables of a few pages, which PostgreSQL's default
    random_page_cost (4) would read whole rather than probe an index for the 10 keys a generic
    plan assumes; the routines' random_page_cost = 1.1 keeps every lookup on its index."""
    users = [f"s{i}" for i in range(1000)]
    for start in range(0, len(users), 500):
        events = [
            {"event_id": f"s{user}", "user_id": user, "usage_type": "premium_voice", "amount": 1}
            for user in users[start : start + 500]
        ]
        assert api.batch(events)[0] == 200
    execute("ANALYZE")
    engine = create_engine(get_engine().url)
    with engine.connect() as conn:
        big = _tables_of_at_least(conn, 1000)
        assert {"balances", "periods", "usage_events", "journal", "lifetime_stats"} <= big
        assert _full_scans(conn, big) == {}
    engine.dispose()


def _tables_of_at_least(conn, rows: int) -> set[str]:
    return {
        name
        for name, tuples in conn.execute(
            text(
                "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            )
        )
        if tuples >= rows
    }


def _full_scans(conn, big: set[str]) -> dict[str, list[str]]:
    """Per statement, the tables of `big` that its generic plan reads whole, planned with the
    settings its routine runs with (from the catalog)."""
    found = {}
    for statement in routines.statements():
        conn.rollback()
        arguments, settings = conn.execute(
            text("SELECT pg_get_function_identity_arguments(oid), proconfig FROM pg_proc WHERE proname = :n"),
            {"n": statement.routine},
        ).one()
        for setting in settings:
            name, value = setting.split("=", 1)
            conn.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
        values = ", ".join(SAMPLES[a.strip()] for a in arguments.split(",") if a.strip())
        conn.exec_driver_sql("PREPARE routine_plan AS " + statement.numbered.replace("%", "%%"))
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE routine_plan({values})").scalar_one()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        conn.rollback()
        conn.exec_driver_sql("DEALLOCATE routine_plan")  # a test session: not through a proxy
        full_scans = [
            node["Relation Name"]
            for node in _nodes(plan["Plan"] if "Plan" in plan else plan[0]["Plan"])
            if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in big
        ]
        if full_scans:
            found[statement.text] = full_scans
    return found


def _stale_routines() -> list[str]:
    """Routines as an older code version would have left them (other hashes), and a function of
    the operator's own whose name merely starts like ours."""
    old = [f"{sql.ROUTINE_PREFIX}{n:020x}" for n in (1, 2)]
    execute(f"CREATE FUNCTION {old[0]}(text) RETURNS int LANGUAGE sql AS 'SELECT 1'")
    execute(f"CREATE FUNCTION {old[1]}(bigint[], uuid) RETURNS void LANGUAGE plpgsql AS 'BEGIN END'")
    execute("CREATE OR REPLACE FUNCTION metering_rollup(int) RETURNS int LANGUAGE sql AS 'SELECT 1'")
    return old


def test_routines_of_other_code_versions_stay_until_dropped_once_the_deploy_is_done(services, monkeypatch):
    from metering.db.migrate import migrate

    subscribe("u1", "basic")
    old = _stale_routines()
    ours = {s.routine for s in routines.statements()} | {g.routine for g in routines.groups()}
    try:
        assert migrate(services["database_url"]).dropped_routines == []  # a deploy may still run them
        assert set(old) <= set(_installed())
        done = migrate(services["database_url"], drop_other_routines=True)
        assert done.dropped_routines == old
        assert set(_installed()) == ours
        assert query("SELECT count(*) FROM pg_proc WHERE proname = 'metering_rollup'") == [(1,)]
        assert migrate(services["database_url"], drop_other_routines=True).dropped_routines == []
        sent = _sent(monkeypatch)
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
        # this version's routines still serve: every statement sent is BEGIN, COMMIT or a call
        assert sql.routines_in_use() and sent, sent
        assert all(s in ("BEGIN", "COMMIT") or s.startswith("SELECT * FROM metering_r_") for s in sent), sent
    finally:
        execute("DROP FUNCTION IF EXISTS metering_rollup(int)")


def test_migrate_drops_other_versions_routines_from_the_command_line_and_the_maintenance_function(services):
    from pathlib import Path

    from metering.devtools.context import make_context
    from metering.devtools.template import functions, load_handler
    from tests.support.cli import metering

    _stale_routines()
    try:
        done = metering("migrate", "--drop-other-routines", env={"DATABASE_URL": services["database_url"]})
        assert done.returncode == 0, done.stderr
        assert "dropped 2 routines of other code versions" in done.stdout, done.stdout
        old = _stale_routines()  # again, for the maintenance function
        template = Path(__file__).resolve().parents[2] / "template.yaml"
        maintenance = load_handler(functions(template)["MaintenanceFunction"])
        context = make_context("MaintenanceFunction")
        result = maintenance({"action": "migrate"}, context)
        assert result["dropped_routines"] == 0 and set(old) <= set(_installed())
        with pytest.raises(ValueError, match="drop_other_routines must be true or false"):
            maintenance({"action": "migrate", "drop_other_routines": "yes"}, context)
        assert set(old) <= set(_installed())  # nothing ran
        result = maintenance({"action": "migrate", "drop_other_routines": True}, context)
        assert result["dropped_routines"] == 2, result
    finally:
        execute("DROP FUNCTION IF EXISTS metering_rollup(int)")
