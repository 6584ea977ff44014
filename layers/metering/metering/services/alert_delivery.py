"""Usage alerts, the delivering side (api.md section 7): AlertDeliveryFunction, the dev server's
background loop and `metering alerts`.

One pass (`deliver_due`):
1. claim due pending alerts in a short transaction (`FOR UPDATE SKIP LOCKED`, so several passes
   at once take different rows; each claim counts an attempt and hides the row for a lease);
2. deliver them with no transaction open: to EventBridge (`ALERT_EVENT_BUS`: Source `metering`,
   DetailType `metering.alert`) and/or POST to `ALERT_WEBHOOK_URL`, signed per Standard Webhooks
   with the `standardwebhooks` package (`webhook-id` is the alert row's id: the same on every
   retry, so the receiver can deduplicate);
3. settle them in a second short transaction: delivered once every configured target has
   acknowledged it (a target that acknowledged is not sent to again), else retried with
   exponential backoff, or dead after `ALERT_MAX_ATTEMPTS` attempts (`metering alerts replay`).

A pass that dies between 1 and 3 leaves its claims to expire: they are delivered again after the
lease, with the same webhook-id (at least once; never lost).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from uuid import UUID

from metering.config import get_settings
from metering.db import alerts as outbox
from metering.db.alerts import AlertRow, Settlement
from metering.db.engine import run_in_transaction, run_read
from metering.errors import NotConfigured, Unavailable
from metering.observability import count, logger

SOURCE = "metering"
DETAIL_TYPE = "metering.alert"
BATCH = 25  # alerts per claim; a pass claims again while it finds due alerts and has time
WORKERS = 8  # deliveries of one pass at once (threads: the work is waiting on the network)
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=1)
SECRET_CACHE_SECONDS = 300


class AlertMetric:
    DELIVERED = "AlertsDelivered"
    RETRYING = "AlertsRetrying"
    DEAD = "AlertsDead"


@dataclass(frozen=True, slots=True)
class Targets:
    """Where alerts go. Neither target: alerts wait, pending (nothing is claimed)."""

    event_bus: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    timeout_s: float = 10.0

    @property
    def any(self) -> bool:
        return bool(self.event_bus or self.webhook_url)


def targets() -> Targets:
    """The configured targets; the webhook secret from ALERT_WEBHOOK_SECRET, else the Secrets
    Manager secret ALERT_WEBHOOK_SECRET_ARN names (cached five minutes). Read before any
    transaction opens."""
    s = get_settings()
    secret = s.alert_webhook_secret
    if s.alert_webhook_url and not secret:
        if not s.alert_webhook_secret_arn:
            raise NotConfigured(
                "ALERT_WEBHOOK_URL is set without ALERT_WEBHOOK_SECRET or ALERT_WEBHOOK_SECRET_ARN"
            )
        from aws_lambda_powertools.utilities import parameters

        from metering.stripe_sync.secret import secret_from_value

        try:
            value = parameters.get_secret(s.alert_webhook_secret_arn, max_age=SECRET_CACHE_SECONDS)
        except parameters.exceptions.GetParameterError as error:
            raise Unavailable(f"ALERT_WEBHOOK_SECRET_ARN: the secret cannot be read ({error})") from error
        secret = secret_from_value(value)
        if secret is None:
            raise NotConfigured("ALERT_WEBHOOK_SECRET_ARN: the secret must be a whsec_... string")
    return Targets(s.alert_event_bus, s.alert_webhook_url, secret, s.alert_webhook_timeout_s)


def body(alert: AlertRow) -> dict[str, Any]:
    """The webhook body and the EventBridge detail (api.md section 7)."""
    return {
        "type": DETAIL_TYPE,
        "alert_id": alert.alert_id,
        "user_id": alert.user_id,
        "usage_type": alert.usage_type,
        "period": {"start": _iso(alert.period_start), "end": _iso(alert.period_end)},
        "threshold": alert.threshold,
        "used": alert.used,
        "limit": alert.allowance,
        "available": alert.available,
        "occurred_at": _iso(alert.occurred_at),
    }


def webhook_id(alert: AlertRow) -> str:
    """Stable per alert: every retry of one alert carries the same id."""
    return f"alert_{alert.id.hex}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s, 1 min, 2 min, ... at most an hour."""
    return min(FIRST_RETRY * (2 ** max(0, attempts - 1)), LONGEST_RETRY)


