"""The hot paths' server-side routines (migration 0003, `metering.*_v1`): created by the migration,
called by name, each statement in them reading by index, and code on a database its migration has
not reached failing at once with a message that says what to do."""

import argparse
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench import wire
from metering.db.engine import get_engine
from metering.db.migrate import head_revision
from tests.support import api
from tests.support.state import execute, query, subscribe, use_test_catalog

DB_PACKAGE = Path(__file__).resolve().parents[2] / "layers" / "metering" / "metering" / "db"
SETTINGS = ["plan_cache_mode=force_generic_plan", "random_page_cost=1.1"]


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def _called() -> set[str]:
    """Every routine the code calls: `metering.<name>(` in the data layer's modules."""
    names = set()
    for module in DB_PACKAGE.glob("*.py"):
        names |= set(re.findall(r"\bmetering\.(\w+_v\d+)\(", module.read_text()))
    return names


def _routines() -> dict[str, tuple[str, list[str]]]:
    """name -> (volatility, settings) of every function in schema metering."""
    rows = query(
        "SELECT proname, provolatile, proconfig FROM pg_proc WHERE pronamespace = 'metering'::regnamespace"
    )
    return {name: (volatility, settings) for name, volatility, settings in rows}


def test_the_migration_creates_every_routine_the_code_calls_with_its_planner_settings():
    called = _called()
    assert {
        "pair_states_v2",
        "lock_pairs_v2",
        "usage_events_v2",
        "ensure_period_v1",
        "post_usage_v2",
        "post_entries_v2",
    } <= called
    routines = _routines()
    assert called <= set(routines), called - set(routines)
    assert all(settings == SETTINGS for _, settings in routines.values()), routines
    # the check's read is one STABLE call: everything it reads comes from one snapshot
    assert routines["pair_states_v2"][0] == "s"
    # and nothing of the earlier generated routines (metering_r_<hash>) is left
    assert query("SELECT count(*) FROM pg_proc WHERE proname LIKE 'metering\\_r\\_%'") == [(0,)]


def test_the_hot_paths_send_nothing_but_calls_of_the_routines():
    subscribe("u1", "basic")
    api.record("warm", "u1", "premium_voice", 10)
    with wire.measure(get_engine()) as sent:
        assert api.check("u1", "premium_voice", 10)[0] == 200
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 200
        assert api.record("e2", "newcomer", "premium_voice", 10)[0] == 201
        assert (
            api.batch(
                [
                    {"event_id": f"b{i}", "user_id": f"u{i % 3}", "usage_type": "premium_voice", "amount": 1}
                    for i in range(9)
                ]
            )[0]
            == 200
        )
    calls = [s for s in sent.sql if s not in ("BEGIN", "COMMIT")]
    assert calls and all(
        re.fullmatch(r"SELECT (\* FROM )?metering\.\w+_v\d+\(.*\)", s, re.S) for s in calls
    ), calls


