"""Opaque ids and text as clients send them (issue 23, points 4 and 5): every id the API accepts
is usable on every route that takes it, ids no route can carry are refused when first given, and a
NUL character (which PostgreSQL's text cannot hold) is a 400 naming the field, never a 500."""

from urllib.parse import quote

import pytest

from tests.support import api
from tests.support.lambda_events import call, http_event
from tests.support.state import assert_reconciled, query, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")

ODD_IDS = ["a#b", "ü€", "🙂 smile", "50%", "x&y=z", "semi;colon", "  spaced  ", "dot.dash-under_score~"]


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def _read(kind, user_id, *, encoded):
    """GET /v1/users/{user_id}/{kind} with the path as API Gateway may hand it over: decoded, or
    still percent-encoded; `pathParameters` carry the decoded id either way."""
    path = f"/v1/users/{quote(user_id, safe='') if encoded else user_id}/{kind}"
    event = http_event(
        "GET", path, route=f"/v1/users/{{user_id}}/{kind}", path_parameters={"user_id": user_id}
    )
    return call("summary", event)


@pytest.mark.parametrize("user_id", ODD_IDS)
@pytest.mark.parametrize("encoded", [False, True], ids=["decoded-path", "encoded-path"])
def test_an_id_the_api_accepts_works_on_every_route_that_takes_it(user_id, encoded):
    assert api.record("e1", user_id, "premium_voice", 10)[0] == 201
    status, adjusted = api.adjust(user_id, "a1", "premium_voice", "purchased", 500)
    assert status == 201, adjusted
    summary = _read("summary", user_id, encoded=encoded)
    assert summary[0] == 200, summary
    assert summary[1]["user_id"] == user_id
    assert summary[1]["usage_types"]["premium_voice"]["purchased"] == 500
    breakdown = _read("breakdown", user_id, encoded=encoded)
    assert breakdown[0] == 200 and breakdown[1]["usage_types"]["premium_voice"]["rows"][0]["total"] == 10
    stats = _read("stats", user_id, encoded=encoded)
    assert stats[0] == 200 and stats[1]["usage_types"]["premium_voice"]["total"] == 10
    assert_reconciled()


@pytest.mark.parametrize("reservation_id", ["doc#1", "ü€", "🙂", "50%"])
def test_a_reservation_granted_under_any_accepted_id_can_be_released(reservation_id):
    api.adjust("u1", "a1", "premium_voice", "purchased", 500)
    status, body = api.check("u1", "premium_voice", 300, {"id": reservation_id, "ttl_seconds": 60})
    assert status == 200 and body["reservation"]["id"] == reservation_id
    assert api.check("u1", "premium_voice", 300)[1]["reserved"] == 300
    assert api.release("u1", reservation_id)[0] == 204
    assert api.check("u1", "premium_voice", 300)[1]["reserved"] == 0
    assert api.release("u1", reservation_id)[0] == 404


@pytest.mark.parametrize("bad", ["a/b", "what?", "/", "?"])
def test_an_id_no_route_can_carry_is_refused_when_first_given(bad):
    status, body = api.record("e1", bad, "premium_voice", 10)
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert body["error"]["message"].startswith("user_id:")
    status, body = api.check(bad, "premium_voice", 10)
    assert status == 400 and body["error"]["message"].startswith("user_id:")
    status, body = api.check("u1", "premium_voice", 10, {"id": bad, "ttl_seconds": 60})
    assert status == 400 and body["error"]["message"].startswith("reservation.id:")
    status, body = api.record("e2", "u1", "premium_voice", 10, reservation_id=bad)
    assert status == 400 and body["error"]["message"].startswith("reservation_id:")
    status, body = api.batch([{"event_id": "e3", "user_id": bad, "usage_type": "premium_voice", "amount": 1}])
    assert status == 200 and body["results"][0]["status"] == "rejected"
    assert body["results"][0]["error"]["message"].startswith("user_id:")
    assert query("SELECT count(*) FROM usage_events")[0][0] == 0


NUL = "a\x00b"
RECORD = {"event_id": "e1", "user_id": "u1", "usage_type": "premium_voice", "amount": 10}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"user_id": NUL}, "user_id"),
        ({"event_id": NUL}, "event_id"),
        ({"reference_id": NUL}, "reference_id"),
        ({"description": NUL}, "description"),
        ({"details": {"voice_slug": NUL}}, "details"),
        ({"details": {NUL: 1}}, "details"),
        ({"details": {"deep": [{"x": NUL}]}}, "details"),
        ({"reservation_id": NUL}, "reservation_id"),
    ],
    ids=[
        "user_id",
        "event_id",
        "reference_id",
        "description",
        "details-value",
        "details-key",
        "details-nested",
        "reservation_id",
    ],
)
def test_a_nul_character_in_a_record_is_a_400_naming_the_field(fields, named):
    event = {**RECORD, **fields}
    status, body = call("record", http_event("POST", "/v1/usage", event))
    assert (status, body["error"]["code"]) == (400, "validation_error"), body
    assert body["error"]["message"].startswith(f"{named}:") and "NUL" in body["error"]["message"]
    # in a batch, the same item is rejected with the same code, and the others go on
    status, body = api.batch([event, {**RECORD, "event_id": "ok"}])
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["rejected", "recorded"]
    assert body["results"][0]["error"]["code"] == "validation_error"
    assert body["results"][0]["error"]["message"].startswith(f"{named}:")
    assert query("SELECT event_id FROM usage_events") == [("ok",)]


def test_a_nul_character_elsewhere_is_a_400_naming_the_field():
    status, body = api.check(NUL, "premium_voice", 1)
    assert status == 400 and body["error"]["message"].startswith("user_id:")
    status, body = api.check("u1", "premium_voice", 1, {"id": NUL, "ttl_seconds": 5})
    assert status == 400 and body["error"]["message"].startswith("reservation.id:")
    status, body = api.adjust("u1", "a1", "premium_voice", "purchased", 5, reason=NUL)
    assert status == 400 and body["error"]["message"].startswith("reason:")
    status, body = api.adjust("u1", NUL, "premium_voice", "purchased", 5)
    assert status == 400 and body["error"]["message"].startswith("adjustment_id:")
    status, body = _read("summary", NUL, encoded=False)
    assert status == 400 and "user_id" in body["error"]["message"]
    assert query("SELECT count(*) FROM adjustments")[0][0] == 0
    assert query("SELECT count(*) FROM balances")[0][0] == 0


def test_a_literal_backslash_u0000_in_details_is_text_not_nul():
    """Only a real NUL is refused: the six characters \\u0000 are ordinary text."""
    status, body = api.record("e1", "u1", "premium_voice", 10, details={"voice_slug": "\\u0000"})
    assert status == 201, body
    assert query("SELECT details ->> 'voice_slug' FROM usage_events") == [("\\u0000",)]
