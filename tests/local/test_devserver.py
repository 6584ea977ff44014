"""`metering dev` as a subprocess on a throwaway template: the events it hands handlers, and how it
maps their answers back to HTTP, checked against API Gateway's payload format 2.0."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model

from metering_dev.embedded import redact

# top-level and requestContext keys of Powertools' apiGatewayProxyV2Event.json (a real API Gateway
# event), less the mTLS `authentication` block
V2_KEYS = {
    "version", "routeKey", "rawPath", "rawQueryString", "cookies", "headers", "queryStringParameters",
    "requestContext", "body", "pathParameters", "isBase64Encoded", "stageVariables",
}  # fmt: skip
V2_CONTEXT_KEYS = {
    "accountId", "apiId", "authorizer", "domainName", "domainPrefix", "http", "requestId", "routeKey",
    "stage", "time", "timeEpoch",
}  # fmt: skip


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dev server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"dev server not listening on {port} after {timeout_s} s")


@pytest.fixture(scope="module")
def server(
    fake_project: Path, services: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    db_url, redis_url = services["database_url"], services["redis_url"]
    logs = tmp_path_factory.mktemp("devserver-logs")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=db_url, REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    out, err = (logs / "stdout.log").open("wb"), (logs / "stderr.log").open("wb")
    cmd = [sys.executable, "-m", "metering", "dev", "--template", str(fake_project), "--port", str(port)]
    cmd += ["--state-dir", str(logs / "state")]
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=fake_project.parent)
    try:
        _wait_for_port(port, proc)
        yield Server(port, proc, logs / "stderr.log", logs / "stdout.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def call(
    server: Server,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target)
        for name, value in headers or []:
            conn.putheader(name, value)  # repeated names are sent as separate header lines
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def echoed(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    payload: dict[str, Any] = reply.json()
    return payload


def jwt(claims: dict[str, Any]) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg(claims)}.c2lnbmF0dXJl"


def test_start_banner_names_backends_and_address(server: Server, services: dict[str, str]) -> None:
    out = server.stdout()
    assert f"Database (env): {redact(services['database_url'])}\n" in out
    assert f"Redis (env): {redact(services['redis_url'])}\n" in out
    assert f"Listening on http://127.0.0.1:{server.port}" in out


def test_post_with_json_body_path_params_and_query(server: Server, services: dict[str, str]) -> None:
    body = json.dumps({"amount": 3, "note": "héllo"}).encode()
    reply = call(
        server,
        "POST",
        "/v1/echo/user%201/items/42?tag=a&tag=b&x=1&empty=",
        body,
        [
            ("Content-Type", "application/json"),
            ("X-Custom-Thing", "one"),
            ("X-Custom-Thing", "two"),
            ("User-Agent", "devtools-test/1.0"),
            ("Cookie", "session=abc; theme=dark"),
        ],
    )
    payload = echoed(reply)
    event = payload["event"]

    APIGatewayProxyEventV2Model.model_validate(event)  # Powertools' own model of a 2.0 event
    assert set(event) <= V2_KEYS
    assert set(event["requestContext"]) <= V2_CONTEXT_KEYS
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /v1/echo/{user_id}/items/{item_id}"
    assert event["rawPath"] == "/v1/echo/user%201/items/42"
    assert event["rawQueryString"] == "tag=a&tag=b&x=1&empty="
    assert event["queryStringParameters"] == {"tag": "a,b", "x": "1", "empty": ""}
    assert event["pathParameters"] == {"user_id": "user 1", "item_id": "42"}
    assert event["body"] == body.decode("utf-8")
    assert event["isBase64Encoded"] is False
    assert event["stageVariables"] is None
    assert event["cookies"] == ["session=abc", "theme=dark"]

    headers = event["headers"]
    assert all(name == name.lower() for name in headers)
    assert headers["x-custom-thing"] == "one,two"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert "cookie" not in headers
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == str(server.port)
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", headers["x-amzn-trace-id"])

    ctx = event["requestContext"]
    assert ctx["http"] == {
        "method": "POST",
        "path": "/v1/echo/user%201/items/42",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "devtools-test/1.0",
    }
    assert ctx["routeKey"] == event["routeKey"]
    assert ctx["stage"] == "$default"
    assert ctx["apiId"] == "local"
    assert ctx["domainName"] == "127.0.0.1"
    assert abs(ctx["timeEpoch"] - time.time() * 1000) < 60_000
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000", ctx["time"])
    assert reply.header_values("Apigw-Requestid") == [ctx["requestId"]]
    # the service route takes the API's DefaultAuthorizer, AWS_IAM
    assert set(ctx["authorizer"]) == {"iam"}
    assert ctx["authorizer"]["iam"]["userArn"].startswith("arn:aws:iam::")

    # Powertools' data class reads the same event the way handlers will
    data = APIGatewayProxyEventV2(event)
    assert data.get_query_string_value("tag") == "a,b"
    assert data.headers.get("X-Custom-Thing") == "one,two"  # case-insensitive lookup
    assert data.json_body == {"amount": 3, "note": "héllo"}

    # the context, and the environment the handler was imported in
    context = payload["context"]
    assert context["function_name"] == "EchoFunction"
    assert str(uuid.UUID(context["aws_request_id"])) == context["aws_request_id"]
    assert context["memory_limit_in_mb"] == 256
    assert 0 < context["remaining_ms"] <= 10_000
    assert payload["database_url"] == services["database_url"]


def test_each_request_gets_a_fresh_request_id(server: Server) -> None:
    ids = {echoed(call(server, "POST", "/v1/open", b"{}"))["context"]["aws_request_id"] for _ in range(3)}
    assert len(ids) == 3


def test_get_without_body_or_query_omits_those_fields(server: Server) -> None:
    event = echoed(call(server, "GET", "/v1/me/echo", headers=[("X-Metering-User", "u-1")]))["event"]
    assert event["rawQueryString"] == ""
    for absent in ("body", "queryStringParameters", "pathParameters", "cookies"):
        assert absent not in event
    assert event["isBase64Encoded"] is False
    assert event["routeKey"] == "GET /v1/me/echo"


def test_jwt_route_takes_claims_from_bearer_token(server: Server) -> None:
    token = jwt({"sub": "user-7", "email": "u7@example.com", "exp": 1900000000, "groups": ["a", "b"]})
    event = echoed(call(server, "GET", "/v1/me/echo", headers=[("Authorization", f"Bearer {token}")]))[
        "event"
    ]
    authorizer = event["requestContext"]["authorizer"]
    assert set(authorizer) == {"jwt"}
    assert authorizer["jwt"]["claims"]["sub"] == "user-7"
    assert authorizer["jwt"]["claims"]["email"] == "u7@example.com"
    # HTTP API hands claims over as strings, arrays as "[a b]" (as reported by API Gateway users)
    assert authorizer["jwt"]["claims"]["exp"] == "1900000000"
    assert authorizer["jwt"]["claims"]["groups"] == "[a b]"
    assert authorizer["jwt"]["scopes"] is None
    assert event["headers"]["authorization"] == f"Bearer {token}"  # passed through, as API Gateway does
    APIGatewayProxyEventV2Model.model_validate(event)


def test_jwt_route_takes_sub_from_dev_header(server: Server) -> None:
    event = echoed(call(server, "GET", "/v1/me/echo", headers=[("X-Metering-User", "user-9")]))["event"]
    assert event["requestContext"]["authorizer"] == {"jwt": {"claims": {"sub": "user-9"}, "scopes": None}}


def test_jwt_route_without_credentials_reaches_handler_without_authorizer(server: Server) -> None:
    event = echoed(call(server, "GET", "/v1/me/echo"))["event"]
    assert "authorizer" not in event["requestContext"]
    # a token that is not a JWT gives no claims either
    event = echoed(call(server, "GET", "/v1/me/echo", headers=[("Authorization", "Bearer nope")]))["event"]
    assert "authorizer" not in event["requestContext"]


def test_route_with_auth_none_has_no_authorizer(server: Server) -> None:
    event = echoed(call(server, "POST", "/v1/open", b"{}", [("X-Metering-User", "u")]))["event"]
    assert "authorizer" not in event["requestContext"]


def test_non_utf8_body_arrives_base64_encoded(server: Server) -> None:
    raw = b"\xff\xfe\x00binary\x80"
    event = echoed(call(server, "POST", "/v1/open", raw, [("Content-Type", "text/plain")]))["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_greedy_and_literal_routes(server: Server) -> None:
    event = echoed(call(server, "DELETE", "/v1/files/a/b/c.txt"))["event"]
    assert event["routeKey"] == "ANY /v1/files/{proxy+}"
    assert event["pathParameters"] == {"proxy": "a/b/c.txt"}
    event = echoed(call(server, "GET", "/v1/files/exact"))["event"]
    assert event["routeKey"] == "GET /v1/files/exact"  # the literal route wins over the greedy one
    assert "pathParameters" not in event


def test_unknown_route_and_wrong_method_are_404_like_api_gateway(server: Server) -> None:
    for method, target in [("GET", "/v1/nowhere"), ("GET", "/v1/open"), ("POST", "/v1/echo/u1/items")]:
        reply = call(server, method, target, b"" if method == "POST" else None)
        assert reply.status == 404, (method, target)
        assert reply.json() == {"message": "Not Found"}
        assert reply.header_values("Content-Type") == ["application/json"]


def test_raising_handler_is_500_with_traceback_on_stderr(server: Server) -> None:
    reply = call(server, "GET", "/v1/boom")
    assert reply.status == 500
    assert reply.json() == {"message": "Internal Server Error"}
    # the request's log line is written after the response is sent: poll for it (bounded)
    log_line = re.compile(r"^GET /v1/boom 500 [\d.]+ms$", re.M)
    deadline = time.monotonic() + 5
    while not log_line.search(server.stderr()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_line.search(server.stderr())
    assert "RuntimeError: boom from the handler" in server.stderr()
    # the server keeps serving
    assert call(server, "POST", "/v1/open", b"{}").status == 200


def test_response_without_status_code_is_200_json(server: Server) -> None:
    reply = call(server, "POST", "/v1/open?mode=plain", b"{}")
    assert reply.status == 200
    assert reply.json() == {"plain": True}
    assert reply.header_values("Content-Type") == ["application/json"]


def test_response_cookies_become_set_cookie_headers(server: Server) -> None:
    reply = call(server, "POST", "/v1/open?mode=cookies", b"{}")
    assert reply.status == 200
    assert reply.header_values("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_base64_response_body_is_decoded(server: Server) -> None:
    reply = call(server, "POST", "/v1/open?mode=binary", b"{}")
    assert reply.status == 200
    assert reply.body == b"\x00\xffbin"
    assert reply.header_values("Content-Type") == ["application/octet-stream"]


def test_powertools_resolver_routes_the_event(server: Server) -> None:
    reply = call(server, "GET", "/v1/pt/u%2042?x=5")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["user_id"] == "u%2042"  # Powertools matches on rawPath, still percent-encoded
    assert body["x"] == "5"
    assert body["caller"].startswith("arn:aws:iam::")
    assert body["route_key"] == "GET /v1/pt/{user_id}"


def test_openapi_document_is_served(server: Server) -> None:
    reply = call(server, "GET", "/openapi.json")
    assert reply.status == 200
    assert reply.json()["openapi"] == "3.1.0"
