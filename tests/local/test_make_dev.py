"""`make dev` on the project's real template.yaml and handlers, and the README's "Try it" block run
against it as written: each curl command, and the answer shown under it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.local.test_devserver import _free_port, _wait_for_port
from tests.support import stripe_events as se

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_PORT = "3000"
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def request(port: int, method: str, path: str, body: Any = None, headers: dict | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@contextmanager
def make_dev(log: Path, **env: str) -> Iterator[int]:
    """`make dev PORT=<free port>` with this worker's database and Redis (the environment holds
    their URLs); yields the port. make and the server it runs share a session of their own, which
    is terminated as a whole at the end."""
    port = _free_port()
    out = log.open("wb")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "dev", f"PORT={port}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "POWERTOOLS_DEV": "0", **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, proc)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        out.close()


def test_make_dev_serves_every_function_of_the_template(clean, tmp_path):
    with make_dev(tmp_path / "dev.log") as port:
        assert f"Listening on http://127.0.0.1:{port}" in (tmp_path / "dev.log").read_text()
        event = {"event_id": "dev-1", "user_id": "u1", "usage_type": "server_kokoro", "amount": 42}
        assert request(port, "POST", "/v1/usage", event)[0] == 201
        status, body = request(
            port, "POST", "/v1/check", {"user_id": "u1", "usage_type": "server_kokoro", "amount": 1}
        )
        assert status == 200 and body["used"] == 42
        status, body = request(port, "GET", "/v1/me/summary", headers={"X-Metering-User": "u1"})
        assert status == 200 and body["user_id"] == "u1"
        status, body = request(port, "GET", "/v1/me/summary")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        grant = {
            "grant_id": "dev-g1",
            "usage_type": "premium_voice",
            "amount": 500,
            "expires_at": "2036-01-01T00:00:00Z",
            "reason": "promotion",
        }
        status, body = request(port, "POST", "/v1/users/u1/grants", grant)
        assert status == 201 and body["balance"]["granted"] == 500, body
        status, body = request(port, "GET", "/v1/me/ledger?limit=1", headers={"X-Metering-User": "u1"})
        assert status == 200 and [(e["pool"], e["delta"]) for e in body["entries"]] == [("grant", 500)]
        assert body["next_cursor"] is not None  # the usage entry is on the next page
        status, body = request(port, "POST", "/v1/stripe/webhook", {"id": "evt_1"})  # no secret configured
        assert (status, body["error"]["code"]) == (503, "not_configured")


def test_make_dev_with_a_webhook_secret_applies_signed_stripe_events(clean, tmp_path):
    """README, "Stripe webhooks locally": `STRIPE_WEBHOOK_SECRET=whsec_... make dev`, then what
    `stripe trigger customer.subscription.created` delivers (a signed event)."""
    assert "STRIPE_WEBHOOK_SECRET=whsec_... make dev" in README.read_text()
    now = datetime.now(UTC)
    sub = se.subscription("sub_dev", price="price_basic_monthly", start=now, end=now + timedelta(days=30))
    payload = se.payload_of(se.event("customer.subscription.created", sub, now))
    with make_dev(tmp_path / "dev.log", STRIPE_WEBHOOK_SECRET=se.SECRET) as port:
        signed = {"Stripe-Signature": se.sign(payload)}
        status, body = request(port, "POST", "/v1/stripe/webhook", payload.encode(), signed)
        assert (status, body) == (200, {"status": "ok"})
        forged = {"Stripe-Signature": se.sign(payload, secret="whsec_someone_else")}
        status, body = request(port, "POST", "/v1/stripe/webhook", payload.encode(), forged)
        assert (status, body["error"]["code"]) == (400, "invalid_signature")
        status, body = request(port, "GET", "/v1/me/summary", headers={"X-Metering-User": "u1"})
        assert (status, body["plan"]["id"], body["subscription"]["status"]) == (200, "basic", "active")


# --- the README's "Try it" block ---------------------------------------------------------------------


def try_it_block() -> list[str]:
    """The lines of the first sh block of the README's "Try it" section."""
    section = README.read_text(encoding="utf-8").split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README: no sh block under ## Try it"
    return block.group(1).splitlines()


def curl_steps(lines: list[str]) -> list[tuple[str, Any]]:
    """(command, the answer shown under it) for each curl command: continuation lines joined, the
    answer from the `# → {...}` line that follows."""
    steps: list[tuple[str, Any]] = []
    command = ""
    for line in lines:
        if command.endswith("\\"):
            command = command[:-1] + line
            continue
        if command:
            answer = re.fullmatch(r"# → (\{.*\})", line)
            assert answer, f"README: no '# → {{...}}' answer under {command!r}"
            steps.append((command, json.loads(answer.group(1))))
            command = ""
        elif line.startswith("curl "):
            command = line
    assert not command, f"README: no answer under the last command {command!r}"
    return steps


def shown_in(shown: Any, actual: Any, where: str = "answer") -> None:
    """Every key and value the README shows is in the actual answer (which may hold more keys)."""
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in shown.items():
            assert key in actual, f"{where}: no {key!r} in {actual!r}"
            shown_in(value, actual[key], f"{where}.{key}")
    else:
        assert actual == shown, f"{where}: README shows {shown!r}, the service answered {actual!r}"


def test_the_readme_try_it_block_answers_as_shown(clean, tmp_path):
    lines = try_it_block()
    assert lines[0].split("#")[0].strip() == "make dev &"
    steps = curl_steps(lines[1:])
    assert len(steps) >= 3
    checks = [answer for command, answer in steps if "/v1/check" in command]
    assert checks and checks[0]["allowed"] is True  # a newcomer's first check is allowed
    env = {k: v for k, v in os.environ.items() if k not in PROXIES}
    with make_dev(tmp_path / "dev.log") as port:
        for command, shown in steps:
            assert f"localhost:{README_PORT}/" in command
            run = command.replace(f"localhost:{README_PORT}/", f"localhost:{port}/")
            proc = subprocess.run(["bash", "-c", run], env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, (command, proc.stderr)
            shown_in(shown, json.loads(proc.stdout), command.split()[2])
