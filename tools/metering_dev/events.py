"""Lambda events as API Gateway (HTTP API, payload format 2.0) and SQS deliver them.

`http_event` is the project's one builder of API Gateway events: `metering dev` turns each HTTP
request into its arguments (devserver.request_event), and the tests and the benchmark call it
directly; the files in events/ that `metering invoke` reads have the same shape (checked by
tests/local/test_events_builder.py).

Authorisation is what API Gateway would have done before the handler (nothing is verified):
- `AWS_IAM`: a `requestContext.authorizer.iam` block for a local caller;
- `JWT`: `requestContext.authorizer.jwt.claims`, from `claims`, else `{"sub": jwt_sub}`, else the
  payload of an `Authorization: Bearer <jwt>` header (decoded, NOT verified), else `{"sub": <id>}`
  from the dev-only header `X-Metering-User: <id>`; with none of them, no authorizer block (the
  handler answers 401 itself);
- `NONE`: no authorizer block.
Without `auth`, it is inferred as the template wires the service: JWT when `claims` or `jwt_sub` is
given, else AWS_IAM (unless `iam=False`) outside /v1/me, else NONE.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlencode

from metering_dev.context import LOCAL_ACCOUNT, LOCAL_REGION
from metering_dev.template import AUTH_IAM, AUTH_JWT, AUTH_NONE

DEV_USER_HEADER = "x-metering-user"
API_ID = "local"
DOMAIN = f"{API_ID}.execute-api.{LOCAL_REGION}.amazonaws.com"
BINARY_TYPES = ("application/octet-stream", "application/zip", "application/pdf")
BINARY_PREFIXES = ("image/", "audio/", "video/", "multipart/")


def http_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    route: str | None = None,
    route_key: str | None = None,
    path_parameters: Mapping[str, str] | None = None,
    query: Mapping[str, str] | str | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    content_type: str | None = "application/json",
    auth: str | None = None,
    jwt_sub: str | None = None,
    claims: Mapping[str, str] | None = None,
    iam: bool = True,
    raw_body: str | bytes | None = None,
    base64_body: bool = False,
    source_ip: str = "127.0.0.1",
    protocol: str = "HTTP/1.1",
    forwarded_proto: str = "https",
    forwarded_port: int = 443,
    now: float | None = None,
) -> dict[str, Any]:
    """The payload-format-2.0 event API Gateway would send for `method path`.

    - `path`: the raw (still percent-encoded) path; `route`: the route's path as the template
      writes it (default `path`), giving routeKey `"<method> <route>"`; `route_key` overrides it
      (`"$default"`, or `"ANY /x/{proxy+}"` for a request that an ANY route matched).
    - `query`: a dict, or the query string as the client sent it (repeated names join with ",").
    - `headers`: a mapping or (name, value) pairs; names are lower-cased, repeated names join with
      ",", `Cookie` moves to `cookies`, and API Gateway's x-forwarded-* and trace headers are
      added. `content_type` is the Content-Type of a body unless the headers carry one (None:
      none).
    - the body: `body` is sent as JSON; `raw_body` as it is, a `bytes` one (or a `str` one with
      `base64_body`) base64-encoded with `isBase64Encoded`.
    """
    now = time.time() if now is None else now
    if raw_body is None and body is not None:
        raw_body = json.dumps(body)

    header_map, cookies = _headers(headers, source_ip, forwarded_proto, forwarded_port, now)
    if content_type is not None and raw_body is not None:
        header_map.setdefault("content-type", content_type)

    if isinstance(query, str):
        raw_query, query_map = query, _parse_query(query)
    else:
        query_map = dict(query or {})
        raw_query = urlencode(query_map)

    key = route_key or f"{method} {route or path}"
    host = header_map.get("host", DOMAIN).rsplit(":", 1)[0] or DOMAIN
    context: dict[str, Any] = {
        "accountId": LOCAL_ACCOUNT,
        "apiId": API_ID,
        "domainName": host,
        "domainPrefix": host.split(".", 1)[0],
        "http": {
            "method": method,
            "path": path,
            "protocol": protocol,
            "sourceIp": source_ip,
            "userAgent": header_map.get("user-agent", ""),
        },
        "requestId": base64.b64encode(secrets.token_bytes(10)).decode(),
        "routeKey": key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    authorizer = _authorizer(auth, path, header_map, jwt_sub=jwt_sub, claims=claims, iam=iam)
    if authorizer is not None:
        context["authorizer"] = authorizer

    event: dict[str, Any] = {"version": "2.0", "routeKey": key, "rawPath": path, "rawQueryString": raw_query}
    if cookies:
        event["cookies"] = cookies
    event["headers"] = header_map
    if query_map:
        event["queryStringParameters"] = query_map
    event["requestContext"] = context
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if isinstance(raw_body, bytes):
        event["body"] = base64.b64encode(raw_body).decode("ascii")
        base64_body = True
    elif raw_body is not None:
        event["body"] = base64.b64encode(raw_body.encode()).decode("ascii") if base64_body else raw_body
    event["isBase64Encoded"] = base64_body and raw_body is not None
    event["stageVariables"] = None
    return event


def is_binary(content_type: str, body: bytes) -> bool:
    """Whether API Gateway would hand this body over base64-encoded: a binary media type, or bytes
    that are not UTF-8."""
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct in BINARY_TYPES or ct.startswith(BINARY_PREFIXES):
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def jwt_claims(headers: Mapping[str, str]) -> dict[str, str] | None:
    """Claims of the Bearer token (payload decoded, signature NOT verified), else from the dev header."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        parts = auth[7:].strip().split(".")
        if len(parts) == 3:
            try:
                payload = _b64url_json(parts[1])
            except (ValueError, binascii.Error):
                payload = None
            if isinstance(payload, dict):
                return {str(k): _claim_str(v) for k, v in payload.items()}
    user = headers.get(DEV_USER_HEADER, "").strip()
    if user:
        return {"sub": user}
    return None


