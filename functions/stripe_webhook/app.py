"""StripeWebhookFunction: POST /v1/stripe/webhook. The Stripe signature is the route's auth."""

from typing import Any

import stripe
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from metering.api.http import ERROR_RESPONSES, make_resolver
from metering.observability import logger, metrics
from metering.stripe_sync import TOLERANCE_SECONDS, InvalidPayload, InvalidSignature, receive

app = make_resolver()


def verify_signature(body: str, signature: str | None, secret: str) -> None:
    """Stripe's own scheme (HMAC-SHA256 over "<t>.<raw body>", 300 s tolerance)."""
    try:
        stripe.WebhookSignature.verify_header(body, signature, secret, tolerance=TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as error:
        raise InvalidSignature(f"Stripe-Signature: {error.user_message or error}") from None


@app.post(
    "/v1/stripe/webhook",
    summary="Stripe webhook deliveries (verified by their Stripe-Signature)",
    responses={200: {"description": "ok, duplicate, stale or ignored"}, **ERROR_RESPONSES},
)
def stripe_webhook() -> dict[str, str]:
    event = app.current_event
    try:
        body = event.decoded_body or ""  # the raw bytes Stripe signed, base64-decoded if need be
    except ValueError:  # invalid base64 or not UTF-8
        raise InvalidPayload("body: is not UTF-8 text") from None
    # HTTP API lowercases header names; Powertools' headers are case-insensitive anyway
    status = receive(body, event.headers.get("stripe-signature"), verify_signature)
    return {"status": status}


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
