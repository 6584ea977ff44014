"""The client's tests run against the real handlers: `metering dev` (what `make dev` runs) on this
worker's own database and Redis db, over real HTTP. `FaultProxy` sits in front of it where a test
needs an answer lost, refused, delayed or replaced; it forwards everything else as it is.

Every test runs with both clients (`kind` is "sync" or "async") through `Drive`, which calls the
same method names on either and runs what the async one returns on an event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from metering_client import AsyncMeteringClient, MeteringClient

ROOT = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 120


# ------------------------------------------------------------------------------------------------
# the dev server


def _own_database(worker: int, slot: int) -> tuple[str, str]:
    """(DATABASE_URL, REDIS_URL): a fresh database of this worker for the client's dev server
    (`metering dev` migrates it), beside the one the service's own tests use, and this worker's
    Redis db (the service's tests empty it between their tests; the client's tests use their own
    user ids, so they never read what another test left)."""
    from tests.support.servers import _admin_url, _redis_base

    state_dir = ROOT / ".local" / "test-servers"
    admin = _admin_url(state_dir)
    name = f"metering_client_s{slot}_{worker}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base = _redis_base(state_dir)
    db = 1 + slot * 3 + worker  # as tests/support/servers.py numbers them
    redis_url = (
        f"{base.split('?')[0]}?db={db}" if base.startswith("unix://") else f"{base.rsplit('/', 1)[0]}/{db}"
    )
    return make_url(admin).set(database=name).render_as_string(hide_password=False), redis_url


@dataclass
class DevServer:
    url: str
    log: Path


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    slot = int(os.environ.get("METERING_TEST_SLOT", "0"))
    database_url, redis_url = _own_database(worker, slot)
    state = tmp_path_factory.mktemp("client-dev-server")
    env = {k: v for k, v in os.environ.items() if k not in ("METERING_CATALOG", "BILLING_ENABLED")}
    env |= {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PYTHONUNBUFFERED": "1",
        "POWERTOOLS_DEV": "0",
    }
    command = [sys.executable, "-m", "metering", "dev", "--port", "0", "--state-dir", str(state)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = state / "dev.log"
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # the server logs every request: keep its pipe from filling up
        assert proc.stdout is not None
        with log.open("w", encoding="utf-8") as out:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                out.write(line)
                out.flush()
                lines.put(line)
        lines.put("")  # end of output: the server exited

    threading.Thread(target=drain, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=STARTUP_TIMEOUT_S)
            if not line:
                raise RuntimeError(f"metering dev exited before listening:\n{log.read_text()}")
            if line.startswith("Listening on "):
                break
        yield DevServer(line.removeprefix("Listening on ").strip(), log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------
# the proxy


@dataclass
class Seen:
    """One request as it reached the proxy (and, when forwarded, the dev server)."""

    method: str
    target: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


# What the proxy does with a request: "forward" (the default once the plan runs out);
# "lose_answer": forward it, then close the connection without answering; "refuse": close the
# connection without forwarding; "hang": hold it, unanswered and not forwarded, until the test
# ends (the client's timeout fires); or an int: answer that status with `FaultProxy.fault_body`,
# without forwarding.
Step = str | int


@dataclass
class FaultProxy:
    upstream: str  # host:port
    plan: list[Step] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    fault_body: bytes = b'{"error": {"code": "unavailable", "message": "injected by the test proxy"}}'
    url: str = ""
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self, seen: Seen) -> Step:
        with self.lock:
            self.seen.append(seen)
            return self.plan.pop(0) if self.plan else "forward"

    def forward(self, seen: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        host, port = self.upstream.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request(seen.method, seen.target, body=seen.body or None, headers=seen.headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen
            if (method is None or s.method == method) and (path is None or s.target.split("?")[0] == path)
        ]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen = Seen(self.command, self.path, headers, body)
            step = proxy.next_step(seen)
            if step in ("refuse", "hang"):
                if step == "hang":
                    proxy.released.wait()
                self.close_connection = True
                return
            if isinstance(step, int):
                status, reply_headers, payload = (
                    step,
                    [("Content-Type", "application/json")],
                    proxy.fault_body,
                )
            else:
                status, reply_headers, payload = proxy.forward(seen)
            if step == "lose_answer":  # the service did the work; its answer never arrives
                self.close_connection = True
                return
            self.send_response(status)
            for name, value in reply_headers:
                if name.lower() not in (
                    "content-length",
                    "connection",
                    "transfer-encoding",
                    "date",
                    "server",
                ):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = handle_any

    return Handler


@pytest.fixture
def proxy(dev_server: DevServer) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(dev_server.url.removeprefix("http://"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fault_proxy))
    server.daemon_threads = True
    fault_proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fault_proxy
    finally:
        fault_proxy.released.set()
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------
# both clients, one way of calling them


class Drive:
    """`target`'s methods, called the same way whatever the client: an awaitable is run to its end
    on `loop`, an (async) iterator is collected into a list."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.target, self.loop = target, loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                assert self.loop is not None
                return self.loop.run_until_complete(result)
            if isinstance(result, AsyncIterator):
                assert self.loop is not None
                return self.loop.run_until_complete(_collect(result))
            if isinstance(result, Iterator):
                return list(result)
            return result

        return call


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.close()


@pytest.fixture
def drive(kind: str, loop: asyncio.AbstractEventLoop) -> Callable[[Any], Drive]:
    """drive(target) -> a Drive over target's functions for this test's kind."""
    return lambda target: Drive(target, None if kind == "sync" else loop)


@pytest.fixture
def connect(kind: str, loop: asyncio.AbstractEventLoop) -> Iterator[Callable[..., Drive]]:
    """connect(base_url, **options) -> a Drive over a MeteringClient or an AsyncMeteringClient."""
    opened: list[Any] = []

    def make(base_url: str, **options: Any) -> Drive:
        if kind == "sync":
            client: Any = MeteringClient(base_url, **options)
            opened.append(client)
            return Drive(client, None)
        client = AsyncMeteringClient(base_url, **options)
        opened.append(client)
        return Drive(client, loop)

    yield make
    for client in opened:
        if isinstance(client, AsyncMeteringClient):
            loop.run_until_complete(client.aclose())
        else:
            client.close()


@pytest.fixture
def client(connect: Callable[..., Drive], dev_server: DevServer) -> Drive:
    """A client of the dev server itself, no proxy."""
    return connect(dev_server.url)


@pytest.fixture
def user() -> str:
    """A user id no other test uses (the tests share one database per worker)."""
    return f"client-test-{uuid.uuid4().hex[:12]}"
