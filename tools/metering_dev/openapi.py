"""`metering openapi`: the HTTP API's OpenAPI document, generated from the handlers themselves.

Every function of template.yaml with HttpApi routes has its handler module imported as Lambda
would (`metering_dev.template.load_handler`); its Powertools resolver (`app`) holds the routes with
their request models, parameters and return annotations. Those routes are registered again, on one
documentation resolver, so that Powertools generates a single document with one set of components.
While doing so the document is made to say what the service really does:

- auth, per route, from template.yaml: `awsIam` (SigV4) for service routes, `userJwt` (Bearer JWT
  whose `sub` is the user) for /v1/me routes, none for the Stripe webhook;
- errors: every status >= 400 carries the error envelope (`ErrorBody`): `make_resolver` answers
  every error that way, validation failures included (400, never Powertools' 422). Every operation
  lists the error statuses of api.md ("Errors, on every route"), in its own words when it has them;
- a route whose `responses` name no success status also documents its success (Powertools would
  otherwise document only the listed statuses), and a 204 has no body.

`docs/openapi.json` is this document (`make openapi`), checked to be current by
tests/integration/test_openapi.py and served by `make dev` at /openapi.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn, HTTPBearer

from metering.api.models import ErrorBody
from metering_dev.template import AUTH_IAM, AUTH_JWT, FunctionSpec, functions, load_handler

TITLE = "metering"
REPO_ROOT = Path(__file__).resolve().parents[2]

DESCRIPTION = """\
Usage metering and entitlements: check, record, summary, breakdown, stats and Stripe sync.

Auth: service routes (`/v1/...`) use API Gateway's AWS_IAM authorizer (SigV4-signed requests from \
the calling product's backend). `/v1/me/...` routes use a JWT authorizer and act for the user in \
the token's `sub` claim (401 `unauthorized` without one). The Stripe webhook has no authorizer: \
the `Stripe-Signature` header is its auth. Locally (`make dev`, http://127.0.0.1:3000) nothing is \
verified: service routes get a local IAM caller, and /v1/me routes take the user from \
`X-Metering-User: <id>` or from the payload of `Authorization: Bearer <jwt>`.

Errors, on every route: `{"error": {"code": "<snake_case>", "message": "<human text>"}}`.
"""

SECURITY_SCHEMES: dict[str, Any] = {
    "awsIam": APIKey.model_validate(
        {
            "type": "apiKey",
            "in": APIKeyIn.header,
            "name": "Authorization",
            "description": "AWS Signature Version 4 (API Gateway AWS_IAM authorizer)",
            "x-amazon-apigateway-authtype": "awsSigv4",
        }
    ),
    "userJwt": HTTPBearer(
        bearerFormat="JWT", description="JWT authorizer; the user is the token's `sub` claim"
    ),
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {AUTH_IAM: [{"awsIam": []}], AUTH_JWT: [{"userJwt": []}]}

# api.md section 5, "Errors, on every route"
CONTRACT_ERRORS: dict[int, str] = {
    400: "validation_error, unknown_usage_type, ...",
    401: "unauthorized",
    404: "not_found",
    409: "event_id_conflict, ...",
    413: "payload_too_large",
    500: "internal_error (never for bad input)",
    503: "unavailable, not_configured",
}
_ERROR_CONTENT = {"application/json": {"model": ErrorBody}}


def version() -> str:
    try:
        return metadata.version("metering")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def http_functions(template: Path) -> list[FunctionSpec]:
    """The functions of the template that serve HttpApi routes, in template order."""
    return [spec for spec in functions(template).values() if spec.routes]


def handler_file(spec: FunctionSpec) -> Path:
    module_path = spec.handler.rpartition(".")[0]
    return spec.code_uri / (module_path.replace(".", "/") + ".py")


def resolver_of(spec: FunctionSpec) -> APIGatewayHttpResolver:
    """The Powertools resolver (`app`) of a function's handler module, imported as Lambda would."""
    handler = load_handler(spec)
    module = sys.modules[handler.__module__]
    app = getattr(module, "app", None)
    if not isinstance(app, APIGatewayHttpResolver):
        raise TypeError(f"{spec.logical_id}: {handler_file(spec)} has no APIGatewayHttpResolver named `app`")
    return app


