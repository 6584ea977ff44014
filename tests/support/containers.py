"""Several warm Lambda containers at once: each a separate process that imports the handlers
once and then serves many invocations, all released together by a barrier."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any

_CTX = mp.get_context("spawn")


def _container(
    env: dict[str, str], barrier: Any, results: Any, index: int, job: Callable[..., Any], args: tuple
) -> None:
    os.environ.update(env)
    from tests.support import api  # noqa: F401  (cold start: import the handlers before the barrier)
    from tests.support.lambda_events import handler

    for name in ("check", "record"):
        handler(name)
    barrier.wait(timeout=60)
    try:
        results.put((index, job(*args)))
    except BaseException as error:  # report, don't hang the parent
        results.put((index, error))


def run_containers(
    job: Callable[..., Any], args_per_container: list[tuple], timeout: float = 180
) -> list[Any]:
    """Run `job(*args)` in one fresh process per args tuple, started at the same moment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("DATABASE_URL", "REDIS_URL", "METERING_CATALOG", "BILLING_ENABLED")
    }
    barrier = _CTX.Barrier(len(args_per_container))
    results = _CTX.Queue()
    procs = [
        _CTX.Process(target=_container, args=(env, barrier, results, i, job, args))
        for i, args in enumerate(args_per_container)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    for _ in procs:
        index, value = results.get(timeout=timeout)
        out[index] = value
    for p in procs:
        p.join(timeout=30)
    errors = [v for v in out.values() if isinstance(v, BaseException)]
    if errors:
        raise errors[0]
    return [out[i] for i in range(len(procs))]


# Jobs (module-level so that spawned processes can import them) --------------------------------


def check_and_reserve(user_id: str, usage_type: str, amount: int, reservation_ids: list[str]) -> list[bool]:
    from tests.support import api

    granted = []
    for rid in reservation_ids:
        status, body = api.check(user_id, usage_type, amount, {"id": rid, "ttl_seconds": 300})
        assert status == 200, body
        granted.append(body["reservation"] is not None)
    return granted


def record_events(events: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    from tests.support import api

    out = []
    for e in events:
        status, body = api.record(e["event_id"], e["user_id"], e["usage_type"], e["amount"])
        out.append((status, body))
    return out
