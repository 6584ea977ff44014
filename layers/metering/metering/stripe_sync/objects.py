"""The Stripe shapes the webhook reads, parsed into plain dataclasses (api.md section 5, "Mapping").

Pure functions, no database and no `stripe` import (the layer does not ship the stripe library).
Current API versions keep a subscription's period on its items and an invoice's subscription under
`parent.subscription_details`; the older top-level fields are the fallback when those are absent.
Ids may arrive as strings or as expanded objects (`{"id": ...}`); both are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from metering.domain.subscriptions import TERMINAL_STATUS
from metering.errors import BadInput

SUBSCRIPTION_CREATED = "customer.subscription.created"
SUBSCRIPTION_UPDATED = "customer.subscription.updated"
SUBSCRIPTION_DELETED = "customer.subscription.deleted"
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_SUCCEEDED = "invoice.payment_succeeded"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
CHECKOUT_COMPLETED = "checkout.session.completed"
CHECKOUT_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"

SNAPSHOT_TYPES = frozenset({SUBSCRIPTION_CREATED, SUBSCRIPTION_UPDATED, SUBSCRIPTION_DELETED})
PAID_TYPES = frozenset({INVOICE_PAID, INVOICE_PAYMENT_SUCCEEDED})
INVOICE_TYPES = PAID_TYPES | {INVOICE_PAYMENT_FAILED}
CHECKOUT_TYPES = frozenset({CHECKOUT_COMPLETED, CHECKOUT_ASYNC_SUCCEEDED})
HANDLED_TYPES = SNAPSHOT_TYPES | INVOICE_TYPES | CHECKOUT_TYPES

# Stripe's status -> ours (api.md: "Stripe's own, except incomplete_expired -> canceled and unpaid ->
# past_due"); a deleted subscription is canceled whatever its object says.
STATUS_MAP = {"incomplete_expired": "canceled", "unpaid": "past_due"}
NEVER_STARTED = frozenset({"incomplete", "incomplete_expired"})  # the first payment never went through


class InvalidSignature(BadInput):
    """Missing or wrong Stripe-Signature, or a timestamp outside the tolerance."""

    code = "invalid_signature"


class InvalidPayload(BadInput):
    """A verified body that is not a Stripe event."""

    code = "invalid_payload"


class ObjectError(ValueError):
    """An event of a handled type whose object lacks what its handling needs."""


# --- small readers ---------------------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def ref_id(value: Any) -> str | None:
    """An id given as a string or as an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return str(value["id"])
    return None


