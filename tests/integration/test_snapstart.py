"""SnapStart's after-restore hook (metering.snapstart), run as Lambda's Python runtime runs it.

Each scenario is a fresh interpreter, as an execution environment is: a stand-in for the runtime's
`snapshot_restore_py` module records what the handler's init registers; the script then serves a
request against this worker's PostgreSQL and Redis, "restores" by calling the registered
after-restore hooks, and serves again. What a snapshot must not carry is checked on the objects
themselves: the pooled sockets, the clients, the random state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.support.state import subscribe, use_test_catalog

ROOT = Path(__file__).resolve().parents[2]

# The runtime's module, as the handler sees it at init: register_* record the callables.
_RUNTIME = r"""
import json, sys, types
hooks = {"before": [], "after": []}
runtime = types.ModuleType("snapshot_restore_py")
runtime.register_before_snapshot = lambda f, *a, **k: hooks["before"].append((f, a, k))
runtime.register_after_restore = lambda f, *a, **k: hooks["after"].append((f, a, k))
sys.modules["snapshot_restore_py"] = runtime

def registered():
    return {
        "before": [f"{f.__module__}.{f.__qualname__}" for f, _, _ in hooks["before"]],
        "after": [f"{f.__module__}.{f.__qualname__}" for f, _, _ in hooks["after"]],
    }

def restore():
    for f, a, k in hooks["after"]:
        f(*a, **k)
"""

_IMPORT_ONLY = (
    _RUNTIME
    + r"""
import importlib
importlib.import_module(sys.argv[1])
print(json.dumps(registered()))
"""
)

# init, then the runtime's before-snapshot hooks: which of what the first request imports is then loaded
_INIT_THEN_SNAPSHOT = (
    _RUNTIME
    + r"""
import importlib
from metering.snapstart import FIRST_USE
importlib.import_module(sys.argv[1])
at_init = [name for name in FIRST_USE if name in sys.modules]
for f, a, k in hooks["before"]:
    f(*a, **k)
print(json.dumps({"at_init": at_init, "in_snapshot": [name for name in FIRST_USE if name in sys.modules],
                  "first_use": list(FIRST_USE)}))
"""
)

_SERVE_RESTORE_SERVE = (
    _RUNTIME
    + r"""
import random
from tests.support.lambda_events import call, handler, http_event

handler("check")  # the init phase: Lambda imports the handler module before the snapshot
init_hooks = registered()

from metering import reservations
from metering.db.engine import get_engine

def check(reservation_id, amount):
    body = {"user_id": "u1", "usage_type": "premium_voice", "amount": amount,
            "reservation": {"id": reservation_id, "ttl_seconds": 60}}
    return call("check", http_event("POST", "/v1/check", body))

def pg_sockets():  # the raw sockets of the connections pooled by the engine
    return [record.dbapi_connection._usock for record in list(get_engine().pool._pool.queue)]

def redis_sockets():  # the sockets of the reservations client's idle pooled connections
    client = reservations._client()[0]
    return [connection._sock for connection in client.connection_pool._available_connections]

def is_open(sock):
    return sock is not None and sock.fileno() != -1

status, first = check("a", 3000)
old_pg, old_redis = pg_sockets(), redis_sockets()
old_engine, old_client = get_engine(), reservations._client()[0]
old_random = random.getstate()
snapshot = {"pg_open": [is_open(s) for s in old_pg], "redis_open": [is_open(s) for s in old_redis]}

restore()

