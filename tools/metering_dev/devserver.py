"""`metering dev`: serve every HttpApi route of template.yaml on http://127.0.0.1:3000, calling the
handlers in-process with the events API Gateway (HTTP API, payload format 2.0) would send them
(built by `events.http_event`, as the tests build theirs), as `sam local start-api` would but
without Docker.

One request at a time (a plain `HTTPServer`), like one warm Lambda container per process; a handler
module is imported on its route's first request, as at a cold start.

Auth, locally (no signature or token is verified):
- `AWS_IAM` routes get a `requestContext.authorizer.iam` block for a local caller.
- JWT routes get `requestContext.authorizer.jwt.claims` from the payload of an
  `Authorization: Bearer <jwt>` header (decoded, NOT verified), or `{"sub": <id>}` from the dev-only
  header `X-Metering-User: <id>`. With neither there is no authorizer block and the request still
  reaches the handler, which answers 401 itself. (Real API Gateway would answer 401 before the
  handler; letting the handler answer exercises its own check.)
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from metering_dev import embedded
from metering_dev.context import make_context
from metering_dev.events import http_event, is_binary
from metering_dev.template import FunctionSpec, Route, functions, load_handler

log = logging.getLogger("metering.dev")

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
NOT_FOUND = b'{"message":"Not Found"}'
INTERNAL_ERROR = b'{"message":"Internal Server Error"}'

# ----------------------------------------------------------------------------------------------
# environment


def set_powertools_defaults() -> None:
    """Pretty logs, and metrics that need no namespace on each handler (unless already set)."""
    os.environ.setdefault("POWERTOOLS_DEV", "1")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Metering")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "metering")


def prepare_backends(state_dir: Path, *, migrate: bool = True) -> list[str]:
    """Resolve DATABASE_URL / REDIS_URL (env, else local servers, else embedded), export them, set
    the Powertools dev defaults and bring the schema to head. Returns lines describing the choice."""
    db_url, db_source = embedded.resolve_database_url(state_dir)
    redis_url, redis_source = embedded.resolve_redis_url(state_dir)
    os.environ["DATABASE_URL"] = db_url
    os.environ["REDIS_URL"] = redis_url
    set_powertools_defaults()
    lines = [
        f"Database ({db_source}): {embedded.redact(db_url)}",
        f"Redis ({redis_source}): {embedded.redact(redis_url)}",
    ]
    if migrate:
        try:
            from metering.db.migrate import SchemaAhead, upgrade_to_head
        except ImportError as exc:
            log.warning("migrations not run: %s", exc)
            lines.append(f"WARNING: migrations not run ({exc})")
        else:
            try:
                lines.append(f"Schema: at revision {upgrade_to_head(db_url) or '(none)'}")
            except SchemaAhead as exc:  # serve anyway: migrations are additive, and say so
                lines.append(f"WARNING: {exc}")
    return lines


# ----------------------------------------------------------------------------------------------
# routing


@dataclass(frozen=True)
class CompiledRoute:
    route: Route
    function: FunctionSpec
    regex: re.Pattern[str] | None  # None: $default
    params: tuple[str, ...]
    greedy: bool

    @property
    def route_key(self) -> str:
        return "$default" if self.regex is None else f"{self.route.method} {self.route.path}"

    def priority(self) -> tuple[int, int, int, int]:
        # API Gateway prefers the most specific route: no greedy variable, then fewer path
        # variables (a literal path first), then this method over ANY; $default comes last
        return (self.regex is None, self.greedy, len(self.params), self.route.method == "ANY")


def compile_route(route: Route, function: FunctionSpec) -> CompiledRoute:
    if route.path == "$default":
        return CompiledRoute(route, function, None, (), False)
    params: list[str] = []
    greedy = False
    pattern = ""
    for segment in route.path.strip("/").split("/"):
        m = re.fullmatch(r"\{([^{}+]+)(\+?)\}", segment)
        if m:
            params.append(m.group(1))
            greedy = greedy or bool(m.group(2))
            pattern += "/(.+)" if m.group(2) else "/([^/]+)"
        else:
            pattern += "/" + re.escape(segment)
    return CompiledRoute(route, function, re.compile(pattern or "/"), tuple(params), greedy)


class Router:
    def __init__(self, specs: dict[str, FunctionSpec]) -> None:
        self.routes = sorted(
            (compile_route(r, spec) for spec in specs.values() for r in spec.routes),
            key=CompiledRoute.priority,
        )

    def match(self, method: str, raw_path: str) -> tuple[CompiledRoute, dict[str, str]] | None:
        for cr in self.routes:
            if cr.route.method not in (method, "ANY"):
                continue
            if cr.regex is None:
                return cr, {}
            m = cr.regex.fullmatch(raw_path)
            if m:
                return cr, {name: unquote(value) for name, value in zip(cr.params, m.groups(), strict=True)}
        return None


# ----------------------------------------------------------------------------------------------
# event


def request_event(
    *,
    method: str,
    target: str,
    protocol: str,
    header_items: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    route_key: str,
    path_parameters: dict[str, str],
    auth: str,
    server_port: int = 3000,
) -> dict[str, Any]:
    """The event API Gateway would send for this HTTP request: its parts, as `events.http_event`
    (the one builder) takes them."""
    split = urlsplit(target)
    content_type = next((v for k, v in header_items if k.lower() == "content-type"), "")
    raw_body: str | bytes | None = None
    if body:
        raw_body = body if is_binary(content_type, body) else body.decode("utf-8")
    return http_event(
        method,
        split.path or "/",
        route_key=route_key,
        path_parameters=path_parameters,
        query=split.query,
        headers=header_items,
        content_type=None,  # only what the client sent
        auth=auth,
        raw_body=raw_body,
        source_ip=source_ip,
        protocol=protocol,
        forwarded_proto="http",
        forwarded_port=server_port,
    )


# ----------------------------------------------------------------------------------------------
# response


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def to_http_response(result: Any) -> HttpResponse:
    """Map a handler's return value to HTTP as API Gateway does for payload format 2.0."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # no statusCode: 200, the whole value is the JSON body (a string is the body as is)
        body = result if isinstance(result, str) else json.dumps(result)
        return HttpResponse(200, [("Content-Type", "application/json")], body.encode("utf-8"))
    status = int(result["statusCode"])
    headers: list[tuple[str, str]] = []
    for name, value in (result.get("headers") or {}).items():
        headers.append((str(name), str(value)))
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(name), str(v)) for v in values)
    headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
    raw = result.get("body")
    if raw is None:
        payload = b""
    elif result.get("isBase64Encoded"):
        payload = base64.b64decode(raw)
    else:
        payload = str(raw).encode("utf-8")
    return HttpResponse(status, headers, payload)


