"""Usage alerts in tests: the test catalog with alerts, and the outbox rows."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time
from pathlib import Path

import yaml
from standardwebhooks import Webhook, WebhookVerificationError

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
        "SELECT * FROM alerts WHERE CAST(:u AS text) IS NULL OR user_id = :u ORDER BY alert_id, period_start",
        u=user_id,
    )


def fired(user_id: str | None = None) -> list[str]:
    return [row.alert_id for row in alert_rows(user_id)]


# --- a real webhook receiver ------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"alerts-test-secret-0123456789abcd").decode()


class Receiver:
    """A local HTTP webhook receiver in a thread, verifying every request with `standardwebhooks`.

    `mode`: "down" (bound, not listening: connections are refused), "ok" (answers 204), "500",
    or "slow" (answers, never acknowledged: `delay` is past the sender's timeout). Every answer
    waits `delay` seconds. `acknowledged` lists the
    (webhook-id, body) of every request answered 2xx; `seen` the webhook-id of every request."""

    def __init__(self, secret: str = SECRET, *, mode: str = "ok", delay: float = 0.0) -> None:
        self.secret = secret
        self.mode = mode
        self.delay = delay
        self.seen: list[str] = []
        self.acknowledged: list[tuple[str, dict]] = []
        self.rejected_signatures = 0
        self.lock = threading.Lock()
        self.acked = threading.Event()  # set at each acknowledgement
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                data = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(data, headers)
                except WebhookVerificationError:
                    with receiver.lock:
                        receiver.rejected_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.seen.append(headers["webhook-id"])
                    mode = receiver.mode
                if receiver.delay:
                    time.sleep(receiver.delay)  # the receiver's behaviour under test, not a wait
                if mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    return
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:  # the sender gave up (timeout): not acknowledged
                    return
                if mode == "ok":
                    with receiver.lock:
                        receiver.acknowledged.append((headers["webhook-id"], payload))
                    receiver.acked.set()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.server_bind()
        self.listening = False
        if mode != "down":
            self.up()
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks/metering"

    def up(self, mode: str = "ok") -> None:
        self.mode = mode
        if not self.listening:
            self.server.server_activate()
            self.listening = True
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()

    def close(self) -> None:
        if self.listening:
            self.server.shutdown()
        self.server.server_close()


def deliver_until_idle(url: str, timeout_s: float) -> list[dict[str, int]]:
    """A delivery function's container (`containers.run_containers`): passes until one claims
    nothing."""
    from metering.services.alert_delivery import Targets, deliver_due

    t = Targets(webhook_url=url, webhook_secret=SECRET, timeout_s=timeout_s)
    reports = []
    while True:
        report = deliver_due(limit=5, t=t)
        reports.append(report.as_dict())
        if report.claimed == 0:
            return reports
