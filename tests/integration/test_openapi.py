"""docs/openapi.json: generated from the handlers' own models, current, complete, precise, served by
`make dev`."""

import json
import threading
import urllib.request
from pathlib import Path

import pytest

from metering_dev.openapi import CONTRACT_ERRORS, build_document, handler_file, http_functions, render
from metering_dev.template import AUTH_IAM, AUTH_JWT, AUTH_NONE
from tests.support.cli import metering

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "openapi.json"
TEMPLATE = ROOT / "template.yaml"
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def document():
    return build_document()


def template_routes(*, present_only=True):
    return {
        (route.method.lower(), route.path): route.auth
        for spec in http_functions(TEMPLATE)
        if not present_only or handler_file(spec).is_file()
        for route in spec.routes
    }


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_committed_document_is_current(document):
    committed = DOC.read_text(encoding="utf-8")
    assert json.loads(committed) == document, "docs/openapi.json is stale: run `make openapi`"
    assert committed == render(document)  # sorted keys, trailing newline
    assert document["info"]["title"] == "metering" and document["info"]["version"]
    assert document["openapi"].startswith("3.1")


def test_every_template_route_is_documented_and_nothing_else(document):
    documented = {(method, path) for method, path, _ in operations(document)}
    assert documented == set(template_routes())


def test_the_webhook_route_is_documented(document):
    webhook = next(spec for spec in http_functions(TEMPLATE) if spec.logical_id == "StripeWebhookFunction")
    if not handler_file(webhook).is_file():
        pytest.skip("functions/stripe_webhook/app.py is not written yet")
    assert "post" in document["paths"]["/v1/stripe/webhook"]


def test_auth_of_each_route_follows_the_template(document):
    routes = template_routes()
    expected = {AUTH_IAM: [{"awsIam": []}], AUTH_JWT: [{"userJwt": []}], AUTH_NONE: None}
    for method, path, operation in operations(document):
        assert operation.get("security") == expected[routes[(method, path)]], (method, path)
    schemes = document["components"]["securitySchemes"]
    assert schemes["awsIam"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert (schemes["userJwt"]["type"], schemes["userJwt"]["scheme"]) == ("http", "bearer")


def test_responses_are_precise(document):
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)  # make_resolver answers 400
        success = {code: r for code, r in responses.items() if code.startswith("2")}
        assert success, (method, path)
        for code, response in success.items():
            if code == "204":
                assert "content" not in response
            else:
                schema = response["content"]["application/json"]["schema"]
                assert schema.get("$ref") or schema.get("type") == "object", (method, path, code)
        for code in map(str, CONTRACT_ERRORS):
            assert responses[code]["content"]["application/json"]["schema"] == ERROR_REF, (method, path, code)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def test_read_routes_document_their_models_and_parameters(document):
    paths = document["paths"]
    for prefix in ("/v1/users/{user_id}", "/v1/me"):
        for name, model in (
            ("summary", "SummaryResponse"),
            ("breakdown", "BreakdownResponse"),
            ("stats", "StatsResponse"),
        ):
            ok = paths[f"{prefix}/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok == {"$ref": f"#/components/schemas/{model}"}
        params = {(p["in"], p["name"]) for p in paths[f"{prefix}/breakdown"]["get"].get("parameters", [])}
        expected = {("query", "usage_type"), ("query", "from"), ("query", "to")}
        if prefix != "/v1/me":
            expected.add(("path", "user_id"))
        assert params == expected
    summary = document["components"]["schemas"]["SummaryResponse"]
    assert set(summary["required"]) >= {
        "user_id",
        "billing_enabled",
        "plan",
        "subscription",
        "period",
        "usage_types",
    }
    breakdown = document["components"]["schemas"]["BreakdownResponse"]
    assert {"from", "to", "usage_types"} <= set(breakdown["properties"])


def test_cli_prints_the_document():
    result = metering("openapi", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == DOC.read_text(encoding="utf-8")


def test_dev_server_serves_the_document():
    from metering_dev.devserver import DevServer
    from metering_dev.template import functions

    server = DevServer(("127.0.0.1", 0), functions(TEMPLATE), DOC)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/openapi.json"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200
            assert reply.read() == DOC.read_bytes()
    finally:
        server.shutdown()
        server.server_close()