# ----------------------------------------------------------------------------------------------
# server


class DevServer(HTTPServer):
    def __init__(self, address: tuple[str, int], specs: dict[str, FunctionSpec], openapi: Path) -> None:
        super().__init__(address, DevRequestHandler)
        self.router = Router(specs)
        self.openapi = openapi
        self.handlers: dict[str, Callable[[Any, Any], Any]] = {}

    def handler_for(self, spec: FunctionSpec) -> Callable[[Any, Any], Any]:
        fn = self.handlers.get(spec.logical_id)
        if fn is None:
            fn = self.handlers[spec.logical_id] = load_handler(spec)
        return fn


class DevRequestHandler(BaseHTTPRequestHandler):
    server: DevServer
    server_version = "metering-dev"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, resp: HttpResponse, request_id: str | None = None) -> None:
        self.send_response(resp.status)
        for name, value in resp.headers:  # send_response already sent Date
            if name.lower() not in ("content-length", "connection", "transfer-encoding", "date"):
                self.send_header(name, value)
        if request_id:
            self.send_header("Apigw-Requestid", request_id)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    def _dispatch(self) -> None:
        started = time.perf_counter()
        body = self._read_body()
        status = 500
        try:
            resp, request_id = self._handle(body)
            status = resp.status
            self._send(resp, request_id)
        finally:
            ms = (time.perf_counter() - started) * 1000
            print(f"{self.command} {self.path} {status} {ms:.1f}ms", file=sys.stderr, flush=True)

    def _handle(self, body: bytes) -> tuple[HttpResponse, str | None]:
        json_ct = [("Content-Type", "application/json")]
        raw_path = urlsplit(self.path).path or "/"
        if raw_path == "/openapi.json" and self.command in ("GET", "HEAD"):
            if self.server.openapi.is_file():
                return HttpResponse(200, json_ct, self.server.openapi.read_bytes()), None
            return HttpResponse(404, json_ct, NOT_FOUND), None
        matched = self.server.router.match(self.command, raw_path)
        if matched is None:
            return HttpResponse(404, json_ct, NOT_FOUND), None
        cr, params = matched
        event = request_event(
            method=self.command,
            target=self.path,
            protocol=self.request_version,
            header_items=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            route_key=cr.route_key,
            path_parameters=params,
            auth=cr.route.auth,
            server_port=self.server.server_address[1],
        )
        request_id = event["requestContext"]["requestId"]
        spec = cr.function
        try:
            handler = self.server.handler_for(spec)
            context = make_context(spec.logical_id, timeout_s=min(spec.timeout_s, 30))
            context.memory_limit_in_mb = spec.memory_mb
            return to_http_response(handler(event, context)), request_id
        except Exception:
            print(f"{spec.logical_id} failed on {cr.route_key}:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            return HttpResponse(500, json_ct, INTERNAL_ERROR), request_id


for _method in METHODS:
    setattr(DevRequestHandler, f"do_{_method}", DevRequestHandler._dispatch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--template", default="template.yaml", type=Path)
    parser.add_argument("--state-dir", default=".local", type=Path, help="embedded PostgreSQL/Redis data")


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("alembic", "pgserver"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    template = Path(args.template)
    if not template.is_file():
        print(f"template not found: {template}", file=sys.stderr)
        return 1
    specs = functions(template)
    # SIGTERM must run atexit hooks: they stop the embedded PostgreSQL
    signal.signal(signal.SIGTERM, _raise_exit)
    for line in prepare_backends(Path(args.state_dir)):
        print(line, flush=True)
    server = DevServer((args.host, args.port), specs, template.resolve().parent / "docs" / "openapi.json")
    routes = len(server.router.routes)
    print(f"{routes} routes from {len(specs)} functions in {template}", flush=True)
    print(f"Listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
