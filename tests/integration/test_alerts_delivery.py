"""Usage alerts, the delivering side (api.md section 7), against a real local HTTP receiver that
verifies every signature with `standardwebhooks`, and EventBridge under moto: a receiver that is
down, slow or failing delays alerts but loses none; an acknowledged alert is never sent again;
every retry carries the same webhook-id; dead alerts can be listed and replayed; two delivery
functions at once deliver each alert once; a record never waits for a receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import boto3
import pytest
from moto import mock_aws

from metering.cli import main as cli
from metering.services import alert_delivery
from metering.services.alert_delivery import Targets, backoff, deliver_due, list_alerts, webhook_id
from tests.conftest import ROOT
from tests.support import api
from tests.support.alerts import SECRET, Receiver, alert_rows, deliver_until_idle, use_alert_catalog
from tests.support.containers import run_containers
from tests.support.state import query, subscribe

pytestmark = pytest.mark.xdist_group("concurrency")


@pytest.fixture(autouse=True)
def catalog(clean, tmp_path):
    use_alert_catalog(tmp_path)


@pytest.fixture
def receiver():
    r = Receiver(mode="down")
    yield r
    r.close()


def _cross(user_id: str) -> None:
    """voice_80, voice_100 and voice_out for `user_id` (basic: 5,000, nothing else)."""
    subscribe(user_id, "basic", subscription_id=f"sub_{user_id}")
    assert api.record(f"{user_id}-e", user_id, "premium_voice", 5000)[0] == 201


def _webhook(r: Receiver, timeout_s: float = 2.0) -> Targets:
    return Targets(webhook_url=r.url, webhook_secret=SECRET, timeout_s=timeout_s)


def test_down_slow_failing_then_up_loses_nothing_and_sends_each_once(receiver):
    _cross("u1")
    _cross("u2")
    rows = {r.id: r for r in alert_rows()}
    assert len(rows) == 6
    t0 = datetime.now(UTC)

    # down: refused, every alert retried after the first backoff
    report = deliver_due(t0, t=_webhook(receiver))
    assert report.as_dict() == {"claimed": 6, "delivered": 0, "retrying": 6, "dead": 0}
    assert {(r.state, r.attempts) for r in alert_rows()} == {("pending", 1)}
    assert all("webhook" in e for e in report.errors)
    assert deliver_due(t0 + timedelta(seconds=29), t=_webhook(receiver)).claimed == 0  # not due yet

    # slow: past the sender's timeout, not acknowledged: retried
    receiver.up("slow")
    receiver.delay = 0.5
    t1 = t0 + backoff(1)
    report = deliver_due(t1, t=_webhook(receiver, timeout_s=0.2))
    assert report.retrying == 6 and receiver.acknowledged == []
    assert len(receiver.seen) == 6

    # failing: 500 answers are retried
    receiver.mode, receiver.delay = "500", 0.0
    t2 = t1 + backoff(2)
    assert deliver_due(t2, t=_webhook(receiver)).retrying == 6
    assert {(r.state, r.attempts) for r in alert_rows()} == {("pending", 3)}
    assert {r.next_attempt_at for r in alert_rows()} == {t2 + backoff(3)}

    # up: every alert once
    receiver.mode = "ok"
    t3 = t2 + backoff(3)
    assert deliver_due(t3, t=_webhook(receiver)).delivered == 6
    assert receiver.rejected_signatures == 0
    acked = dict(receiver.acknowledged)
    assert sorted(acked) == sorted(f"alert_{UUID(str(i)).hex}" for i in rows)
    assert len(receiver.acknowledged) == 6  # each once
    # every attempt of one alert carried the same webhook-id
    assert sorted(set(receiver.seen)) == sorted(acked) and len(receiver.seen) == 6 * 3
    assert {(r.state, r.attempts) for r in alert_rows()} == {("delivered", 4)}

    # the body of the contract
    row = next(r for r in rows.values() if r.user_id == "u1" and r.alert_id == "voice_80")
    assert acked[f"alert_{row.id.hex}"] == {
        "type": "metering.alert",
        "alert_id": "voice_80",
        "user_id": "u1",
        "usage_type": "premium_voice",
        "period": {
            "start": row.period_start.isoformat().replace("+00:00", "Z"),
            "end": row.period_end.isoformat().replace("+00:00", "Z"),
        },
        "threshold": {"at_percent": 80},
        "used": 5000,
        "limit": 5000,
        "available": 0,
        "occurred_at": row.occurred_at.isoformat().replace("+00:00", "Z"),
    }

    # acknowledged: never sent again, however late
    assert deliver_due(t3 + timedelta(days=30), t=_webhook(receiver)).claimed == 0
    assert len(receiver.acknowledged) == 6 and len(receiver.seen) == 18


def test_a_wrong_secret_is_refused_by_the_receiver_and_retried(receiver):
    _cross("u1")
    receiver.up("ok")
    wrong = Targets(webhook_url=receiver.url, webhook_secret="whsec_" + "QUJD" * 8, timeout_s=2)
    assert deliver_due(t=wrong).retrying == 3
    assert receiver.rejected_signatures == 3 and receiver.acknowledged == []
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert deliver_due(later, t=_webhook(receiver)).delivered == 3


def test_dead_after_the_last_attempt_listed_and_replayed(receiver, capsys):
    _cross("u1")
    receiver.up("500")
    t0 = datetime.now(UTC)
    assert deliver_due(t0, t=_webhook(receiver), max_attempts=2).retrying == 3
    assert deliver_due(t0 + backoff(1), t=_webhook(receiver), max_attempts=2).dead == 3
    assert {r.state for r in alert_rows()} == {"dead"}
    assert deliver_due(t0 + timedelta(days=1), t=_webhook(receiver)).claimed == 0  # dead stays dead

    capsys.readouterr()  # the logs so far
    dead = list_alerts("dead")
    assert len(dead) == 3 and all("HTTP 500" in (a.last_error or "") for a in dead)
    assert cli(["alerts", "list", "--state", "dead"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(a["alert_id"] for a in listed) == ["voice_100", "voice_80", "voice_out"]
    assert {a["state"] for a in listed} == {"dead"} and all("HTTP 500" in a["last_error"] for a in listed)

    # replay one by id, then the rest of the user's
    assert cli(["alerts", "replay", listed[0]["id"]]) == 0
    assert "1 dead alert(s) pending again" in capsys.readouterr().out
    assert cli(["alerts", "replay", "--user", "u1"]) == 0
    assert "2 dead alert(s) pending again" in capsys.readouterr().out
    receiver.mode = "ok"
    assert deliver_due(t=_webhook(receiver)).delivered == 3
    assert sorted(i for i, _ in receiver.acknowledged) == sorted(webhook_id(a) for a in dead)


def test_two_delivery_functions_at_once_deliver_each_alert_once(receiver):
    for n in range(10):
        _cross(f"u{n}")
    assert len(alert_rows()) == 30
    receiver.up("ok")
    receiver.delay = 0.1  # each delivery takes a moment, so both processes claim while the other works
    reports = run_containers(deliver_until_idle, [(receiver.url, 5.0)] * 2)
    delivered = [sum(r["delivered"] for r in per) for per in reports]
    assert sum(delivered) == 30
    assert all(d > 0 for d in delivered), delivered  # both took part
    ids = [i for i, _ in receiver.acknowledged]
    assert len(ids) == 30 and len(set(ids)) == 30 and len(receiver.seen) == 30
    assert {r.state for r in alert_rows()} == {"delivered"}


@mock_aws
def test_eventbridge_receives_each_alert_once_and_the_webhook_is_retried_alone(receiver, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    alert_delivery.reset_clients()
    events = boto3.client("events", region_name="us-east-1")
    sqs = boto3.client("sqs", region_name="us-east-1")
    events.create_event_bus(Name="metering-alerts")
    queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="all", EventBusName="metering-alerts", EventPattern=json.dumps({"source": ["metering"]})
    )
    events.put_targets(Rule="all", EventBusName="metering-alerts", Targets=[{"Id": "q", "Arn": queue_arn}])

    _cross("u1")
    both = Targets(event_bus="metering-alerts", webhook_url=receiver.url, webhook_secret=SECRET, timeout_s=2)
    t0 = datetime.now(UTC)
    assert deliver_due(t0, t=both).retrying == 3  # EventBridge took them, the webhook is down
    assert {r.event_sent_at is not None for r in query("SELECT event_sent_at FROM alerts")} == {True}
    receiver.up("ok")
    assert deliver_due(t0 + backoff(1), t=both).delivered == 3
    assert len(receiver.acknowledged) == 3

    got = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        got += [json.loads(m["Body"]) for m in batch]
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    assert len(got) == 3  # once each, although the alerts were attempted twice
    assert {(e["source"], e["detail-type"]) for e in got} == {("metering", "metering.alert")}
    assert sorted(e["detail"]["alert_id"] for e in got) == ["voice_100", "voice_80", "voice_out"]
    assert all(e["detail"]["user_id"] == "u1" and e["detail"]["type"] == "metering.alert" for e in got)
    alert_delivery.reset_clients()


def test_a_record_never_waits_for_the_receiver(receiver, monkeypatch):
    """Structural: the record path writes the outbox row and never calls a target; a receiver
    that would hang for seconds does not slow it down."""
    receiver.up("slow")
    receiver.delay = 5.0
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ALERT_WEBHOOK_SECRET", SECRET)
    from metering.config import get_settings

    get_settings.cache_clear()
    subscribe("u1", "basic")
    api.record("warm", "u1", "premium_voice", 1)
    started = time.perf_counter()
    assert api.record("e1", "u1", "premium_voice", 4999)[0] == 201  # crosses three alerts
    assert time.perf_counter() - started < 2.0
    assert len(alert_rows()) == 3 and receiver.seen == []

    # and in a container of its own, recording (and crossing) loads no delivery code at all
    probe = (
        "import sys; from tests.support import api; "
        "assert api.record('e2', 'u2', 'premium_voice', 5000)[0] == 201; "
        "print(sorted(m for m in sys.modules if 'alert_delivery' in m or 'standardwebhooks' in m"
        " or m == 'urllib.request'))"
    )
    subscribe("u2", "basic")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'layers' / 'metering'}"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(alert_rows("u2")) == 3 and receiver.seen == []
