"""SigV4: the requests as they reach the server (through `FaultProxy`) carry a signature that
botocore's own SigV4Auth, recomputed from the received method, path, query, signed headers and
body, agrees with; credentials come from the default chain (here the environment)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from metering_client import MeteringError

ACCESS_KEY, SECRET_KEY, TOKEN = "AKIDCLIENTTEST", "client/test+secret", "session-token-1"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<headers>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


@pytest.fixture
def aws_env(monkeypatch) -> None:
    # AWS_SECURITY_TOKEN (which the repo's test setup sets) would win over AWS_SESSION_TOKEN
    for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)


def expected_signature(seen, region: str, signed_headers: list[str], body: bytes | None = None) -> str:
    """What botocore computes for the request the server received, canonicalising the query from
    its decoded parameters, as API Gateway does."""
    path, _, query = seen.target.partition("?")
    request = AWSRequest(
        method=seen.method,
        url=f"http://{seen.headers['host']}{path}",
        params=dict(parse_qsl(query, keep_blank_values=True)),
        headers={name: seen.headers[name] for name in signed_headers},
        data=seen.body if body is None else body,
    )
    request.context["timestamp"] = seen.headers["x-amz-date"]
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, TOKEN), "execute-api", region)
    return auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


def test_requests_are_signed_for_execute_api(aws_env, connect, proxy, user) -> None:
    client = connect(proxy.url, aws_region="eu-west-1")
    client.record(user, "server_kokoro", 3, details={"voice_slug": "heart"})
    client.breakdown(
        user, usage_type="server_kokoro", start="2026-01-01T00:00:00+00:00", end="2026-06-01T00:00:00Z"
    )
    client.release(user, "no such hold")
    assert [s.method for s in proxy.seen] == ["POST", "GET", "DELETE"]
    assert "from=2026-01-01T00%3A00%3A00%2B00%3A00" in proxy.seen[1].target
    for seen in proxy.seen:
        auth = AUTHORIZATION.fullmatch(seen.headers["authorization"])
        assert auth, seen.headers["authorization"]
        assert (auth["key"], auth["region"], auth["service"]) == (ACCESS_KEY, "eu-west-1", "execute-api")
        assert auth["date"] == seen.headers["x-amz-date"][:8]
        assert seen.headers["x-amz-security-token"] == TOKEN
        signed = auth["headers"].split(";")
        assert {"host", "x-amz-date", "x-amz-security-token"} <= set(signed)
        assert ("content-type" in signed) == bool(seen.body)
        assert auth["signature"] == expected_signature(seen, "eu-west-1", signed)
        # the check is not vacuous: another body or region gives another signature
        assert auth["signature"] != expected_signature(seen, "eu-west-1", signed, body=seen.body + b" ")
        assert auth["signature"] != expected_signature(seen, "us-east-1", signed)


def test_each_retry_is_signed_again(aws_env, connect, proxy, user) -> None:
    proxy.plan = ["lose_answer"]
    connect(proxy.url, aws_region="us-east-1").record(user, "server_kokoro", 1)
    assert len(proxy.seen) == 2
    for seen in proxy.seen:
        auth = AUTHORIZATION.fullmatch(seen.headers["authorization"])
        assert auth and auth["signature"] == expected_signature(seen, "us-east-1", auth["headers"].split(";"))


def test_without_a_region_nothing_is_signed(aws_env, connect, proxy, user) -> None:
    connect(proxy.url).summary(user)
    assert not {h for h in proxy.seen[0].headers if h == "authorization" or h.startswith("x-amz-")}


def test_no_credentials_is_a_clear_error_and_sends_nothing(
    monkeypatch, tmp_path, connect, proxy, user
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    with pytest.raises(MeteringError) as raised:
        connect(proxy.url, aws_region="us-east-1").summary(user)
    assert (raised.value.status, raised.value.code) == (None, "no_credentials")
    assert proxy.seen == []
