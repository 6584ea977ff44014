"""Request models: what validation keeps for the record beyond the fields themselves."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from metering.api.models import UsageRequest, details_json

DETAILS = {"voice": "Zoë", "duration_ms": 1.5, "tags": ["a", "b"], "nested": {"n": None}}
COMPACT = json.dumps(DETAILS, separators=(",", ":"), ensure_ascii=False)


def _request(details: object) -> UsageRequest:
    body = {"event_id": "e1", "user_id": "u1", "usage_type": "t", "amount": 1, "details": details}
    return UsageRequest.model_validate(body)


def test_validated_details_keep_the_text_their_size_was_measured_on():
    """The record stores the compact JSON that validation measured: the same string object, not
    a second encoding of the same object."""
    request = _request(DETAILS)
    assert request.details == DETAILS
    text = details_json(request.details)
    assert text == COMPACT
    assert details_json(request.details) is text
    assert request.model_dump()["details"] == DETAILS
    assert json.loads(request.model_dump_json())["details"] == DETAILS


def test_details_built_without_validation_are_encoded_when_asked():
    request = UsageRequest.model_construct(
        event_id="e1", user_id="u1", usage_type="t", amount=1, details=DETAILS
    )
    assert details_json(request.details) == COMPACT
    assert details_json(None) is None


def test_details_that_are_not_json_numbers_are_still_rejected_by_name():
    with pytest.raises(ValidationError) as raised:
        _request({"x": float("nan")})
    assert raised.value.errors()[0]["loc"] == ("details",)
