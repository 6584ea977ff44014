"""One engine per container, one connection per invocation, no session state that pins RDS Proxy.

The engine runs in AUTOCOMMIT mode, which pg8000 implements client-side: a read is one statement,
one round trip, with no BEGIN/COMMIT around it, and SQLAlchemy never has to reset the isolation
level with `SET SESSION CHARACTERISTICS` (which would pin the proxy connection). Writes use
`transaction()`, which sends BEGIN/COMMIT itself. Instead of pinging on every checkout, a pooled
connection is pinged only after it sat idle (a frozen Lambda may find its socket closed by the
proxy); a connection that dies mid-invocation is retried once by `run_in_transaction`. The driver
is pg8000 with pipelined statements (`metering.db.wire`): one round trip per statement.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

from metering.config import ConfigurationError, Settings, get_settings
from metering.db import exc
from metering.errors import NotConfigured, Unavailable

if TYPE_CHECKING:  # SQLAlchemy is imported by the first `get_engine()` (metering.db.exc says why)
    from sqlalchemy import URL, Connection, Engine

# SQLSTATEs after which a whole transaction may simply run again.
# serialization_failure, deadlock_detected, and unique_violation: every insert of this service
# follows a read that found the key absent, so a violation means a concurrent transaction got in
# between, and running again reads it
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})
# query_canceled (statement_timeout), lock_not_available (lock_timeout): not retried here
TOO_SLOW_SQLSTATES = frozenset({"57014", "55P03"})
# undefined_function, invalid_schema_name: naming the schema of the routines the migrations create
SCHEMA_BEHIND_SQLSTATES = frozenset({"42883", "3F000"})
ROUTINE_SCHEMA = "metering"


class Retry(Exception):
    """Raised by the work of `run_in_transaction` when what it read is no longer true (a
    concurrent transaction got in between): roll back and run the whole work again."""


def database_url(settings: Settings) -> str | URL:
    if settings.database_url:
        return settings.database_url
    if settings.db_host:
        from sqlalchemy import URL

        return URL.create(
            "postgresql+pg8000",
            username=settings.db_user,
            host=settings.db_host,
            port=settings.db_port,
            database=settings.db_name,
        )
    raise ConfigurationError(
        "no database configured: set DATABASE_URL, or DB_HOST with DB_IAM_AUTH/DB_SECRET_ARN"
    )


def build_engine(settings: Settings) -> Engine:
    import ssl

    from sqlalchemy import create_engine

    from metering.db.wire import dbapi

    url = database_url(settings)
    connect_args: dict[str, Any] = {"timeout": settings.db_timeout_s}
    aws = not settings.database_url
    if aws and settings.db_tls:
        connect_args["ssl_context"] = ssl.create_default_context()
    engine = create_engine(
        url,
        module=dbapi,  # pg8000, one round trip per statement (metering.db.wire)
        isolation_level="AUTOCOMMIT",
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_timeout_s,
        pool_recycle=1700,  # below RDS Proxy's default 1800 s idle client timeout
        pool_pre_ping=False,
        connect_args=connect_args,
    )
    _install_idle_ping(engine, settings.db_ping_after_idle_s)
    if aws and settings.db_iam_auth:
        _install_iam_token(engine, settings)
    elif aws and settings.db_secret_arn:
        _install_secret_credentials(engine, settings.db_secret_arn)
    return engine


def _install_idle_ping(engine: Engine, idle_s: float) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _discard_if_dead(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        # raising DisconnectionError makes the pool discard this connection and open a fresh one
        if _hung_up(dbapi_conn):
            raise exc.DisconnectionError("the server closed this pooled connection")
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:  # long idle: a proxy or NAT may have dropped it without a word
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as error:
            raise exc.DisconnectionError(str(error)) from error


def _hung_up(dbapi_conn: Any) -> bool:
    """An idle connection has nothing to read; if its socket is readable, the server has said
    goodbye (a restart or an administrator's terminate) or closed it. Costs no round trip."""
    sock = getattr(dbapi_conn, "_usock", None)
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _install_iam_token(engine: Engine, settings: Settings) -> None:
    """A fresh RDS IAM token (valid 15 min) for every physical connection, never at import."""
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _token(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = _rds_client(settings.aws_region).generate_db_auth_token(
            DBHostname=settings.db_host, Port=settings.db_port, DBUsername=settings.db_user
        )


def _install_secret_credentials(engine: Engine, secret_arn: str) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _credentials(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(secret_arn, transform="json", max_age=300)
        if not isinstance(secret, dict) or "password" not in secret:
            raise ConfigurationError("DB_SECRET_ARN: secret must be JSON with username and password")
        cparams["user"] = secret.get("username", cparams.get("user"))
        cparams["password"] = secret["password"]


@lru_cache(maxsize=4)
def _rds_client(region: str | None) -> Any:
    import boto3

    return boto3.client("rds", region_name=region)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return build_engine(get_settings())


def reset_engine() -> None:
    """Close the cached engine's pooled connections and forget it: for tests that change
    DATABASE_URL, and for an environment restored from a SnapStart snapshot (`metering.snapstart`)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()


def reset_signer() -> None:
    """Forget the RDS token signer's client and the credentials it resolved (`metering.snapstart`)."""
    _rds_client.cache_clear()


def run_read[T](work: Callable[[Connection], T], *, attempts: int = 2) -> T:
    """Run read-only `work` on an autocommit connection (one round trip per statement), once more
    on a fresh connection if the pooled one died unseen (e.g. the server restarted)."""
    return _attempts(lambda: get_engine().connect(), work, attempts, retry_on=_is_disconnect)


@contextmanager
def transaction() -> Iterator[Connection]:
    """One transaction on one pooled connection. BEGIN travels with the transaction's first
    statement, COMMIT with its queued writes (`metering.db.wire`), so reading then writing costs two
    round trips. On error: ROLLBACK, or discard the connection if even that fails."""
    from metering.db.sql import translated

    with get_engine().connect() as conn:
        driver: Any = conn.connection.driver_connection
        try:
            driver.lazy_begin()
            try:
                yield conn
                try:
                    driver.lazy_commit()
                except OSError:
                    raise
                except Exception as error:
                    raise translated(error, "COMMIT") from error
            except BaseException:
                try:  # also after a failed COMMIT round trip: a queued write's error skipped COMMIT
                    driver.lazy_rollback()
                except Exception:
                    conn.invalidate()
                raise
        except exc.DBAPIError as error:
            if _is_disconnect(error) and not conn.invalidated:
                conn.invalidate()  # never hand a dead connection back to the pool
            raise


def run_in_transaction[T](work: Callable[[Connection], T], *, attempts: int = 3) -> T:
    """Run `work` in one transaction, again from the start after a deadlock, a serialization
    failure, a lost connection or a `Retry` raised by the work. Every write of this service is
    idempotent, so a transaction whose COMMIT was lost in flight converges when it runs again."""
    return _attempts(transaction, work, attempts, retry_on=_retryable)


def _retryable(error: exc.DBAPIError) -> bool:
    return _is_disconnect(error) or sqlstate(error) in RETRYABLE_SQLSTATES


def _attempts[T](
    connection: Callable[[], AbstractContextManager[Connection]],
    work: Callable[[Connection], T],
    attempts: int,
    *,
    retry_on: Callable[[exc.DBAPIError], bool],
) -> T:
    """`work` on a fresh `connection()` until it returns, at most `attempts` times: again after a
    `Retry` or a database error `retry_on` accepts. What the caller sees otherwise is translated
    (`_raise_translated`)."""
    for attempt in range(1, attempts + 1):
        try:
            with connection() as conn:
                return work(conn)
        except OSError as error:  # a socket timeout: the server is too slow or gone; don't pile on
            raise Unavailable("database did not answer in time, retry later") from error
        except Retry as error:
            if attempt == attempts:
                raise Unavailable("too many concurrent changes, retry later") from error
        except exc.DBAPIError as error:
            if not (retry_on(error) and attempt < attempts):
                _raise_translated(error)
    raise AssertionError("unreachable")


def _raise_translated(error: exc.DBAPIError) -> NoReturn:
    """What the caller should see: the database being gone or too slow is a 503, not a 500; a
    database whose migration has not run (a routine of this code is missing) is a 503 that says so."""
    if sqlstate(error) in SCHEMA_BEHIND_SQLSTATES and ROUTINE_SCHEMA in _field(error, "M"):
        from metering.observability import Metric, count, logger

        logger.error(
            "database schema is behind this code: run `metering migrate`", extra={"error": str(error.orig)}
        )
        count(Metric.SCHEMA_BEHIND)
        raise NotConfigured(
            "the database schema is behind this code version: run `metering migrate` (a routine is missing)"
        ) from error
    if _is_disconnect(error):
        raise Unavailable("database unavailable, retry later") from error
    if sqlstate(error) in TOO_SLOW_SQLSTATES:
        raise Unavailable("database too slow (statement or lock timeout), retry later") from error
    raise error


def sqlstate(error: exc.DBAPIError) -> str | None:
    return _field(error, "C") or None


def _field(error: exc.DBAPIError, code: str) -> str:
    """A field of the server's error (C: SQLSTATE, M: message), as pg8000 reports it; "" if none."""
    args = getattr(error.orig, "args", ())
    fields = args[0] if args and isinstance(args[0], dict) else {}
    return str(fields.get(code) or "")


def _is_disconnect(error: exc.DBAPIError) -> bool:
    """Lost or refused connections: pg8000 reports network failures as InterfaceError, and a
    server shutting down terminates sessions with SQLSTATE class 57P / 08."""
    code = sqlstate(error) or ""
    return (
        bool(error.connection_invalidated)
        or isinstance(error, exc.InterfaceError)
        or code.startswith(("57P", "08"))
    )
