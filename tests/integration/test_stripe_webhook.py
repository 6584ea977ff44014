"""POST /v1/stripe/webhook: verification, the signing secret, exactly-once, failures that leave
nothing behind. Every event is built from Stripe's fixtures and signed with Stripe's scheme."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import stripe_events as se
from tests.support.state import assert_reconciled, use_test_catalog

query = se.sql

pytestmark = pytest.mark.usefixtures("clean")

NOW = datetime.now(UTC).replace(microsecond=0)
P1 = (NOW - timedelta(days=40), NOW - timedelta(days=10))
P2 = (P1[1], P1[1] + timedelta(days=30))


@pytest.fixture(autouse=True)
def setup(clean, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_test_catalog()  # also clears the cached settings


def snapshot_event(created=None, event_type="customer.subscription.updated", **fields):
    fields.setdefault("price", "price_basic_monthly")
    sub = se.subscription("sub_1", start=P2[0], end=P2[1], created=P1[0], **fields)
    return se.event(event_type, sub, created or se.ts(P2[0]) + 60)


STORED = (
    "stripe_events",
    "stripe_pending_events",
    "subscriptions",
    "accounts",
    "periods",
    "journal",
    "renewals",
    "topups",
)
NOTHING = dict.fromkeys(STORED, 0)


def stored() -> dict[str, int]:
    return {t: query(f"SELECT count(*) FROM {t}")[0][0] for t in STORED}


# --- verification ---------------------------------------------------------------------------------


def test_valid_delivery_is_applied_and_recorded():
    ev = snapshot_event()
    assert se.deliver(ev) == (200, {"status": "ok"})
    (row,) = query("SELECT event_id, type, created, outcome, object_id FROM stripe_events")
    assert tuple(row) == (ev["id"], "customer.subscription.updated", ev["created"], "ok", "sub_1")


@pytest.mark.parametrize("header_name", ["Stripe-Signature", "stripe-signature", "STRIPE-SIGNATURE"])
def test_signature_header_name_in_any_letter_case(header_name):
    status, body = se.deliver(snapshot_event(), header_name=header_name)
    assert (status, body) == (200, {"status": "ok"})


def test_base64_encoded_body_is_verified_on_its_decoded_bytes():
    assert se.deliver(snapshot_event(), base64_body=True) == (200, {"status": "ok"})


def test_signature_within_tolerance_is_accepted():
    assert se.deliver(snapshot_event(), timestamp=int(time.time()) - 290)[0] == 200


def tampered():
    ev = snapshot_event()
    payload = se.payload_of(ev)
    return {
        "payload": payload.replace("price_basic_monthly", "price_plus_monthly"),
        "signature": se.sign(payload),
    }


@pytest.mark.parametrize(
    "delivery",
    [
        pytest.param(tampered, id="tampered-body"),
        pytest.param(lambda: {"secret": "whsec_someone_else"}, id="wrong-secret"),
        pytest.param(lambda: {"timestamp": int(time.time()) - 301}, id="stale-timestamp"),
        pytest.param(lambda: {"omit_signature": True}, id="missing-header"),
        pytest.param(lambda: {"signature": "not a signature"}, id="garbled-header"),
        pytest.param(lambda: {"signature": f"t={int(time.time())},v0=abc"}, id="wrong-scheme"),
    ],
)
def test_bad_signature_is_400_and_stores_nothing(delivery):
    status, body = se.deliver(snapshot_event(), **delivery())
    assert status == 400
    assert body["error"]["code"] == "invalid_signature"
    assert "Stripe-Signature" in body["error"]["message"]
    assert stored() == NOTHING


@pytest.mark.parametrize(
    "payload",
    [
        "this is not json",
        "[]",
        json.dumps({"id": "evt_1", "type": "customer.subscription.updated", "created": 1}),  # no data.object
        json.dumps({"id": "evt_1", "created": 1, "data": {"object": {}}}),  # no type
        json.dumps({"type": "invoice.paid", "created": 1, "data": {"object": {}}}),  # no id
        json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {"object": {}}}),  # no created
    ],
    ids=["not-json", "not-an-object", "no-object", "no-type", "no-id", "no-created"],
)
def test_verified_body_that_is_not_an_event_is_invalid_payload(payload):
    status, body = se.deliver(payload=payload)
    assert status == 400 and body["error"]["code"] == "invalid_payload"
    assert stored() == NOTHING


def test_body_that_is_not_utf8_is_400():
    from tests.support.lambda_events import call, http_event

    request = http_event(
        "POST", se.PATH, raw_body=b"\xff\xfe\x00garbage", headers={"Stripe-Signature": "t=1,v1=00"}, iam=False
    )
    status, body = call("stripe_webhook", request)
    assert status == 400 and body["error"]["code"] in ("invalid_payload", "invalid_signature")
    assert stored() == NOTHING


# --- the signing secret -----------------------------------------------------------------------------


def test_no_secret_configured_is_503(monkeypatch):
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    from metering.config import get_settings

    get_settings.cache_clear()
    status, body = se.deliver(snapshot_event())
    assert status == 503 and body["error"]["code"] == "not_configured"
    assert stored() == NOTHING


@pytest.fixture
def secrets_manager(monkeypatch):
    from aws_lambda_powertools.utilities import parameters
    from moto import mock_aws

    from metering.config import get_settings

    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    parameters.clear_caches()
    with mock_aws():
        import boto3

        client = boto3.client("secretsmanager", region_name="us-east-1")

        def use(value: str | None, name: str = "metering/stripe-webhook") -> str:
            arn = (
                client.create_secret(Name=name, SecretString=value)["ARN"]
                if value is not None
                else f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf"
            )
            monkeypatch.setenv("STRIPE_WEBHOOK_SECRET_ARN", arn)
            get_settings.cache_clear()
            return arn

        use.client = client  # type: ignore[attr-defined]
        yield use
    parameters.clear_caches()
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "value", [se.SECRET, json.dumps({"webhook_secret": se.SECRET})], ids=["plain", "json"]
)
def test_secret_from_secrets_manager(secrets_manager, value):
    secrets_manager(value)
    assert se.deliver(snapshot_event()) == (200, {"status": "ok"})
    assert se.deliver(snapshot_event(), secret="whsec_other")[0] == 400


def test_secrets_manager_secret_is_cached(secrets_manager):
    arn = secrets_manager(se.SECRET)
    assert se.deliver(snapshot_event())[0] == 200
    secrets_manager.client.put_secret_value(SecretId=arn, SecretString="whsec_rotated")
    # within the cache's five minutes the first value is still used (no call per delivery)
    assert se.deliver(snapshot_event())[0] == 200
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()  # as after max_age
    assert se.deliver(snapshot_event())[0] == 400
    assert se.deliver(snapshot_event(), secret="whsec_rotated")[0] == 200


def test_unreadable_or_malformed_secret_is_503(secrets_manager):
    secrets_manager(None)  # no such secret
    status, body = se.deliver(snapshot_event())
    assert status == 503 and body["error"]["code"] == "unavailable"
    secrets_manager(json.dumps({"password": "x"}), name="metering/other")
    status, body = se.deliver(snapshot_event())
    assert status == 503 and body["error"]["code"] == "not_configured"
    assert stored() == NOTHING


# --- exactly once ---------------------------------------------------------------------------------


def test_unknown_event_type_is_ignored_and_stores_nothing():
    ev = se.event("customer.created", se.fixture("customer"), NOW)
    assert se.deliver(ev) == (200, {"status": "ignored"})
    plan_event = se.fixture("event")  # Stripe's own fixture event: plan.created
    assert se.deliver(plan_event) == (200, {"status": "ignored"})
    assert stored() == NOTHING


def handled_events():
    """One applied event of every handled type, for one user."""
    t = se.ts(P2[0])
    sub = "sub_1"
    cycle = se.cycle_invoice(
        "in_cycle",
        subscription_id=sub,
        price="price_basic_monthly",
        ending_start=P1[0],
        new_start=P2[0],
        new_end=P2[1],
    )
    return {
        "checkout.session.completed": se.event(
            "checkout.session.completed",
            se.checkout_session("cs_sub", mode="subscription", subscription_id=sub),
            t - 10,
        ),
        "customer.subscription.created": se.event(
            "customer.subscription.created",
            se.subscription(sub, price="price_basic_monthly", start=P1[0], end=P1[1], created=P1[0]),
            t,
        ),
        "customer.subscription.updated": se.event(
            "customer.subscription.updated",
            se.subscription(sub, price="price_basic_monthly", start=P2[0], end=P2[1], created=P1[0]),
            t + 10,
        ),
        "invoice.payment_failed": se.event("invoice.payment_failed", cycle, t + 20),
        "invoice.paid": se.event("invoice.paid", cycle, t + 30),
        "invoice.payment_succeeded": se.event("invoice.payment_succeeded", cycle, t + 31),
        "checkout.session.async_payment_succeeded": se.event(
            "checkout.session.async_payment_succeeded",
            se.checkout_session("cs_pack", mode="payment", payment_status="paid", pack="voice_1k"),
            t + 40,
        ),
        "customer.subscription.deleted": se.event(
            "customer.subscription.deleted",
            se.subscription(
                sub,
                price="price_basic_monthly",
                start=P2[0],
                end=P2[1],
                created=P1[0],
                status="canceled",
                canceled_at=t + 50,
            ),
            t + 50,
        ),
    }


def ledger_state():
    return [
        query("SELECT * FROM subscriptions ORDER BY subscription_id"),
        query(
            "SELECT user_id, stripe_customer_id, current_subscription_id, highest_rank, last_paid_at FROM accounts"
        ),
        query("SELECT user_id, period_start, period_end, plan_id, kind, rolled_over FROM periods ORDER BY 2"),
        query("SELECT user_id, usage_type, rollover, purchased FROM balances ORDER BY 1, 2"),
        query("SELECT count(*), coalesce(sum(delta), 0) FROM journal"),
        query("SELECT count(*) FROM renewals"),
        query("SELECT count(*) FROM topups"),
        query("SELECT event_id, outcome FROM stripe_events ORDER BY 1"),
    ]


def test_duplicates_of_every_handled_type_change_nothing():
    events = handled_events()
    for ev in events.values():
        assert se.deliver(ev)[0] == 200
    before = ledger_state()
    rollovers = query("SELECT ref, usage_type FROM journal WHERE reason = 'rollover' ORDER BY 2")
    assert [tuple(r) for r in rollovers] == [("in_cycle", "ocr_tokens"), ("in_cycle", "premium_voice")]
    assert query("SELECT count(*) FROM journal WHERE reason = 'topup'")[0][0] == 1
    for event_type, ev in events.items():
        assert se.deliver(ev) == (200, {"status": "duplicate"}), event_type
    assert ledger_state() == before
    assert_reconciled()


@pytest.mark.parametrize("event_type", sorted(handled_events()))
def test_each_handled_type_redelivered_is_a_duplicate(event_type):
    ev = handled_events()[event_type]
    first = se.deliver(ev)
    assert first[0] == 200 and first[1]["status"] in ("ok", "ignored")
    before = ledger_state()
    assert se.deliver(ev) == (200, {"status": "duplicate"})
    assert ledger_state() == before


def test_concurrent_duplicate_deliveries_apply_once():
    from concurrent.futures import ThreadPoolExecutor

    from metering.stripe_sync.apply import apply_event
    from metering.stripe_sync.objects import parse_event

    ev = handled_events()["checkout.session.async_payment_succeeded"]
    parsed = parse_event(json.dumps(ev))
    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(lambda _: apply_event(parsed), range(4)))
    assert outcomes == ["duplicate", "duplicate", "duplicate", "ok"]
    assert query("SELECT purchased FROM balances WHERE usage_type = 'premium_voice'")[0][0] == 1000
    assert_reconciled()


# --- a failure while applying leaves nothing behind ----------------------------------------------------


def test_failure_while_renewing_is_500_and_the_retry_applies_once(monkeypatch):
    from metering.stripe_sync import apply

    events = handled_events()
    for name in ("customer.subscription.created", "customer.subscription.updated"):
        assert se.deliver(events[name])[0] == 200
    before = ledger_state()

    real_rollover = apply._Sync.rollover

    def broken(self, *args, **kwargs):
        real_rollover(self, *args, **kwargs)  # the journal entries are written, then it fails
        raise RuntimeError("connection reset in the middle of a renewal")

    monkeypatch.setattr(apply._Sync, "rollover", broken)
    paid = events["invoice.paid"]
    status, body = se.deliver(paid)
    assert status == 500 and body == {
        "error": {"code": "internal_error", "message": "internal error; the request may be retried"}
    }
    assert ledger_state() == before  # no event id, no renewal claim, no journal entry, no period
    assert query("SELECT count(*) FROM stripe_events WHERE event_id = :e", e=paid["id"])[0][0] == 0

    monkeypatch.setattr(apply._Sync, "rollover", real_rollover)
    assert se.deliver(paid) == (200, {"status": "ok"})  # Stripe's retry
    assert se.deliver(paid) == (200, {"status": "duplicate"})
    assert se.deliver(events["invoice.payment_succeeded"]) == (200, {"status": "ok"})  # same invoice
    rows = query("SELECT usage_type, delta FROM journal WHERE reason = 'rollover' ORDER BY 1")
    assert [tuple(r) for r in rows] == [("ocr_tokens", 100000), ("premium_voice", 5000)]
    assert_reconciled()


def test_failure_while_crediting_a_topup_is_500_and_the_retry_credits_once(monkeypatch):
    from metering.db import ledger

    ev = handled_events()["checkout.session.async_payment_succeeded"]

    def broken(*args, **kwargs):
        raise RuntimeError("lost connection")

    monkeypatch.setattr(ledger, "post_entry", broken)
    assert se.deliver(ev)[0] == 500
    assert stored() == NOTHING | {"accounts": 0}
    monkeypatch.undo()
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    assert se.deliver(ev) == (200, {"status": "ok"})
    assert se.deliver(ev) == (200, {"status": "duplicate"})
    assert query("SELECT purchased FROM balances WHERE usage_type = 'premium_voice'")[0][0] == 1000
    assert query("SELECT count(*) FROM journal WHERE reason = 'topup'")[0][0] == 1
    assert_reconciled()