def test_a_database_whose_migration_has_not_run_fails_the_first_call_loudly(services, capsys, monkeypatch):
    """Code deployed before its migration: a 503 naming the fix at the first call, not a slow
    fallback; the error is logged and counted; once migrated, the same container serves."""
    from alembic import command

    from metering.db.engine import reset_engine
    from metering.db.migrate import _alembic_config, upgrade_to_head
    from metering.db.wire import dbapi

    admin = create_engine(services["database_url"], isolation_level="AUTOCOMMIT")
    name = "metering_behind_" + services["database_url"].rsplit("/", 1)[1][-20:]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = services["database_url"].rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url, module=dbapi)
    with engine.begin() as conn:  # the schema of the previous release: no routines yet
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    engine.dispose()
    from metering.observability import logger

    errors: list[str] = []
    monkeypatch.setattr(logger, "error", lambda message, *args, **kwargs: errors.append(message))
    saved = os.environ["DATABASE_URL"]
    os.environ["DATABASE_URL"] = url
    reset_engine()
    try:
        capsys.readouterr()
        status, body = api.check("u1", "premium_voice", 10)
        assert (status, body["error"]["code"]) == (503, "not_configured"), body
        assert "run `metering migrate`" in body["error"]["message"]
        status, body = api.record("e1", "u1", "premium_voice", 10)
        assert (status, body["error"]["code"]) == (503, "not_configured"), body
        assert errors == ["database schema is behind this code: run `metering migrate`"] * 2
        assert '"DatabaseSchemaBehind"' in capsys.readouterr().out  # the metric
        assert upgrade_to_head(url) == head_revision()
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
    finally:
        os.environ["DATABASE_URL"] = saved
        reset_engine()
        admin = create_engine(services["database_url"], isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_database_ahead_of_this_code_is_named_not_crashed_on(services, tmp_path, monkeypatch, capsys):
    """A newer release (or another checkout on the same server) migrated the database: `migrate`
    says so and exits 2, changing nothing; `metering dev` / `invoke` warn and serve."""
    from metering.db.migrate import SchemaAhead, add_arguments, run, upgrade_to_head
    from metering_dev.devserver import prepare_backends

    admin = create_engine(services["database_url"], isolation_level="AUTOCOMMIT")
    name = "metering_ahead_" + services["database_url"].rsplit("/", 1)[1][-20:]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = services["database_url"].rsplit("/", 1)[0] + "/" + name
    try:
        ahead = create_engine(url)
        with ahead.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
            conn.execute(text("INSERT INTO alembic_version VALUES ('9999_from_the_future')"))
        with pytest.raises(SchemaAhead, match="revision 9999_from_the_future, newer than this code"):
            upgrade_to_head(url)
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        capsys.readouterr()
        assert run(parser.parse_args(["--url", url])) == 2
        assert "newer release" in capsys.readouterr().err
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("REDIS_URL", services["redis_url"])
        lines = prepare_backends(tmp_path)
        assert any(line.startswith("WARNING: database is at revision 9999_from_the_future") for line in lines)
        with ahead.connect() as conn:  # nothing was changed
            assert (
                conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 1
            )
        ahead.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- every statement of every routine reads by index --------------------------------------------------


def _body_statements(source: str, arguments: list[str], declared: dict[str, str]) -> list[str]:
    """The SQL statements of a PL/pgSQL body (as this project writes them), with the function's
    parameters and the local variables they initialise replaced by $n, ready to PREPARE."""
    body = source.split("BEGIN", 1)[1].rsplit("END", 1)[0]
    lines = [
        line
        for line in body.splitlines()
        if not re.match(r"\s*(IF\b.*\bTHEN|ELSE|END IF;|#)", line) and line.strip()
    ]
    statements = []
    for chunk in "\n".join(lines).split(";"):
        sql = " ".join(chunk.split())
        if not sql or sql == "RETURN" or sql.startswith(("GET DIAGNOSTICS", "RAISE")):
            continue
        sql = re.sub(r"^RETURN QUERY ", "", sql)
        sql = re.sub(r"^PERFORM ", "SELECT ", sql)
        sql = re.sub(r"(?<!INSERT )\bINTO \w+(, \w+)* FROM\b", "FROM", sql)
        for local, parameter in declared.items():
            sql = re.sub(rf"\b{local}\b", parameter, sql)
        for position, name in enumerate(arguments, 1):
            sql = re.sub(rf"\b{name}\b", f"${position}", sql)
        statements.append(sql)
    return statements


SAMPLES = {
    "text[]": "ARRAY['u1', 'u2']",
    "bigint[]": "ARRAY[1, 2]::bigint[]",
    "uuid[]": "ARRAY[gen_random_uuid()]",
    "timestamp with time zone": "now()",
    "timestamp with time zone[]": "ARRAY[now() - interval '40 days']",
    "text": "'u1'",
    "boolean": "true",
}


def _full_scans(conn, big: set[str]) -> dict[str, list[str]]:
    """Per routine statement, the tables of `big` that its generic plan reads whole, planned with
    the settings of its routine."""
    import json

    found: dict[str, list[str]] = {}
    routines = conn.execute(
        text(
            "SELECT proname, prosrc, proargnames[1:pronargs], proconfig,"
            " ARRAY(SELECT format_type(t, NULL) FROM unnest(proargtypes) AS t) AS types"
            " FROM pg_proc WHERE pronamespace = 'metering'::regnamespace ORDER BY proname"
        )
    ).all()
    for name, source, arguments, settings, types in routines:
        declared = dict(re.findall(r"(\w+) [\w\[\]]+ := (\w+);", source.split("BEGIN", 1)[0]))
        for number, sql in enumerate(_body_statements(source, list(arguments), declared)):
            conn.rollback()
            for setting in settings:
                key, value = setting.split("=", 1)
                conn.execute(text("SELECT set_config(:k, :v, true)"), {"k": key, "v": value})
            conn.exec_driver_sql(f"PREPARE routine_plan ({', '.join(types)}) AS " + sql.replace("%", "%%"))
            values = ", ".join(SAMPLES[t] for t in types)
            (plan,) = conn.exec_driver_sql(
                f"EXPLAIN (FORMAT JSON) EXECUTE routine_plan({values})"
            ).scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan
            conn.rollback()
            conn.exec_driver_sql("DEALLOCATE ALL")  # a test session: not through a proxy
            scans = [
                node["Relation Name"]
                for node in _nodes(plan["Plan"] if "Plan" in plan else plan[0]["Plan"])
                if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in big
            ]
            if scans:
                found[f"{name} #{number}: {sql[:80]}"] = scans
    return found


def _nodes(plan):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


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


def test_the_statements_are_read_from_the_routines_bodies():
    """The test's reading of the bodies finds every statement (so the plan tests see them all)."""
    with get_engine().connect() as conn:
        source, arguments = conn.execute(
            text("SELECT prosrc, proargnames[1:pronargs] FROM pg_proc WHERE proname = 'lock_pairs_v1'")
        ).one()
    declared = dict(re.findall(r"(\w+) [\w\[\]]+ := (\w+);", source.split("BEGIN", 1)[0]))
    statements = _body_statements(source, list(arguments), declared)
    assert [s.split()[0] for s in statements] == ["WITH", "INSERT", "SELECT"], statements
    assert "p_users" not in " ".join(statements) and "$1" in statements[0]
    assert statements[2] == "SELECT * FROM metering.pair_states_v1($1, $2, $3)"


def test_on_tables_of_many_rows_every_routine_statement_reads_by_index():
    """Generic plans (force_generic_plan) do not know how many keys an array holds: on tables of
    many rows none may read a whole table."""
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


def test_on_a_new_deployments_small_tables_every_routine_statement_still_reads_by_index():
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
