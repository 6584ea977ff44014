"""`metering migrate`: bring the database to the latest schema with Alembic; idempotent. The
schema includes the hot paths' server-side routines (migration 0003 and later), so a deploy runs
its migration before its code serves: code whose routines are missing fails loudly
(`metering.db.engine`).

Migrations ship inside the package, so a migration Lambda (functions/maintenance) can run them with
nothing but the layer. Concurrent runs serialize on a transaction-scoped advisory lock (never a
session lock: that would pin an RDS Proxy connection), and all DDL runs in that one transaction.
"""

from __future__ import annotations

import argparse
import sys
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


class SchemaAhead(RuntimeError):
    """The database is at a revision this code does not know: a newer release (or another
    checkout sharing the server) migrated it. Alembic would only say it "can't locate" it."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"database is at revision {revision}, newer than this code's head {head_revision()}: "
            "it was migrated by a newer release; deploy that release (or point DATABASE_URL elsewhere)"
        )
        self.revision = revision


def upgrade_to_head(url: str | None = None) -> str:
    """Apply every pending migration; returns the revision the database is at afterwards.
    Raises SchemaAhead, changing nothing, when the database is ahead of this code."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from metering.db.engine import database_url
    from metering.db.wire import dbapi

    engine = create_engine(url or database_url(get_settings()), poolclass=NullPool, module=dbapi)
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            cfg.attributes["connection"] = conn
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None:
                try:
                    ScriptDirectory.from_config(cfg).get_revision(current)
                except CommandError:
                    raise SchemaAhead(current) from None
            command.upgrade(cfg, "head")
            revision = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return revision or ""


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="database URL (default: DATABASE_URL / DB_* settings)")


def run(args: argparse.Namespace) -> int:
    try:
        revision = upgrade_to_head(args.url)
    except SchemaAhead as exc:
        print(f"metering migrate: {exc}", file=sys.stderr)
        return 2
    print(f"database at revision {revision} (head {head_revision()})")
    return 0
