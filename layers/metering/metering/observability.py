"""The one place that owns logging, metrics and tracing, so keys and metric names stay consistent.

Tracer is created lazily: its X-Ray SDK import costs ~0.5 s of cold start, which the check path
does not pay unless tracing is used (Lambda still records the invocation segment itself).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "metering")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Metering")

logger = Logger(service=SERVICE)
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)


@lru_cache(maxsize=1)
def get_tracer() -> Tracer:
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE)


# Metric names, in one place.
class Metric:
    RESERVATIONS_UNAVAILABLE = "ReservationsUnavailable"
    CHECK_DENIED = "CheckDenied"
    USAGE_RECORDED = "UsageRecorded"
    USAGE_DUPLICATE = "UsageDuplicate"
    USAGE_REJECTED = "UsageRejected"
    QUEUE_DEAD_LETTERED = "QueueMessagesDeadLettered"
    STRIPE_EVENT = "StripeEventApplied"
    STRIPE_STALE = "StripeEventStale"


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