restored = {
    "pg_open": [is_open(s) for s in old_pg],
    "redis_open": [is_open(s) for s in old_redis],
    "random_reseeded": random.getstate() != old_random,
}
status_after, after = check("b", 2001)  # "a" still holds 3000 of the plan's 5000
new_pg, new_redis = pg_sockets(), redis_sockets()
served = {
    "new_engine": get_engine() is not old_engine,
    "new_redis_client": reservations._client()[0] is not old_client,
    "pg_open": [is_open(s) for s in new_pg],
    "redis_open": [is_open(s) for s in new_redis],
    "pg_reused": any(s is o for s in new_pg for o in old_pg),
    "redis_reused": any(s is o for s in new_redis for o in old_redis),
}
print(json.dumps({
    "hooks": init_hooks,
    "first": [status, first],
    "after": [status_after, after],
    "snapshot": snapshot,
    "restored": restored,
    "served": served,
}))
"""
)


def _run(script: str, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


HOOK = "metering.snapstart.after_restore"
BEFORE = "metering.snapstart.before_snapshot"


@pytest.mark.parametrize(
    "module",
    [
        "functions.check.app",
        "functions.record.app",
        "functions.summary.app",
        "functions.stripe_webhook.app",
        "functions.maintenance.app",
    ],
)
def test_every_handler_registers_the_hook_at_init(module: str) -> None:
    assert _run(_IMPORT_ONLY, module) == {"before": [BEFORE], "after": [HOOK]}


@pytest.mark.parametrize("module", ["functions.check.app", "functions.stripe_webhook.app"])
def test_the_snapshot_holds_what_the_first_request_would_import(module: str) -> None:
    # the handler's import leaves SQLAlchemy, PyYAML, pg8000 and redis to its first request; with
    # SnapStart the before-snapshot hook imports them, so a restored environment does not
    out = _run(_INIT_THEN_SNAPSHOT, module)
    assert out["at_init"] == []
    assert out["in_snapshot"] == out["first_use"]


def test_a_restore_drops_pooled_connections_and_clients_then_serves_on_new_ones(
    clean: dict[str, str],
) -> None:
    use_test_catalog()  # METERING_CATALOG, inherited by the interpreter below
    subscribe("u1", "basic")  # 5000 premium_voice

    out = _run(_SERVE_RESTORE_SERVE)

    assert out["hooks"] == {"before": [BEFORE], "after": [HOOK]}
    status, first = out["first"]
    assert status == 200 and first["allowed"] is True and first["reservations_counted"] is True, first
    # before the restore: one pooled connection to each server, open
    assert out["snapshot"] == {"pg_open": [True], "redis_open": [True]}
    # the restore closed them and reseeded `random`
    assert out["restored"] == {"pg_open": [False], "redis_open": [False], "random_reseeded": True}
    # the next request works, on new clients and new connections; Redis still has hold "a"
    status, after = out["after"]
    assert status == 200, after
    assert (after["allowed"], after["reserved"], after["reservations_counted"]) == (False, 3000, True)
    assert out["served"] == {
        "new_engine": True,
        "new_redis_client": True,
        "pg_open": [True],
        "redis_open": [True],
        "pg_reused": False,
        "redis_reused": False,
    }


def test_a_restore_drops_sdk_clients_and_cached_secrets(clean: dict[str, str]) -> None:
    """The clients made lazily on first use carry the credentials resolved then; a restored
    environment makes them again."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    from metering import ingest, snapstart
    from metering.db import engine

    signer, sqs = engine._rds_client("us-east-1"), ingest._sqs()
    DEFAULT_PROVIDERS["secrets"] = parameters.SecretsProvider()

    snapstart.after_restore()

    assert engine._rds_client("us-east-1") is not signer
    assert ingest._sqs() is not sqs
    assert "secrets" not in DEFAULT_PROVIDERS


def test_register_needs_the_lambda_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from metering import snapstart

    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails, as off Lambda
    assert snapstart.register() is False

    registered: list[Any] = []
    runtime = types.ModuleType("snapshot_restore_py")
    runtime.register_before_snapshot = registered.append  # type: ignore[attr-defined]
    runtime.register_after_restore = registered.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", runtime)
    assert snapstart.register() is True
    assert registered == [snapstart.before_snapshot, snapstart.after_restore]