def iam_authorizer() -> dict[str, Any]:
    return {
        "iam": {
            "accessKey": "ASIALOCALDEVACCESSKEY",
            "accountId": LOCAL_ACCOUNT,
            "callerId": "AIDALOCALDEVCALLER",
            "cognitoIdentity": None,
            "principalOrgId": None,
            "userArn": f"arn:aws:iam::{LOCAL_ACCOUNT}:user/local-dev",
            "userId": "AIDALOCALDEVCALLER",
        }
    }


def _authorizer(
    auth: str | None,
    path: str,
    headers: Mapping[str, str],
    *,
    jwt_sub: str | None,
    claims: Mapping[str, str] | None,
    iam: bool,
) -> dict[str, Any] | None:
    if auth is None:
        if claims is not None or jwt_sub is not None:
            auth = AUTH_JWT
        elif iam and not path.startswith("/v1/me"):
            auth = AUTH_IAM
        else:
            auth = AUTH_NONE
    if auth == AUTH_IAM:
        return iam_authorizer()
    if auth == AUTH_JWT:
        found = dict(claims) if claims is not None else {"sub": jwt_sub} if jwt_sub is not None else None
        found = found if found is not None else jwt_claims(headers)
        return None if found is None else {"jwt": {"claims": found, "scopes": None}}
    if auth == AUTH_NONE:
        return None
    raise ValueError(f"auth {auth!r}: not one of {AUTH_IAM}, {AUTH_JWT}, {AUTH_NONE}")


def _headers(
    given: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    source_ip: str,
    proto: str,
    port: int,
    now: float,
) -> tuple[dict[str, str], list[str]]:
    items = given.items() if isinstance(given, Mapping) else given or ()
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in items:
        key = name.lower()
        if key == "cookie":  # cookies move to their own field
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    # what API Gateway adds (x-forwarded-for gets the caller appended to any value sent)
    forwarded = headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{forwarded}, {source_ip}" if forwarded else source_ip
    headers["x-forwarded-port"] = str(port)
    headers["x-forwarded-proto"] = proto
    headers["x-amzn-trace-id"] = f"Root=1-{int(now):08x}-{secrets.token_hex(12)}"
    return headers, cookies


def _parse_query(raw: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for pair in raw.split("&") if raw else []:
        if not pair:
            continue
        k, _, v = pair.partition("=")
        k, v = unquote(k.replace("+", " ")), unquote(v.replace("+", " "))
        query[k] = f"{query[k]},{v}" if k in query else v
    return query


def _b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _claim_str(value: Any) -> str:
    # HTTP API hands JWT claims to the integration as strings; arrays as "[a b]"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_claim_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def sqs_event(bodies: list[dict[str, Any] | str]) -> dict[str, Any]:
    """An SQS event source delivery: one message per record request (a dict, sent as JSON, or a
    string, sent as it is: a message that need not be valid JSON)."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "local",
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795478400000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{LOCAL_REGION}:{LOCAL_ACCOUNT}:usage",
                "awsRegion": LOCAL_REGION,
            }
            for body in bodies
        ]
    }
