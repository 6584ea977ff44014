"""A database of the previous release (revision 0004) with live data, migrated to the latest
schema: every balance and counter is kept, the journal is numbered with its running balances,
`reconcile` is clean, and the previous release's writes (the v1 routines, still called while a
deploy rolls out) keep writing complete rows."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from metering.db.engine import reset_engine
from metering.db.migrate import _alembic_config, head_revision, upgrade_to_head
from metering.db.wire import dbapi
from metering.services.reconcile import reconcile
from tests.support import api
from tests.support.state import use_test_catalog

USERS = [f"user-{i}" for i in range(12)]
TYPES = ["premium_voice", "ocr_tokens", "server_kokoro"]


@pytest.fixture
def old_database(services, clean):
    """A private database at revision 0004, DATABASE_URL pointing at it for the test."""
    from alembic import command

    admin = create_engine(services["database_url"], isolation_level="AUTOCOMMIT")
    name = "metering_0004_" + services["database_url"].rsplit("/", 1)[1][-20:]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = services["database_url"].rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url, module=dbapi)
    with engine.begin() as conn:
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    saved = os.environ["DATABASE_URL"]
    os.environ["DATABASE_URL"] = url
    reset_engine()
    use_test_catalog()
    try:
        yield engine
    finally:
        engine.dispose()
        os.environ["DATABASE_URL"] = saved
        reset_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _populate(conn) -> None:
    """Usage, adjustments and rollovers written the way release 0004 wrote them: through its
    routines (lock, period, journaled write), so the rows are exactly what it left behind."""
    rng = random.Random(5)
    now = datetime.now(UTC)
    months = [(now - timedelta(days=60 - 30 * k), now - timedelta(days=30 - 30 * k)) for k in range(3)]
    for user in USERS:
        for usage_type in TYPES:
            for start, end in months:
                conn.execute(
                    text("SELECT metering.lock_pairs_v1(ARRAY[:u], ARRAY[:t], :now, false)"),
                    {"u": user, "t": usage_type, "now": now},
                )
                period = conn.execute(
                    text(
                        "SELECT period_id FROM metering.ensure_period_v1(:u, :s, :e, 'basic', 'subscription', NULL)"
                    ),
                    {"u": user, "s": start, "e": end},
                ).scalar()
                for n in range(rng.randint(1, 4)):
                    used, rollover = rng.randint(1, 900), -rng.randint(0, 50)
                    event = f"{user}-{usage_type}-{start:%m%d}-{n}"
                    accounts, deltas = ["used"], [used]
                    if rollover:
                        accounts.append("rollover")
                        deltas.append(rollover)
                    conn.execute(
                        text(
                            "SELECT metering.post_usage_v1(:at, ARRAY[:e], ARRAY[:u], ARRAY[:t], ARRAY[:a]::bigint[],"
                            " ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[],"
                            " ARRAY[:p]::uuid[], ARRAY[:used]::bigint[], ARRAY[:fr]::bigint[], ARRAY[0]::bigint[],"
                            " ARRAY[0]::bigint[], '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',"
                            " :bu, :bt, :br, ARRAY[0]::bigint[], ARRAY[:p]::uuid[], ARRAY[:t], ARRAY[:used]::bigint[],"
                            " :ju, :jt, :ja, :jp, :jd, :jr)"
                        ),
                        {
                            "at": start + timedelta(hours=n + 1),
                            "e": event,
                            "u": user,
                            "t": usage_type,
                            "a": used - rollover,
                            "p": period,
                            "used": used,
                            "fr": -rollover,
                            "bu": [user] if rollover else [],
                            "bt": [usage_type] if rollover else [],
                            "br": [rollover] if rollover else [],
                            "ju": [user] * len(deltas),
                            "jt": [usage_type] * len(deltas),
                            "ja": accounts,
                            "jp": [period, None][: len(deltas)],
                            "jd": deltas,
                            "jr": [event] * len(deltas),
                        },
                    )
                if usage_type != "server_kokoro":
                    topup = rng.randint(1, 5000)
                    conn.execute(
                        text(
                            "SELECT metering.post_entries_v1('topup', ARRAY[:u], ARRAY[:t], ARRAY[0]::bigint[],"
                            " ARRAY[:d]::bigint[], '{}', '{}', '{}', ARRAY[:u], ARRAY[:t], ARRAY['purchased'],"
                            " ARRAY[NULL]::uuid[], ARRAY[:d]::bigint[], ARRAY[:r])"
                        ),
                        {"u": user, "t": usage_type, "d": topup, "r": f"cs-{user}-{usage_type}-{start:%m%d}"},
                    )


def _balances(conn):
    pools = conn.execute(
        text("SELECT user_id, usage_type, rollover, purchased FROM balances ORDER BY 1, 2")
    ).all()
    counters = conn.execute(
        text(
            "SELECT p.user_id, p.period_start, u.usage_type, u.used FROM period_usage u"
            " JOIN periods p USING (period_id) ORDER BY 1, 2, 3"
        )
    ).all()
    return [tuple(r) for r in pools], [tuple(r) for r in counters]


def test_a_populated_database_keeps_every_balance_through_the_migration(old_database):
    with old_database.begin() as conn:
        _populate(conn)
    with old_database.connect() as conn:
        before = _balances(conn)
        journal_rows = conn.execute(text("SELECT count(*) FROM journal")).scalar()
        drift = conn.execute(  # the old invariant held before
            text(
                "SELECT count(*) FROM balances b LEFT JOIN (SELECT user_id, usage_type,"
                " sum(delta) FILTER (WHERE account = 'rollover') AS r,"
                " sum(delta) FILTER (WHERE account = 'purchased') AS p FROM journal GROUP BY 1, 2) j"
                " USING (user_id, usage_type) WHERE b.rollover <> coalesce(j.r, 0) OR b.purchased <> coalesce(j.p, 0)"
            )
        ).scalar()
    assert journal_rows > 300 and drift == 0

    assert upgrade_to_head() == head_revision()

    with old_database.connect() as conn:
        assert _balances(conn) == before
        assert (
            conn.execute(
                text("SELECT count(*) FROM journal WHERE seq IS NULL OR balance_after IS NULL")
            ).scalar()
            == 0
        )
        # each pair numbered 1..n, and its counter at n
        assert (
            conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT user_id, usage_type, count(*) AS n, max(seq) AS m FROM journal"
                    " GROUP BY 1, 2) j JOIN balances b USING (user_id, usage_type) WHERE j.n <> j.m OR b.seq <> j.n"
                )
            ).scalar()
            == 0
        )
    report = reconcile()  # now also balance_after, positions and grants
    assert report.clean, str(report)

    # the history of a migrated user ends at the balance the summary shows
    user = USERS[3]
    entries, cursor = [], None
    while True:
        status, body = api.read("ledger", user, limit="50", **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        entries += body["entries"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    with old_database.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM journal WHERE user_id = :u"), {"u": user}).scalar()
    assert len(entries) == len({e["id"] for e in entries}) == rows
    summary = api.read("summary", user)[1]["usage_types"]["ocr_tokens"]
    newest_purchased = next(
        e for e in entries if e["usage_type"] == "ocr_tokens" and e["pool"] == "purchased"
    )
    assert newest_purchased["balance_after"] == summary["purchased"]

    # the previous release's write, still called during the deploy, writes complete rows
    with old_database.begin() as conn:
        conn.execute(
            text("SELECT metering.lock_pairs_v1(ARRAY[:u], ARRAY['ocr_tokens'], now(), false)"), {"u": user}
        )
        conn.execute(
            text(
                "SELECT metering.post_entries_v1('adjustment', ARRAY[:u], ARRAY['ocr_tokens'], ARRAY[0]::bigint[],"
                " ARRAY[7]::bigint[], '{}', '{}', '{}', ARRAY[:u], ARRAY['ocr_tokens'], ARRAY['purchased'],"
                " ARRAY[NULL]::uuid[], ARRAY[7]::bigint[], ARRAY['old-code'])"
            ),
            {"u": user},
        )
    assert api.read("ledger", user, limit="1")[1]["entries"][0] | {"id": None, "at": None} == {
        "id": None,
        "at": None,
        "usage_type": "ocr_tokens",
        "pool": "purchased",
        "delta": 7,
        "balance_after": summary["purchased"] + 7,
        "reason": "adjustment",
        "ref": "old-code",
    }
    # and the new code records on the migrated data
    assert api.record("after-migration", user, "ocr_tokens", 10)[0] == 201
    assert reconcile().clean