# --- the targets ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _events_client() -> Any:
    import boto3

    return boto3.client("events", region_name=get_settings().aws_region)


def reset_clients() -> None:
    _events_client.cache_clear()


def _put_event(bus: str, detail: str) -> None:
    answer = _events_client().put_events(
        Entries=[{"Source": SOURCE, "DetailType": DETAIL_TYPE, "Detail": detail, "EventBusName": bus}]
    )
    if answer.get("FailedEntryCount"):
        entry = answer["Entries"][0]
        raise RuntimeError(f"EventBridge: {entry.get('ErrorCode')}: {entry.get('ErrorMessage')}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer that is not an acknowledgement


_OPENER = urllib.request.build_opener(_NoRedirects)


def _post_webhook(t: Targets, message_id: str, payload: str) -> None:
    from standardwebhooks import Webhook

    assert t.webhook_url is not None and t.webhook_secret is not None
    sent_at = datetime.now(UTC)  # the receiver checks it against its clock: the real one
    request = urllib.request.Request(
        t.webhook_url,
        data=payload.encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "user-agent": "metering-alerts",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(t.webhook_secret).sign(message_id, sent_at, payload),
        },
    )
    try:
        with _OPENER.open(request, timeout=t.timeout_s) as answer:
            answer.read(1024)
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    if not 200 <= status < 300:
        raise RuntimeError(f"webhook answered HTTP {status}")


# --- one pass ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "delivered": self.delivered,
            "retrying": self.retrying,
            "dead": self.dead,
        }


def _attempt(alert: AlertRow, t: Targets, now: datetime, max_attempts: int) -> Settlement:
    """Deliver one claimed alert to every target that has not acknowledged it yet (no transaction
    is open), and say what to record."""
    payload = json.dumps(body(alert), separators=(",", ":"))
    event_sent = alert.event_sent_at is not None or not t.event_bus
    webhook_sent = alert.webhook_sent_at is not None or not t.webhook_url
    errors = []
    if not event_sent:
        assert t.event_bus is not None
        try:
            _put_event(t.event_bus, payload)
            event_sent = True
        except Exception as error:
            errors.append(f"event bus: {error}")
    if not webhook_sent:
        try:
            _post_webhook(t, webhook_id(alert), payload)
            webhook_sent = True
        except Exception as error:  # refused, timed out, reset, 4xx/5xx: all retried
            errors.append(f"webhook: {error}")
    sent = (event_sent and alert.event_sent_at is None, webhook_sent and alert.webhook_sent_at is None)
    if not errors:
        return Settlement(alert.id, alert.attempts, "delivered", now, None, *sent)
    failed = "; ".join(errors)[:1000]
    if alert.attempts >= max_attempts:
        return Settlement(alert.id, alert.attempts, "dead", now, failed, *sent)
    return Settlement(alert.id, alert.attempts, "pending", now + backoff(alert.attempts), failed, *sent)


def worst_pass(t: Targets, limit: int = BATCH) -> timedelta:
    """How long delivering `limit` alerts can take when every target times out."""
    rounds = -(-limit // WORKERS)
    return timedelta(seconds=rounds * t.timeout_s * (bool(t.event_bus) + bool(t.webhook_url)))


def deliver_due(
    now: datetime | None = None,
    *,
    limit: int = BATCH,
    lease: timedelta | None = None,
    max_attempts: int | None = None,
    t: Targets | None = None,
) -> Report:
    """One claim of up to `limit` due alerts, delivered and settled (see the module). A claim
    hides its alerts for `lease` (default: the longest the pass can take, plus a minute)."""
    t = t or targets()
    report = Report()
    if not t.any:
        return report
    now = now or datetime.now(UTC)
    max_attempts = max_attempts or get_settings().alert_max_attempts
    hold = lease or worst_pass(t, limit) + timedelta(minutes=1)
    claimed = run_in_transaction(lambda conn: outbox.claim_due(conn, now, limit, hold))
    report.claimed = len(claimed)
    if not claimed:
        return report
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(claimed))) as pool:  # no transaction is open
        settlements = list(pool.map(lambda alert: _attempt(alert, t, now, max_attempts), claimed))
    run_in_transaction(lambda conn: outbox.settle(conn, now, settlements))
    for s in settlements:
        if s.state == "delivered":
            report.delivered += 1
        elif s.state == "dead":
            report.dead += 1
            logger.error("alert dead after its last attempt", extra={"alert": str(s.id), "error": s.error})
        else:
            report.retrying += 1
            logger.warning("alert delivery failed; retrying", extra={"alert": str(s.id), "error": s.error})
        if s.error:
            report.errors.append(s.error)
    for metric, value in (
        (AlertMetric.DELIVERED, report.delivered),
        (AlertMetric.RETRYING, report.retrying),
        (AlertMetric.DEAD, report.dead),
    ):
        if value:
            count(metric, value)
    return report


