"""The one API Gateway event builder (`metering_dev.events.http_event`): what the dev server, the
tests and the bench send handlers. Each HTTP event file in events/ (what `metering invoke` reads)
is what the builder makes of that request, but for the values that differ per request; and the
builder's events are valid payload-2.0 events with the authorizer each route gets."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model

from metering_dev.events import http_event, jwt_claims
from metering_dev.template import AUTH_IAM, AUTH_JWT, AUTH_NONE, functions

ROOT = Path(__file__).resolve().parents[2]
HTTP_EVENT_FILES = sorted(
    p for p in (ROOT / "events").glob("*.json") if "routeKey" in json.loads(p.read_text())
)
ADDED_BY_API_GATEWAY = ("x-forwarded-for", "x-forwarded-port", "x-forwarded-proto", "x-amzn-trace-id")
# differ per request or per deployment: not compared
PER_REQUEST = {"requestId", "time", "timeEpoch"}
PER_DEPLOYMENT = {"accountId", "apiId"}


def _route_auth() -> dict[str, str]:
    return {
        f"{r.method} {r.path}": r.auth
        for spec in functions(ROOT / "template.yaml").values()
        for r in spec.routes
    }


def _rebuilt(sample: dict[str, Any]) -> dict[str, Any]:
    """The builder's event for the request the sample records."""
    method, route = sample["routeKey"].split(" ", 1)
    ctx = sample["requestContext"]
    headers = {k: v for k, v in sample["headers"].items() if k not in ADDED_BY_API_GATEWAY}
    body = sample.get("body")
    if body is not None and sample["isBase64Encoded"]:
        body = base64.b64decode(body)
    claims = ((ctx.get("authorizer") or {}).get("jwt") or {}).get("claims")
    return http_event(
        method,
        sample["rawPath"],
        route=route,
        path_parameters=sample.get("pathParameters"),
        query=sample["rawQueryString"],
        headers=headers,
        content_type=None,
        auth=_route_auth()[sample["routeKey"]],
        claims=claims,
        raw_body=body,
        source_ip=ctx["http"]["sourceIp"],
        protocol=ctx["http"]["protocol"],
        forwarded_proto=sample["headers"]["x-forwarded-proto"],
        forwarded_port=int(sample["headers"]["x-forwarded-port"]),
    )


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in event.items() if k != "stageVariables"}  # null in every HTTP API event
    out["headers"] = {k: v for k, v in event["headers"].items() if k != "x-amzn-trace-id"}
    ctx = {k: v for k, v in event["requestContext"].items() if k not in PER_REQUEST | PER_DEPLOYMENT}
    authorizer = ctx.get("authorizer") or {}
    if "iam" in authorizer:  # the caller's own credentials: its kind and keys are what count
        ctx["authorizer"] = {"iam": sorted(authorizer["iam"])}
    out["requestContext"] = ctx
    return out


def test_there_are_http_event_files_for_every_kind_of_authorizer() -> None:
    kinds = {_route_auth()[json.loads(p.read_text())["routeKey"]] for p in HTTP_EVENT_FILES}
    assert kinds == {AUTH_IAM, AUTH_JWT, AUTH_NONE}


@pytest.mark.parametrize("path", HTTP_EVENT_FILES, ids=lambda p: p.stem)
def test_each_event_file_is_what_the_builder_makes_of_its_request(path: Path) -> None:
    sample = json.loads(path.read_text())
    rebuilt = _rebuilt(sample)
    APIGatewayProxyEventV2Model.model_validate(rebuilt)
    assert _comparable(rebuilt) == _comparable(sample)
    assert set(rebuilt["requestContext"]) == set(sample["requestContext"])
    assert re.fullmatch(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24}", rebuilt["headers"]["x-amzn-trace-id"])


