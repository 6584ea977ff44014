"""Client of the metering service for product backends (api.md section 7)."""

from metering_client._version import __version__
from metering_client.client import AsyncMeteringClient, MeteringClient
from metering_client.errors import EventIdConflict, MeteringError, NotFound, Unavailable, UsageLimitExceeded
from metering_client.models import (
    AdjustmentResult,
    Balance,
    BatchItem,
    BatchResult,
    Breakdown,
    CheckResult,
    GrantResult,
    LedgerEntry,
    RecordResult,
    Stats,
    Summary,
    UsageBreakdown,
    UsageEvent,
)

__all__ = [
    "AdjustmentResult",
    "AsyncMeteringClient",
    "Balance",
    "BatchItem",
    "BatchResult",
    "Breakdown",
    "CheckResult",
    "EventIdConflict",
    "GrantResult",
    "LedgerEntry",
    "MeteringClient",
    "MeteringError",
    "NotFound",
    "RecordResult",
    "Stats",
    "Summary",
    "Unavailable",
    "UsageBreakdown",
    "UsageEvent",
    "UsageLimitExceeded",
    "__version__",
]
