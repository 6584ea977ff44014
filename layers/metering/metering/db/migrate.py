"""`metering migrate`: bring the database to the latest schema with Alembic, then install the
routines of this code version's statements (`metering.db.routines`); idempotent. With
`--drop-other-routines`, also drop the routines older code versions installed.

Migrations ship inside the package, so a migration Lambda (functions/maintenance) can run them with
nothing but the layer. Concurrent runs serialize on a transaction-scoped advisory lock (never a
session lock: that would pin an RDS Proxy connection), and all DDL runs in that one transaction.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from metering.config import get_settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
LOCK_KEY = 0x6D65746572  # "meter"


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@dataclass(frozen=True)
class Migration:
    revision: str  # the revision the database is at afterwards
    dropped_routines: list[str]  # routines of other code versions dropped (when asked to)


def upgrade_to_head(url: str | None = None) -> str:
    """Apply every pending migration; returns the revision the database is at afterwards."""
    return migrate(url).revision


def migrate(url: str | None = None, *, drop_other_routines: bool = False) -> Migration:
    """Apply every pending migration and install this code version's routines; with
    `drop_other_routines`, also drop those of other code versions (`routines.drop_others`), in the
    same transaction."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    from metering.db import routines
    from metering.db.engine import database_url
    from metering.db.wire import dbapi

    engine = create_engine(url or database_url(get_settings()), poolclass=NullPool, module=dbapi)
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            revision = MigrationContext.configure(conn).get_current_revision()
            routines.install(conn)  # the statements of this code version, on the schema just made
            dropped = routines.drop_others(conn) if drop_other_routines else []
    finally:
        engine.dispose()
    return Migration(revision or "", dropped)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="database URL (default: DATABASE_URL / DB_* settings)")
    parser.add_argument(
        "--drop-other-routines",
        action="store_true",
        help="also drop the routines of other code versions: once a deploy has finished (a container "
        "still running older code would send its statements' text instead)",
    )


def run(args: argparse.Namespace) -> int:
    done = migrate(args.url, drop_other_routines=args.drop_other_routines)
    print(f"database at revision {done.revision} (head {head_revision()})")
    if args.drop_other_routines:
        print(f"dropped {len(done.dropped_routines)} routines of other code versions")
    return 0