def _code(code: int | str) -> int | None:
    """An HTTP status as a number; None for a range such as "4XX"."""
    try:
        return int(code)
    except ValueError:
        return None


def _responses(route: Any) -> dict[int, Any]:
    declared: dict[int, Any] = dict(route.responses or {})
    out: dict[int, Any] = {}
    if not any(200 <= (_code(code) or 0) < 300 for code in declared):
        out[route.status_code] = {"description": route.response_description}
    for code, response in declared.items():
        response = dict(response)
        if (_code(code) or 0) >= 400 and "content" not in response:
            response["content"] = _ERROR_CONTENT
        out[code] = response
    declared_codes = {_code(code) for code in declared}
    for code, description in CONTRACT_ERRORS.items():
        if code not in declared_codes:
            out[code] = {"description": description, "content": _ERROR_CONTENT}
    return out


def _routes(app: APIGatewayHttpResolver) -> list[Any]:
    return [*app._static_routes, *app._dynamic_routes]


def _register(doc: APIGatewayHttpResolver, route: Any, auth: str | None) -> None:
    decorator: Callable[[Any], Any] = doc.route(
        route.path,
        route.method,
        summary=route.summary,
        description=route.description,
        responses=_responses(route),
        response_description=route.response_description,
        tags=route.tags or None,
        operation_id=route.operation_id,
        include_in_schema=route.include_in_schema,
        security=_SECURITY.get(auth or ""),
        openapi_extensions=route.openapi_extensions,
        deprecated=route.deprecated,
        status_code=route.status_code,
    )
    decorator(route.func)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    """A 204 has no body; schemas nothing refers to (Powertools' 422 models) are left out."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            no_content = operation.get("responses", {}).get("204")
            if no_content is not None:
                no_content.pop("content", None)
    schemas = document.get("components", {}).get("schemas", {})
    reachable, todo = set(), _refs(document.get("paths", {}))
    while todo:
        name = todo.pop()
        if name not in reachable and name in schemas:
            reachable.add(name)
            todo |= _refs(schemas[name])
    for name in set(schemas) - reachable:
        del schemas[name]
    return document


def build_document(template: Path | None = None, *, skipped: list[str] | None = None) -> dict[str, Any]:
    """The merged OpenAPI document of every HTTP function in the template.

    A function whose handler module does not exist yet is left out and named in `skipped`.
    """
    template = template or REPO_ROOT / "template.yaml"
    doc = APIGatewayHttpResolver(enable_validation=False)  # no 422: make_resolver answers 400
    for spec in http_functions(template):
        if not handler_file(spec).is_file():
            if skipped is not None:
                skipped.append(spec.logical_id)
            continue
        auth = {(r.method, r.path): r.auth for r in spec.routes}
        for route in _routes(resolver_of(spec)):
            _register(doc, route, auth.get((route.method, route.openapi_path)))
    schema = doc.get_openapi_schema(
        title=TITLE,
        version=version(),
        description=DESCRIPTION,
        security_schemes=SECURITY_SCHEMES,
    )
    return _finish(schema.model_dump(mode="json", by_alias=True, exclude_none=True))


def render(document: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", type=Path, default=None, help="template.yaml (default: the repo's)")
    parser.add_argument("--output", type=Path, default=None, help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    skipped: list[str] = []
    text = render(build_document(args.template, skipped=skipped))
    for logical_id in skipped:
        print(
            f"warning: {logical_id} has no handler module yet; its routes are not documented", file=sys.stderr
        )
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
