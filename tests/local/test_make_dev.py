"""`metering dev` (what `make dev` runs) on the project's real template.yaml and handlers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.local.test_devserver import _free_port, _wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def request(port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
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


@pytest.fixture
def dev_server(clean, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "POWERTOOLS_DEV": "0"}
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metering", "dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc)
        yield port, tmp_path / "dev.log"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def test_make_dev_serves_every_function_of_the_template(dev_server):
    port, log = dev_server
    assert f"http://127.0.0.1:{port}" in log.read_text()
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
    status, body = request(port, "POST", "/v1/stripe/webhook", {"id": "evt_1"})  # no secret configured
    assert (status, body["error"]["code"]) == (503, "not_configured")
