"""The client's models against the service's OpenAPI document (docs/openapi.json): every field of
every response schema of every route the client calls must be a field of the model that reads
it, nested models, lists and maps included, and every route the client calls must be in it."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from metering_client._core import ROUTES
from metering_client.models import ErrorEnvelope

ROOT = Path(__file__).resolve().parents[3]
DOCUMENT = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))


def resolve(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


def without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def missing_fields(
    schema: dict[str, Any], annotation: Any, where: str, document: dict[str, Any]
) -> list[str]:
    """The places of `schema`'s fields that `annotation` (a model, or a list / dict of them) lacks."""
    schema = resolve(schema, document)
    annotation = without_none(annotation)
    found: list[str] = []
    for branch in schema.get("anyOf", []):
        if branch.get("type") != "null":
            found += missing_fields(branch, annotation, where, document)
    if "properties" in schema:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return [f"{where}: an object with fields {sorted(schema['properties'])}, read as {annotation!r}"]
        fields = {info.alias or name: info for name, info in annotation.model_fields.items()}
        for name, sub in schema["properties"].items():
            if name not in fields:
                found.append(f"{where}.{name}")
            else:
                found += missing_fields(sub, fields[name].annotation, f"{where}.{name}", document)
    elif schema.get("type") == "array" and "items" in schema and get_origin(annotation) is list:
        found += missing_fields(schema["items"], get_args(annotation)[0], f"{where}[]", document)
    elif isinstance(schema.get("additionalProperties"), dict) and get_origin(annotation) is dict:
        found += missing_fields(
            schema["additionalProperties"], get_args(annotation)[1], f"{where}.*", document
        )
    return found


def route_problems(name: str, document: dict[str, Any]) -> list[str]:
    """Every response field of route `name` that the client's models do not read."""
    route = ROUTES[name]
    operation = document["paths"][route.path][route.method.lower()]
    problems: list[str] = []
    for status, response in operation["responses"].items():
        code = int(status)
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if code >= 400:
            model: Any = ErrorEnvelope
        elif code not in route.responses:
            problems.append(f"{name}: the service answers {code}, which the client does not read")
            continue
        else:
            model = route.responses[code]
        if schema is None:
            continue
        if model is None:
            problems.append(f"{name} {code}: a body the client ignores")
            continue
        problems += missing_fields(schema, model, f"{name} {code}", document)
    return problems


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_the_models_read_every_response_field_of_the_document(name: str) -> None:
    route = ROUTES[name]
    assert route.method.lower() in DOCUMENT["paths"].get(route.path, {}), (
        f"{route.method} {route.path} (client method {name}) is not in docs/openapi.json"
    )
    assert route_problems(name, DOCUMENT) == []


def test_a_field_the_models_lack_is_reported_where_it_is() -> None:
    document = copy.deepcopy(DOCUMENT)
    schemas = document["components"]["schemas"]
    schemas["CheckResponse"]["properties"]["decision_id"] = {"type": "string"}
    schemas["ReservationOut"]["properties"]["note"] = {"type": "string"}
    schemas["UsageTypeSummary"]["properties"]["overage"] = {"type": "integer"}
    schemas["BreakdownRowOut"]["properties"]["first_at"] = {"type": "string"}
    schemas["ErrorOut"]["properties"]["field"] = {"type": "string"}
    assert "check 200.decision_id" in route_problems("check", document)
    assert "check 200.reservation.note" in route_problems("check", document)
    assert "check 400.error.field" in route_problems("check", document)
    assert "summary 200.usage_types.*.overage" in route_problems("summary", document)
    assert "breakdown 200.usage_types.*.rows[].first_at" in route_problems("breakdown", document)


def test_a_status_the_client_does_not_read_is_reported() -> None:
    document = copy.deepcopy(DOCUMENT)
    responses = document["paths"]["/v1/check"]["post"]["responses"]
    responses["202"] = responses["200"]
    assert route_problems("check", document) == [
        "check: the service answers 202, which the client does not read"
    ]


def test_a_pending_route_is_checked_once_the_document_has_it() -> None:
    document = copy.deepcopy(DOCUMENT)
    document["components"]["schemas"]["LedgerPageOut"] = {
        "type": "object",
        "properties": {
            "entries": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "at": {"type": "string"}, "usage_type": {"type": "string"},
                "pool": {"type": "string"}, "delta": {"type": "integer"}, "balance_after": {"type": "integer"},
                "reason": {"type": "string"}, "ref": {"type": "string"}, "journal_seq": {"type": "integer"}}}},
            "next_cursor": {"type": "string"},
        },
    }  # fmt: skip
    document["paths"]["/v1/users/{user_id}/ledger"] = {
        "get": {
            "responses": {
                "200": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/LedgerPageOut"}}
                    }
                }
            }
        }
    }
    assert route_problems("ledger", document) == ["ledger 200.entries[].journal_seq"]
