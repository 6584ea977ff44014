"""`make dev` delivers usage alerts in the background (issue 19): with ALERT_WEBHOOK_URL and
ALERT_WEBHOOK_SECRET set, an alert written by a request reaches a local receiver, signed."""

from __future__ import annotations

from tests.local.test_make_dev import make_dev, request
from tests.support.alerts import SECRET, Receiver


def _adjust(port: int, adjustment_id: str, delta: int) -> int:
    body = {
        "adjustment_id": adjustment_id,
        "usage_type": "ocr_tokens",
        "pool": "purchased",
        "delta": delta,
        "reason": "dev",
    }
    return request(port, "POST", "/v1/users/dev-user/adjustments", body)[0]


def test_make_dev_delivers_alerts_to_a_local_receiver(clean, tmp_path):
    receiver = Receiver(mode="ok")
    log = tmp_path / "dev.log"
    try:
        with make_dev(log, ALERT_WEBHOOK_URL=receiver.url, ALERT_WEBHOOK_SECRET=SECRET) as port:
            assert f"alerts: delivered every 2 s to {receiver.url}" in log.read_text()
            # the shipped catalog, free plan (ocr_tokens 0): credit given, then taken: ocr_depleted
            assert _adjust(port, "give", 100) == 201
            assert _adjust(port, "take", -100) == 201
            assert receiver.acked.wait(timeout=30), log.read_text()
    finally:
        receiver.close()
    assert receiver.rejected_signatures == 0
    ((webhook_id, alert),) = receiver.acknowledged
    assert webhook_id.startswith("alert_")
    assert (alert["alert_id"], alert["user_id"], alert["available"]) == ("ocr_depleted", "dev-user", 0)


def test_make_dev_without_targets_says_alerts_stay_pending(clean, tmp_path):
    log = tmp_path / "dev.log"
    with make_dev(log):
        assert "alerts: kept pending" in log.read_text()
