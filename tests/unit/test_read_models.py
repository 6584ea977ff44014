"""The read side's pure parts: window parsing, is_canceling, the hold format, SQL field names, and
how the response models serialize."""

from datetime import UTC, datetime, timedelta

import pytest

from metering.api.read_models import BreakdownResponse, UsageTypeSummary
from metering.db.reads import _field_sql
from metering.domain.subscriptions import is_canceling
from metering.errors import BadInput
from metering.services.reads import parse_instant


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-01T00:00:00Z", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T02:30:00+02:30", datetime(2026, 3, 1, tzinfo=UTC)),
        (" 2026-03-01T00:00:00.123456Z ", datetime(2026, 3, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_parse_instant_accepts_a_timezone_and_returns_utc(value, expected):
    parsed = parse_instant(value, "from")
    assert parsed == expected and parsed.tzinfo == UTC


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-03-01T00:00:00", "from: needs a timezone"),
        ("2026-03-01", "from: needs a timezone"),
        ("", "from: not an ISO-8601"),
        ("tomorrow", "from: not an ISO-8601"),
        ("0001-01-01T00:00:00+05:00", "from: out of range"),
    ],
)
def test_parse_instant_rejects_with_the_parameter_named(value, message):
    with pytest.raises(BadInput) as error:
        parse_instant(value, "from")
    assert error.value.message.startswith(message)
    assert error.value.code == "validation_error"


def test_is_canceling():
    end = datetime(2026, 4, 1, tzinfo=UTC)
    assert is_canceling(True, None, end)
    assert is_canceling(False, end, end)
    assert is_canceling(False, end - timedelta(days=1), end)
    assert not is_canceling(False, end + timedelta(seconds=1), end)
    assert not is_canceling(False, None, end)
    assert is_canceling(False, end, None)


def test_only_catalog_field_names_become_sql():
    assert _field_sql("details.voice_slug") == ("(details -> 'voice_slug')", "(details ->> 'voice_slug')")
    assert _field_sql("reference_id") == ("to_jsonb(reference_id)", "reference_id")
    for bad in ("details.x'; DROP TABLE usage_events; --", "amount", "details."):
        with pytest.raises(ValueError):
            _field_sql(bad)


def test_breakdown_serializes_from_by_its_alias_and_utc_with_z():
    moment = datetime(2026, 3, 1, tzinfo=UTC)
    body = BreakdownResponse(user_id="u", from_=moment, to=moment, usage_types={}).model_dump(
        mode="json", by_alias=True
    )
    assert body == {
        "user_id": "u",
        "from": "2026-03-01T00:00:00Z",
        "to": "2026-03-01T00:00:00Z",
        "usage_types": {},
    }


def test_unlimited_is_null():
    out = UsageTypeSummary(limit=None, used=1, rollover=0, purchased=0, granted=0, reserved=0, available=None)
    assert out.model_dump(mode="json") == {
        "limit": None,
        "used": 1,
        "rollover": 0,
        "purchased": 0,
        "granted": 0,
        "reserved": 0,
        "available": None,
    }
