"""AlertDeliveryFunction: delivers pending usage alerts (api.md section 7), every minute by its
schedule, or invoked directly (any event; `{"limit": n}` caps one claim).

Each pass claims due alerts in a short transaction, delivers them with no transaction open, then
settles them (`metering.services.alert_delivery`). Passes go on while a full batch was due and
enough time is left for another (each delivery may take the webhook timeout); what is left is
the next run's.
"""

from __future__ import annotations

from typing import Any

from metering.observability import logger, metrics
from metering.services.alert_delivery import BATCH, Report, deliver_due, targets, worst_pass

SAFETY_MS = 10_000


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(event: Any, context: Any) -> dict[str, int]:
    limit = event.get("limit") if isinstance(event, dict) else None
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 500 else BATCH
    t = targets()  # the secret is fetched here, before any transaction
    total = Report()
    while True:
        one = deliver_due(limit=limit, t=t)
        for name in ("claimed", "delivered", "retrying", "dead"):
            setattr(total, name, getattr(total, name) + getattr(one, name))
        worst_ms = worst_pass(t, limit).total_seconds() * 1000
        if one.claimed < limit or context.get_remaining_time_in_millis() < worst_ms + SAFETY_MS:
            break
    logger.info("alert delivery pass", extra=total.as_dict())
    return total.as_dict()