def epoch(value: Any) -> datetime | None:
    """Epoch seconds (Stripe's timestamps) as an aware UTC datetime; None when absent or invalid."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def user_id_of(value: Any) -> str | None:
    """A usable user id (1-255 characters), or None."""
    if isinstance(value, str) and 1 <= len(value) <= 255:
        return value
    return None


def metadata_user(obj: Any) -> str | None:
    return user_id_of(_dict(_dict(obj).get("metadata")).get("user_id"))


def map_status(stripe_status: str, *, deleted: bool = False) -> str:
    return TERMINAL_STATUS if deleted else STATUS_MAP.get(stripe_status, stripe_status)


def _period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime] | None:
    return (start, end) if start is not None and end is not None and end > start else None


# --- the event envelope ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StripeEvent:
    id: str
    type: str
    created: int  # epoch seconds: the ordering key
    object: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def object_id(self) -> str | None:
        return ref_id(self.object)


def parse_event(payload: str | dict[str, Any]) -> StripeEvent:
    """A verified body as an event; InvalidPayload when it is not JSON or lacks id/type/created/object."""
    if isinstance(payload, str):
        try:
            data = json.loads(payload)
        except ValueError:
            raise InvalidPayload("body: is not valid JSON") from None
    else:
        data = payload
    if not isinstance(data, dict):
        raise InvalidPayload("body: must be a Stripe event object")
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    obj = _dict(data.get("data")).get("object")
    problems = []
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 255:
        problems.append("id: must be the event's id")
    if not isinstance(event_type, str) or not event_type:
        problems.append("type: must be the event's type")
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        problems.append("created: must be epoch seconds")
    if not isinstance(obj, dict):
        problems.append("data.object: must be an object")
    if problems:
        raise InvalidPayload("; ".join(problems))
    assert isinstance(event_id, str) and isinstance(event_type, str) and isinstance(created, int)
    assert isinstance(obj, dict)
    return StripeEvent(id=event_id, type=event_type, created=created, object=obj, raw=data)


# --- subscription ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    customer: str | None
    user_id: str | None  # metadata.user_id
    stripe_status: str
    price_id: str | None  # the first item's price
    period: tuple[datetime, datetime] | None  # the first item's period, else the top-level one
    billing_cycle_anchor: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    created: datetime | None

    def status(self, *, deleted: bool = False) -> str:
        return map_status(self.stripe_status, deleted=deleted)

    @property
    def period_start(self) -> datetime | None:
        return self.period[0] if self.period else None

    @property
    def period_end(self) -> datetime | None:
        return self.period[1] if self.period else None


def parse_subscription(obj: dict[str, Any]) -> Subscription:
    sub_id = ref_id(obj)
    status = obj.get("status")
    if sub_id is None or not isinstance(status, str) or not status:
        raise ObjectError("a subscription needs its id and status")
    items = _dict(obj.get("items")).get("data")
    first = _dict(items[0]) if isinstance(items, list) and items else {}
    price = first.get("price")
    price_id = ref_id(price) or ref_id(first.get("plan"))
    period = _period(epoch(first.get("current_period_start")), epoch(first.get("current_period_end")))
    if period is None:  # API versions before 2025-03-31 keep the period on the subscription
        period = _period(epoch(obj.get("current_period_start")), epoch(obj.get("current_period_end")))
    return Subscription(
        id=sub_id,
        customer=ref_id(obj.get("customer")),
        user_id=metadata_user(obj),
        stripe_status=status,
        price_id=price_id,
        period=period,
        billing_cycle_anchor=epoch(obj.get("billing_cycle_anchor")),
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
        cancel_at=epoch(obj.get("cancel_at")),
        canceled_at=epoch(obj.get("canceled_at")),
        created=epoch(obj.get("created")),
    )


# --- invoice -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: str | None  # parent.type (current) or the older top-level `type`
    proration: bool
    period: tuple[datetime, datetime] | None
    price_id: str | None

    @property
    def bills_subscription(self) -> bool:
        return self.kind in ("subscription_item_details", "subscription") and not self.proration


def parse_line(obj: Any) -> InvoiceLine:
    line = _dict(obj)
    parent = _dict(line.get("parent"))
    if parent:
        kind = parent.get("type") if isinstance(parent.get("type"), str) else None
        details = _dict(parent.get(kind)) if kind else {}
        proration = details.get("proration") is True
    else:  # before 2025-03-31: `type` ("subscription" / "invoiceitem") and `proration` on the line
        kind = line.get("type") if isinstance(line.get("type"), str) else None
        proration = line.get("proration") is True
    period_obj = _dict(line.get("period"))
    pricing = _dict(line.get("pricing"))
    price_id = (
        ref_id(_dict(pricing.get("price_details")).get("price"))
        or ref_id(line.get("price"))
        or ref_id(line.get("plan"))
    )
    return InvoiceLine(
        kind=kind,
        proration=proration,
        period=_period(epoch(period_obj.get("start")), epoch(period_obj.get("end"))),
        price_id=price_id,
    )


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    customer: str | None
    subscription_id: str | None
    user_id: str | None  # the subscription's metadata.user_id as the invoice carries it
    billing_reason: str | None
    period_start: datetime | None
    period_end: datetime | None
    lines: tuple[InvoiceLine, ...]
    paid_at: datetime | None

    @property
    def subscription_line(self) -> InvoiceLine | None:
        """The first line billing the subscription itself (not a proration): the new period."""
        return next((line for line in self.lines if line.bills_subscription), None)

    @property
    def is_cycle(self) -> bool:
        return self.billing_reason == "subscription_cycle"


def parse_invoice(obj: dict[str, Any]) -> Invoice:
    invoice_id = ref_id(obj)
    if invoice_id is None:
        raise ObjectError("an invoice needs its id")
    details = _dict(_dict(obj.get("parent")).get("subscription_details"))
    legacy_details = _dict(obj.get("subscription_details"))  # 2023-08-16 .. 2025-03-31
    subscription_id = ref_id(details.get("subscription")) or ref_id(obj.get("subscription"))
    user = (
        user_id_of(_dict(details.get("metadata")).get("user_id"))
        or user_id_of(_dict(legacy_details.get("metadata")).get("user_id"))
        or metadata_user(obj)
    )
    lines_data = _dict(obj.get("lines")).get("data")
    lines = tuple(parse_line(line) for line in lines_data) if isinstance(lines_data, list) else ()
    reason = obj.get("billing_reason")
    return Invoice(
        id=invoice_id,
        customer=ref_id(obj.get("customer")),
        subscription_id=subscription_id,
        user_id=user,
        billing_reason=reason if isinstance(reason, str) else None,
        period_start=epoch(obj.get("period_start")),
        period_end=epoch(obj.get("period_end")),
        lines=lines,
        paid_at=epoch(_dict(obj.get("status_transitions")).get("paid_at")),
    )


# --- checkout session --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    mode: str | None
    payment_status: str | None
    user_id: str | None  # metadata.user_id, else client_reference_id
    customer: str | None
    subscription_id: str | None
    pack_id: str | None
    quantity: int | None  # None when metadata.quantity is not a positive integer

    @property
    def is_paid(self) -> bool:
        return self.payment_status == "paid"


def _quantity(value: Any) -> int | None:
    if value is None or value == "":
        return 1
    if isinstance(value, bool):
        return None
    try:
        quantity = int(str(value).strip())
    except ValueError:
        return None
    return quantity if 1 <= quantity <= 1_000_000 else None


def parse_checkout_session(obj: dict[str, Any]) -> CheckoutSession:
    session_id = ref_id(obj)
    if session_id is None:
        raise ObjectError("a checkout session needs its id")
    metadata = _dict(obj.get("metadata"))
    pack = metadata.get("pack")
    return CheckoutSession(
        id=session_id,
        mode=obj.get("mode") if isinstance(obj.get("mode"), str) else None,
        payment_status=obj.get("payment_status") if isinstance(obj.get("payment_status"), str) else None,
        user_id=user_id_of(metadata.get("user_id")) or user_id_of(obj.get("client_reference_id")),
        customer=ref_id(obj.get("customer")),
        subscription_id=ref_id(obj.get("subscription")),
        pack_id=pack if isinstance(pack, str) and pack else None,
        quantity=_quantity(metadata.get("quantity")),
    )