def test_service_routes_get_iam_and_me_routes_jwt_by_default() -> None:
    service = http_event("POST", "/v1/check", {"user_id": "u1"})
    assert set(service["requestContext"]["authorizer"]) == {"iam"}
    assert service["requestContext"]["authorizer"]["iam"]["userArn"].startswith("arn:aws:iam::")
    assert service["headers"]["content-type"] == "application/json"
    assert json.loads(service["body"]) == {"user_id": "u1"} and service["isBase64Encoded"] is False
    me = http_event("GET", "/v1/me/summary", jwt_sub="alice", query={"at": "2026-12-01T00:00:00Z"})
    assert me["requestContext"]["authorizer"] == {"jwt": {"claims": {"sub": "alice"}, "scopes": None}}
    assert me["rawQueryString"] == "at=2026-12-01T00%3A00%3A00Z"
    assert me["queryStringParameters"] == {"at": "2026-12-01T00:00:00Z"}
    assert "content-type" not in me["headers"] and "body" not in me
    for event in (
        http_event("GET", "/v1/me/summary"),  # no credentials: the handler answers 401
        http_event("POST", "/v1/stripe/webhook", raw_body="{}", iam=False),
        http_event("POST", "/v1/check", {}, auth=AUTH_NONE),
    ):
        assert "authorizer" not in event["requestContext"]
        APIGatewayProxyEventV2Model.model_validate(event)


def test_jwt_claims_come_from_the_arguments_else_the_headers() -> None:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    token = f"{seg({'alg': 'RS256'})}.{seg({'sub': 'u7', 'groups': ['a', 'b'], 'exp': 1})}.c2ln"
    bearer = {"Authorization": f"Bearer {token}"}
    assert jwt_claims({"authorization": f"Bearer {token}"}) == {"sub": "u7", "groups": "[a b]", "exp": "1"}
    from_header = http_event("GET", "/v1/me/summary", headers=bearer, auth=AUTH_JWT)
    assert from_header["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "u7"
    from_dev_header = http_event("GET", "/v1/me/summary", headers={"X-Metering-User": "u9"}, auth=AUTH_JWT)
    assert from_dev_header["requestContext"]["authorizer"]["jwt"]["claims"] == {"sub": "u9"}
    # an argument wins over what the headers say (the headers still reach the handler)
    given = http_event("GET", "/v1/me/summary", headers=bearer, jwt_sub="u1")
    assert given["requestContext"]["authorizer"]["jwt"]["claims"] == {"sub": "u1"}
    assert given["headers"]["authorization"] == f"Bearer {token}"
    with pytest.raises(ValueError, match="auth 'COGNITO'"):
        http_event("GET", "/v1/me/summary", auth="COGNITO")


def test_headers_query_cookies_and_bodies_as_api_gateway_hands_them_over() -> None:
    event = http_event(
        "POST",
        "/v1/x",
        route_key="ANY /v1/{proxy+}",
        query="tag=a&tag=b&e=&sp=a+b",
        headers=[
            ("X-Thing", "one"),
            ("x-thing", "two"),
            ("Cookie", "a=1; b=2"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
        raw_body=b"\xff\x00",
        source_ip="192.0.2.7",
    )
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "ANY /v1/{proxy+}"
    assert event["rawQueryString"] == "tag=a&tag=b&e=&sp=a+b"
    assert event["queryStringParameters"] == {"tag": "a,b", "e": "", "sp": "a b"}
    assert event["headers"]["x-thing"] == "one,two"
    assert event["cookies"] == ["a=1", "b=2"] and "cookie" not in event["headers"]
    assert event["headers"]["x-forwarded-for"] == "10.0.0.1, 192.0.2.7"
    assert (event["isBase64Encoded"], base64.b64decode(event["body"])) == (True, b"\xff\x00")
    text = http_event("POST", "/v1/usage", raw_body="{not json", base64_body=True)
    assert (text["isBase64Encoded"], base64.b64decode(text["body"])) == (True, b"{not json")
    APIGatewayProxyEventV2Model.model_validate(event)
