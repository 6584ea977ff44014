"""The one place that owns logging, metrics and tracing, so keys and metric names stay consistent.

Tracer is created lazily: its X-Ray SDK import costs ~0.5 s of cold start, which the check path
does not pay unless tracing is used (Lambda still records the invocation segment itself).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from metering import snapstart

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "metering")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Metering")

# Headers that carry credentials: never written to a log, even when Powertools logs whole events
# (POWERTOOLS_LOGGER_LOG_EVENT=true).
SECRET_HEADERS = frozenset({"authorization", "stripe-signature", "cookie", "x-amz-security-token"})


def redact(value: Any) -> Any:
    """A copy of a logged value with credential headers replaced."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if isinstance(k, str) and k.lower() in SECRET_HEADERS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class _RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            record.msg = redact(record.msg)
        return True


logger = Logger(service=SERVICE)
logger.addFilter(_RedactCredentials())
metrics = Metrics(service=SERVICE, namespace=NAMESPACE)

# AWS SDK debug logs include response bodies (a fetched secret) and signed URLs (an RDS IAM token):
# keep them quiet even when the runtime's root logger is set to DEBUG.
for _name in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)


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
    SCHEMA_BEHIND = "DatabaseSchemaBehind"  # this code runs on a database its migration has not reached


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


# Every handler imports this module during its init, where SnapStart's hook must be registered
# (a hook registered later is never run): see metering.snapstart.
snapstart.register()
