"""Usage alerts in tests: the test catalog with alerts, and the outbox rows."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.support.servers import reset_caches
from tests.support.state import TEST_CATALOG, query

# basic: premium_voice 5,000 (pooled), ocr_tokens 100,000; free: ocr_tokens 100, server_kokoro 1,000
ALERTS = [
    {"id": "voice_80", "usage_type": "premium_voice", "at_percent": 80},
    {"id": "voice_100", "usage_type": "premium_voice", "at_percent": 100},
    {"id": "voice_out", "usage_type": "premium_voice", "when": "available_depleted"},
    {"id": "ocr_50", "usage_type": "ocr_tokens", "at_percent": 50},
    {"id": "tts_90", "usage_type": "server_kokoro", "at_percent": 90},
]


def use_alert_catalog(directory: Path, alerts: list[dict] | None = None) -> Path:
    """The test catalog plus `alerts` (default ALERTS), as METERING_CATALOG."""
    data = yaml.safe_load(TEST_CATALOG.read_text())
    data["alerts"] = ALERTS if alerts is None else alerts
    path = directory / "catalog-alerts.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ["METERING_CATALOG"] = str(path)
    reset_caches()
    return path


def alert_rows(user_id: str | None = None) -> list:
    return query(
        "SELECT id, user_id, alert_id, usage_type, period_start, period_end, threshold, used,"
        " allowance, available, occurred_at, state, attempts FROM alerts"
        " WHERE CAST(:u AS text) IS NULL OR user_id = :u ORDER BY alert_id, period_start",
        u=user_id,
    )


def fired(user_id: str | None = None) -> list[str]:
    return [row.alert_id for row in alert_rows(user_id)]
