"""Stripe webhook deliveries built from Stripe's own fixtures (tests/fixtures/stripe/, see its README).

Every object is a deep copy of the fixture of its resource with the fields a scenario needs set,
so each test event keeps Stripe's real shape (current API: periods on subscription items, an
invoice's subscription under `parent.subscription_details`, lines with `parent.type`). Events are
signed with Stripe's scheme and posted through the real handler.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.support.lambda_events import call, http_event
from tests.support.servers import LEDGER_TABLES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"
# each fixture file says where it comes from, with its API version: "... API version 2026-07-29.dahlia ..."
SOURCE = re.compile(r"\bAPI version \d{4}-\d{2}-\d{2}\.[a-z]+\b")
SECRET = "whsec_test_metering_0123456789abcdef"
PATH = "/v1/stripe/webhook"

_counter = 0


def load_fixture(path: Path) -> dict[str, Any]:
    """The Stripe object in `path` without its `_source` line; a file without one (naming the Stripe
    API version it follows) is refused."""
    obj: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    source = obj.pop("_source", None)
    if not isinstance(source, str) or not SOURCE.search(source):
        raise ValueError(f"{path}: no `_source` line naming the Stripe API version it follows")
    return obj


@cache
def _fixture(name: str) -> dict[str, Any]:
    return load_fixture(FIXTURES / f"{name}.json")


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(_fixture(name))


def ts(moment: datetime | int) -> int:
    return moment if isinstance(moment, int) else int(moment.timestamp())


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _next_id(prefix: str) -> str:
    global _counter
    _counter += 1
    return f"{prefix}_test{_counter:06d}"


# --- objects ---------------------------------------------------------------------------------------


def subscription(
    sub_id: str,
    *,
    price: str,
    start: datetime | int,
    end: datetime | int,
    status: str = "active",
    customer: str | None = "cus_test_1",
    user_id: str | None = "u1",
    created: datetime | int | None = None,
    cancel_at_period_end: bool = False,
    cancel_at: datetime | int | None = None,
    canceled_at: datetime | int | None = None,
    legacy_periods: bool = False,
) -> dict[str, Any]:
    """A subscription with one item on `price` for [start, end). `legacy_periods` puts the period
    on the subscription itself, as API versions before 2025-03-31 did."""
    sub = fixture("subscription")
    sub.update(
        id=sub_id,
        customer=customer,
        status=status,
        created=ts(created if created is not None else start),
        start_date=ts(created if created is not None else start),
        billing_cycle_anchor=ts(start),
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=None if cancel_at is None else ts(cancel_at),
        canceled_at=None if canceled_at is None else ts(canceled_at),
        ended_at=None,
        trial_start=None,
        trial_end=None,
        pending_update=None,
        metadata={} if user_id is None else {"user_id": user_id},
    )
    item = sub["items"]["data"][0]
    item["price"]["id"] = price
    item["plan"]["id"] = price
    item["subscription"] = sub_id
    sub["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    if legacy_periods:
        del item["current_period_start"], item["current_period_end"]
        sub["current_period_start"], sub["current_period_end"] = ts(start), ts(end)
    else:
        item["current_period_start"], item["current_period_end"] = ts(start), ts(end)
    return sub


def line(
    *,
    price: str | None,
    start: datetime | int,
    end: datetime | int,
    subscription_id: str,
    proration: bool = False,
    kind: str = "subscription_item_details",
    invoice_id: str = "in_test",
) -> dict[str, Any]:
    item = fixture("line_item")
    item["id"] = _next_id("il")
    item["invoice"] = invoice_id
    item["period"] = {"start": ts(start), "end": ts(end)}
    parent = item["parent"]
    parent["type"] = kind
    parent["subscription_item_details"].update(
        proration=proration, subscription=subscription_id, subscription_item="si_test"
    )
    parent["invoice_item_details"]["proration"] = proration
    if price is not None:
        item["pricing"]["price_details"] = {"price": price, "product": "prod_test"}
    if not proration:
        parent["subscription_item_details"]["proration_details"] = {"credited_items": None}
    return item


def invoice(
    invoice_id: str,
    *,
    subscription_id: str | None,
    billing_reason: str = "subscription_cycle",
    period_start: datetime | int,
    period_end: datetime | int,
    lines: list[dict[str, Any]] | None = None,
    customer: str | None = "cus_test_1",
    user_id: str | None = "u1",
    status: str = "paid",
    legacy_subscription: bool = False,
) -> dict[str, Any]:
    """An invoice; the subscription under `parent.subscription_details` (or, `legacy_subscription`,
    the top-level field of older API versions)."""
    inv = fixture("invoice")
    inv.update(
        id=invoice_id,
        customer=customer,
        billing_reason=billing_reason,
        period_start=ts(period_start),
        period_end=ts(period_end),
        status=status,
    )
    inv["lines"]["data"] = [dict(li, invoice=invoice_id) for li in lines or []]
    inv["lines"]["url"] = f"/v1/invoices/{invoice_id}/lines"
    metadata = {} if user_id is None else {"user_id": user_id}
    if subscription_id is None:
        inv["parent"] = None
    elif legacy_subscription:
        inv["parent"] = None
        inv["subscription"] = subscription_id
        inv["subscription_details"] = {"metadata": metadata}
    else:
        inv["parent"] = {
            "quote_details": None,
            "subscription_details": {"metadata": metadata, "subscription": subscription_id},
            "type": "subscription_details",
        }
    return inv


def cycle_invoice(
    invoice_id: str,
    *,
    subscription_id: str,
    price: str | None,
    ending_start: datetime | int,
    new_start: datetime | int,
    new_end: datetime | int,
    with_proration: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """A renewal invoice: period_start = the ending period's start, and a subscription line for the
    new period (after a proration line, which must not be taken for it)."""
    lines = []
    if with_proration:
        lines.append(
            line(
                price=price,
                start=ending_start,
                end=new_start,
                subscription_id=subscription_id,
                proration=True,
                invoice_id=invoice_id,
            )
        )
    lines.append(
        line(
            price=price, start=new_start, end=new_end, subscription_id=subscription_id, invoice_id=invoice_id
        )
    )
    return invoice(
        invoice_id,
        subscription_id=subscription_id,
        period_start=ending_start,
        period_end=new_start,
        lines=lines,
        **fields,
    )


def checkout_session(
    session_id: str,
    *,
    mode: str,
    payment_status: str = "paid",
    user_id: str | None = "u1",
    client_reference_id: str | None = None,
    customer: str | None = "cus_test_1",
    subscription_id: str | None = None,
    pack: str | None = None,
    quantity: str | None = None,
) -> dict[str, Any]:
    session = fixture("checkout.session")
    metadata: dict[str, str] = {}
    if user_id is not None:
        metadata["user_id"] = user_id
    if pack is not None:
        metadata["pack"] = pack
    if quantity is not None:
        metadata["quantity"] = quantity
    session.update(
        id=session_id,
        mode=mode,
        payment_status=payment_status,
        status="complete",
        metadata=metadata,
        client_reference_id=client_reference_id,
        customer=customer,
        subscription=subscription_id,
        payment_intent=None if mode == "subscription" else "pi_test",
    )
    return session


# --- events, signing, delivery ----------------------------------------------------------------------


def event(
    event_type: str, obj: dict[str, Any], created: datetime | int, event_id: str | None = None
) -> dict[str, Any]:
    ev = fixture("event")
    ev.update(
        id=event_id or _next_id("evt"),
        type=event_type,
        created=ts(created),
        api_version="2025-08-27.basil",
        data={"object": obj},
    )
    return ev


def sign(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def payload_of(ev: dict[str, Any]) -> str:
    return json.dumps(ev, indent=2)  # as Stripe sends it: pretty-printed JSON


def deliver(
    ev: dict[str, Any] | None = None,
    *,
    secret: str = SECRET,
    payload: str | None = None,
    signature: str | None = None,
    timestamp: int | None = None,
    header_name: str = "Stripe-Signature",
    base64_body: bool = False,
    omit_signature: bool = False,
) -> tuple[int, Any]:
    """POST one delivery through the real handler; returns (status, parsed body)."""
    body = payload if payload is not None else payload_of(ev or {})
    headers = {"user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
    if not omit_signature:
        headers_value = signature if signature is not None else sign(body, secret, timestamp)
        headers[header_name] = headers_value
    request = http_event("POST", PATH, raw_body=body, headers=headers, iam=False, base64_body=base64_body)
    # http_event lowercases header names as API Gateway does; keep the given spelling to prove that
    # the lookup is case-insensitive whatever the event holds
    if not omit_signature and header_name != header_name.lower():
        request["headers"][header_name] = request["headers"].pop(header_name.lower())
    return call("stripe_webhook", request)


@cache
def _engine(url: str) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)


def sql(statement: str, **params: Any) -> list[Any]:
    """Read the test database over one kept connection (state.query opens an engine per call)."""
    with _engine(os.environ["DATABASE_URL"]).connect() as conn:
        return list(conn.execute(text(statement), params).all())


def ok(ev: dict[str, Any], expected: str = "ok") -> None:
    status, body = deliver(ev)
    assert (status, body) == (200, {"status": expected}), (ev["type"], ev["id"], status, body)


# --- the state a set of events leaves behind (ids and bookkeeping times left out) --------------------


def final_state() -> dict[str, list[tuple[Any, ...]]]:
    def rows(statement: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in sql(statement)]

    return {
        "subscriptions": rows(
            "SELECT subscription_id, user_id, customer_id, price_id, plan_id, status, stripe_status,"
            " current_period_start, current_period_end, billing_cycle_anchor, cancel_at_period_end, cancel_at,"
            " canceled_at, created, snapshot_created, status_created FROM subscriptions ORDER BY 1"
        ),
        "accounts": rows(
            "SELECT user_id, stripe_customer_id, current_subscription_id, current_subscription_created,"
            " highest_rank, last_paid_at FROM accounts ORDER BY 1"
        ),
        "periods": rows(
            "SELECT user_id, period_start, period_end, plan_id, kind, subscription_id, rolled_over"
            " FROM periods ORDER BY 1, 2"
        ),
        "used": rows(
            "SELECT p.user_id, p.period_start, u.usage_type, u.used FROM period_usage u JOIN periods p"
            " USING (period_id) WHERE u.used <> 0 ORDER BY 1, 2, 3"
        ),
        "balances": rows(
            "SELECT user_id, usage_type, rollover, purchased FROM balances"
            " WHERE rollover <> 0 OR purchased <> 0 ORDER BY 1, 2"
        ),
        "journal": rows(
            "SELECT user_id, usage_type, account, reason, ref, sum(delta) FROM journal"
            " GROUP BY 1, 2, 3, 4, 5 HAVING sum(delta) <> 0 ORDER BY 1, 2, 3, 4, 5"
        ),
        "renewals": rows(
            "SELECT invoice_id, user_id, subscription_id, ending_period_start, new_period_start, new_period_end"
            " FROM renewals ORDER BY 1"
        ),
        "topups": rows(
            "SELECT checkout_session_id, user_id, pack_id, quantity, amount FROM topups ORDER BY 1"
        ),
        "pending": rows("SELECT event_id FROM stripe_pending_events ORDER BY 1"),
        "events": rows("SELECT event_id FROM stripe_events ORDER BY 1"),
    }


WIPE_ORDER = LEDGER_TABLES  # every table the service writes, dependents first


def wipe() -> None:
    """Empty what the Stripe sync and records write: DELETE is ~100x quicker than TRUNCATE on these
    few rows (the journal's append-only trigger is bypassed for this session only, where allowed)."""
    deletes = "; ".join(f"DELETE FROM {table}" for table in WIPE_ORDER)
    with _engine(os.environ["DATABASE_URL"]).connect() as conn:
        try:
            conn.exec_driver_sql(
                f"SET session_replication_role = replica; {deletes}; SET session_replication_role = origin"
            )
        except DBAPIError:  # not a superuser: TRUNCATE instead
            conn.execute(text(f"TRUNCATE {', '.join(WIPE_ORDER)}"))
