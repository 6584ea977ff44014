"""Lambda SnapStart: what a restored snapshot must not carry.

With SnapStart (template.yaml's `SnapStart` parameter) Lambda runs a function's init once per
published version, snapshots the memory, and resumes every new execution environment from that
snapshot. Whatever the init left in memory is then shared by all of them, so `after_restore`
drops, before the first request of a restored environment:
- pooled sockets, to PostgreSQL (the engine) and to Redis (the reservations client): their TCP and
  TLS sessions belong to the environment that took the snapshot;
- AWS SDK clients (the RDS token signer, the dead-letter queue's SQS client) and Powertools'
  cached secret values, which hold the credentials and values resolved before the snapshot;
- the `random` module's state, which every restored environment would otherwise continue
  identically (uuid4 and `secrets` read os.urandom on every call and need nothing).
RDS IAM tokens are never cached: each new connection signs its own.

Before the snapshot, `before_snapshot` imports what the handlers' imports leave to their first
request (`FIRST_USE`: SQLAlchemy, its pg8000 dialect, pg8000, PyYAML, redis, the catalog's
models; metering.db.exc and metering.catalog say why), so that the snapshot holds them and no
restored environment pays for them. Importing them opens nothing.

The handlers import no such state at init today (no connection, no client, no fetch at import),
so the hook is what keeps that true whatever an init does. It acts only on modules already
imported: no other module can hold such state, and restoring must not import anything.

`register()` hands both hooks to the runtime's `snapshot_restore_py` (part of Lambda's Python
runtimes, absent elsewhere); `metering.observability`, which every handler imports at init, calls it.
"""

from __future__ import annotations

import importlib
import random
import sys

# imported by a handler's first request, not by its import (tests/unit/test_cold_imports.py)
FIRST_USE = (
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql.pg8000",
    "pg8000",
    "yaml",
    "redis",
    "metering.catalog.model",  # read with the catalog file (metering.catalog)
)


def before_snapshot() -> None:
    for name in FIRST_USE:
        importlib.import_module(name)


def after_restore() -> None:
    random.seed()  # from os.urandom
    if "metering.db.engine" in sys.modules:
        from metering.db.engine import reset_engine, reset_signer

        reset_engine()
        reset_signer()
    if "metering.reservations" in sys.modules:
        from metering.reservations import reset_client

        reset_client()
    if "metering.ingest" in sys.modules:
        from metering.ingest import reset_sqs_client

        reset_sqs_client()
    if "aws_lambda_powertools.utilities.parameters" in sys.modules:
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()


def register() -> bool:
    """Register `before_snapshot` and `after_restore` with the Lambda runtime; False where there is
    no such runtime."""
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
    return True
