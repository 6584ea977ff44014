"""Every file in events/ drives the handler the template wires it to (the Docker-free
`sam local invoke`), with the outcome a real delivery of it would have."""

import json
from pathlib import Path

import pytest

from metering_dev.context import make_context
from metering_dev.template import functions, load_handler
from tests.support import api
from tests.support.cli import metering

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
TEMPLATE = ROOT / "template.yaml"


def function_for(event: dict) -> str:
    """The logical id that receives this event, from template.yaml's own wiring."""
    if "Records" in event:
        return "RecordQueueFunction"
    if "action" in event:
        return "MaintenanceFunction"
    method, path = event["routeKey"].split(" ", 1)
    for logical_id, spec in functions(TEMPLATE).items():
        if any(r.method == method and r.path == path for r in spec.routes):
            return logical_id
    raise AssertionError(f"no function in template.yaml serves {event['routeKey']}")


def invoke(name: str) -> tuple[str, dict]:
    event = json.loads((EVENTS / f"{name}.json").read_text())
    logical_id = function_for(event)
    result = load_handler(functions(TEMPLATE)[logical_id])(event, make_context(logical_id))
    return logical_id, result


def body(result: dict) -> dict | None:
    return json.loads(result["body"]) if result.get("body") else None


@pytest.fixture
def stranger_with_credit(clean):
    # the events act for user-42 on the shipped catalog; give them OCR credit to spend
    assert api.adjust("user-42", "seed", "ocr_tokens", "purchased", 100000)[0] == 201


def test_every_event_file_is_covered_by_this_module():
    covered = {
        "check",
        "release_reservation",
        "record_usage",
        "record_batch",
        "adjustment",
        "grant",
        "usage_queue",
        "summary",
        "breakdown",
        "stats",
        "me_summary",
        "me_breakdown",
        "me_stats",
        "ledger",
        "me_ledger",
        "maintenance_migrate",
        "maintenance_reconcile",
        "maintenance_expire_grants",
        "stripe_webhook",
    }
    assert {p.stem for p in EVENTS.glob("*.json")} <= covered


def test_check_reserve_release_and_record_events(stranger_with_credit):
    logical_id, result = invoke("check")
    assert logical_id == "CheckFunction" and result["statusCode"] == 200
    assert body(result)["reservation"]["id"] == "doc-1"
    logical_id, result = invoke("release_reservation")
    assert (logical_id, result["statusCode"]) == ("CheckFunction", 204)
    invoke("check")  # hold again, then settle it by recording
    logical_id, result = invoke("record_usage")
    assert (logical_id, result["statusCode"]) == ("RecordFunction", 201)
    assert body(result)["breakdown"]["from_purchased"] == 1800
    assert invoke("release_reservation")[1]["statusCode"] == 404  # settled by the record


def test_batch_adjustment_and_queue_events(clean):
    logical_id, result = invoke("record_batch")
    assert (logical_id, result["statusCode"]) == ("RecordFunction", 200)
    assert [r["status"] for r in body(result)["results"]] == ["recorded", "recorded", "recorded"]
    logical_id, result = invoke("adjustment")
    assert (logical_id, result["statusCode"]) == ("RecordFunction", 201)
    logical_id, result = invoke("usage_queue")
    assert (logical_id, result) == ("RecordQueueFunction", {"batchItemFailures": []})
    logical_id, result = invoke("grant")
    assert (logical_id, result["statusCode"]) == ("RecordFunction", 201)
    assert body(result)["grant"]["remaining"] == 20000
    assert invoke("grant")[1]["statusCode"] == 200  # idempotent on grant_id


@pytest.mark.parametrize(
    "name", ["summary", "breakdown", "stats", "ledger", "me_summary", "me_breakdown", "me_stats", "me_ledger"]
)
def test_read_events(clean, name):
    logical_id, result = invoke(name)
    assert logical_id == "SummaryFunction"
    assert result["statusCode"] == 200, result


def test_maintenance_events(clean):
    assert invoke("maintenance_migrate")[1]["action"] == "migrate"
    assert invoke("maintenance_reconcile")[1] == {"action": "reconcile", "clean": True, "drifts": 0}
    assert invoke("maintenance_expire_grants")[1] == {"action": "expire_grants", "expired": 0}


def test_invoke_command_runs_an_event_file(clean):
    done = metering("invoke", "RecordFunction", "events/record_usage.json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["statusCode"] == 201 and json.loads(result["body"])["event_id"] == "job-123"


def test_stripe_webhook_event(clean, monkeypatch):
    from tests.support.stripe_events import SECRET, sign

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    from tests.support.servers import reset_caches

    reset_caches()
    event = json.loads((EVENTS / "stripe_webhook.json").read_text())
    assert function_for(event) == "StripeWebhookFunction"
    # the file carries a placeholder signature; sign its body now, as Stripe would at delivery
    event["headers"]["stripe-signature"] = sign(event["body"])
    result = load_handler(functions(TEMPLATE)["StripeWebhookFunction"])(
        event, make_context("StripeWebhookFunction")
    )
    assert result["statusCode"] == 200, result
    assert body(result) == {"status": "ok"}
    from tests.support.state import query

    assert [r.user_id for r in query("SELECT user_id FROM subscriptions")] == ["user-42"]
    # as delivered, with its stale placeholder signature, it is refused
    stale = json.loads((EVENTS / "stripe_webhook.json").read_text())
    refused = load_handler(functions(TEMPLATE)["StripeWebhookFunction"])(
        stale, make_context("StripeWebhookFunction")
    )
    assert (refused["statusCode"], body(refused)["error"]["code"]) == (400, "invalid_signature")
