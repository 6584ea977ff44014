"""The webhook signing secret: `STRIPE_WEBHOOK_SECRET`, else the Secrets Manager secret named by
`STRIPE_WEBHOOK_SECRET_ARN` (cached by Powertools for five minutes, so a rotation is picked up
without a redeploy). Fetched before any database transaction opens: no network call inside one.
"""

from __future__ import annotations

import json

from metering.config import get_settings
from metering.errors import NotConfigured, Unavailable

CACHE_SECONDS = 300
SECRET_KEY = "webhook_secret"


def secret_from_value(value: object) -> str | None:
    """A plain `whsec_...` string, or JSON `{"webhook_secret": "whsec_..."}`."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        found = data.get(SECRET_KEY) if isinstance(data, dict) else None
        return found.strip() if isinstance(found, str) and found.strip() else None
    return text


def webhook_secret() -> str:
    settings = get_settings()
    if settings.stripe_webhook_secret:
        return settings.stripe_webhook_secret
    if settings.stripe_webhook_secret_arn:
        from aws_lambda_powertools.utilities import parameters

        try:
            value = parameters.get_secret(settings.stripe_webhook_secret_arn, max_age=CACHE_SECONDS)
        except parameters.exceptions.GetParameterError as error:
            # answered 503, so Stripe retries the delivery once the secret can be read again
            raise Unavailable(f"STRIPE_WEBHOOK_SECRET_ARN: the secret cannot be read ({error})") from error
        secret = secret_from_value(value)
        if secret is None:
            raise NotConfigured(
                "STRIPE_WEBHOOK_SECRET_ARN: the secret must be a whsec_... string or JSON with "
                f"a {SECRET_KEY!r} key"
            )
        return secret
    raise NotConfigured("no Stripe webhook secret: set STRIPE_WEBHOOK_SECRET or STRIPE_WEBHOOK_SECRET_ARN")