def deliver_all_due(now: datetime | None = None, *, passes: int = 20, t: Targets | None = None) -> Report:
    """Passes while they find a full batch due (at most `passes`): what a scheduled run does."""
    t = t or targets()
    total = Report()
    for _ in range(passes):
        one = deliver_due(now, t=t)
        total.claimed += one.claimed
        total.delivered += one.delivered
        total.retrying += one.retrying
        total.dead += one.dead
        total.errors += one.errors
        if one.claimed < BATCH:
            break
    return total


# --- operators: `metering alerts list|replay` -------------------------------------------------------


def list_alerts(state: str = "dead", user_id: str | None = None, limit: int = 100) -> list[AlertRow]:
    return run_read(lambda conn: outbox.list_alerts(conn, state, user_id, limit))


def replay(ids: list[UUID] | None = None, user_id: str | None = None, now: datetime | None = None) -> int:
    """Dead alerts pending again, due now: delivered by the next pass (same webhook-id)."""
    moment = now or datetime.now(UTC)
    return run_in_transaction(lambda conn: outbox.replay_dead(conn, moment, ids, user_id))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="alerts_command", required=True)
    listing = sub.add_parser("list", help="list alerts of one state (dead by default), oldest first")
    listing.add_argument("--state", choices=("pending", "delivered", "dead"), default="dead")
    listing.add_argument("--user", dest="user_id")
    listing.add_argument("--limit", type=int, default=100)
    again = sub.add_parser("replay", help="make dead alerts pending again (all, one user's, or by id)")
    again.add_argument("ids", nargs="*", type=UUID, help="alert row ids (from `metering alerts list`)")
    again.add_argument("--user", dest="user_id")
    sub.add_parser("deliver", help="deliver the alerts due now (as AlertDeliveryFunction does)")


def run(args: argparse.Namespace) -> int:
    if args.alerts_command == "list":
        for a in list_alerts(args.state, args.user_id, args.limit):
            print(
                json.dumps(
                    {
                        "id": str(a.id),
                        "state": a.state,
                        "attempts": a.attempts,
                        "last_error": a.last_error,
                        "next_attempt_at": _iso(a.next_attempt_at),
                        **body(a),
                    }
                )
            )
        return 0
    if args.alerts_command == "replay":
        replayed = replay(args.ids or None, args.user_id)
        print(f"{replayed} dead alert(s) pending again")
        return 0
    report = deliver_all_due()
    print(json.dumps(report.as_dict()))
    return 0 if not report.errors else 1


# --- the dev server: delivery in the background ----------------------------------------------------


def start_background(interval_s: float = 2.0) -> str:
    """Deliver due alerts every `interval_s` seconds in a daemon thread (the dev server's stand-in
    for the schedule); a line saying what it does. A failing run is logged and the loop goes on."""
    import threading

    try:
        t = targets()
    except (NotConfigured, Unavailable) as error:
        return f"alerts: not delivered ({error})"
    if not t.any:
        return "alerts: kept pending (set ALERT_WEBHOOK_URL and ALERT_WEBHOOK_SECRET, or ALERT_EVENT_BUS)"
    stop = threading.Event()  # never set: the thread ends with the process

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                deliver_all_due(t=t)
            except Exception:
                logger.exception("background alert delivery failed")

    threading.Thread(target=loop, name="alert-delivery", daemon=True).start()
    where = " and ".join(x for x in (t.webhook_url, t.event_bus and f"EventBridge bus {t.event_bus}") if x)
    return f"alerts: delivered every {interval_s:g} s to {where}"
