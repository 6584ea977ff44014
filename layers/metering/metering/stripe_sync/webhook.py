"""POST /v1/stripe/webhook, transport-free: secret, verification, parsing, application.

The layer never imports `stripe` (the webhook function ships it): the function passes in the
verification callable, which raises `InvalidSignature` when the body or its signature is not good.
"""

from __future__ import annotations

from collections.abc import Callable

from metering.stripe_sync.apply import apply_event
from metering.stripe_sync.objects import parse_event
from metering.stripe_sync.secret import webhook_secret

TOLERANCE_SECONDS = 300

# verify(raw_body, signature_header, secret): returns, or raises InvalidSignature
Verifier = Callable[[str, str | None, str], None]


def receive(body: str, signature: str | None, verify: Verifier) -> str:
    """Handle one delivery; returns the status to answer ("ok", "duplicate", "stale", "ignored").

    Raises NotConfigured (503) without a secret, InvalidSignature / InvalidPayload (400) before
    anything is stored. The secret is read (maybe over the network) before any transaction opens.
    """
    secret = webhook_secret()
    verify(body, signature, secret)
    return apply_event(parse_event(body))
