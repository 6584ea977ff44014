"""Stripe sync: the webhook's verification flow, the Stripe object shapes, and their effects
(api.md section 5 "POST /v1/stripe/webhook", metering.md "Stripe subscription lifecycle")."""

from metering.stripe_sync.objects import InvalidPayload, InvalidSignature
from metering.stripe_sync.webhook import TOLERANCE_SECONDS, Verifier, receive

__all__ = ["TOLERANCE_SECONDS", "InvalidPayload", "InvalidSignature", "Verifier", "receive"]
