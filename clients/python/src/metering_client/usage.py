"""A drop-in for a product's own usage module: module-level functions over one shared client.

    from metering_client.usage import check_usage_limit, record_usage, get_usage_summary
    # in asyncio code: from metering_client.usage import check_usage_limit_async as check_usage_limit

Where the service is: `configure(base_url, aws_region=..., timeout=..., retries=...)` at start-up,
or else the environment, read at the first call: `METERING_URL` (required) and
`METERING_AWS_REGION` (optional: sign requests with SigV4 for that region). `configure()` without
a URL forgets the configured service and reads the environment again at the next call.

The blocking functions share one `MeteringClient` (thread-safe); the `*_async` functions share one
`AsyncMeteringClient` per running event loop (an httpx async client belongs to the loop it first
ran in).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from metering_client import _core
from metering_client._core import Call
from metering_client.client import AsyncMeteringClient, MeteringClient, _like
from metering_client.models import Breakdown, CheckResult, RecordResult

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")

URL_VARIABLE = "METERING_URL"
REGION_VARIABLE = "METERING_AWS_REGION"


@dataclass(frozen=True)
class _Service:
    base_url: str
    aws_region: str | None = None
    timeout: float = 5.0
    retries: int = 3

    def options(self) -> dict[str, Any]:
        return {"aws_region": self.aws_region, "timeout": self.timeout, "retries": self.retries}


_lock = threading.Lock()
_configured: _Service | None = None
_client: MeteringClient | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncMeteringClient] = (
    weakref.WeakKeyDictionary()
)


def configure(
    base_url: str | None = None, *, aws_region: str | None = None, timeout: float = 5.0, retries: int = 3
) -> None:
    """Use the service at `base_url` from now on (None: the environment, read at the next call)."""
    global _configured, _client
    with _lock:
        previous, _client = _client, None
        _configured = None if base_url is None else _Service(base_url, aws_region, timeout, retries)
        _async_clients.clear()
    if previous is not None:
        previous.close()


def _service() -> _Service:
    if _configured is not None:
        return _configured
    url = os.environ.get(URL_VARIABLE)
    if not url:
        raise RuntimeError(
            f"metering_client.usage: no service configured; set {URL_VARIABLE} "
            "(and METERING_AWS_REGION to sign requests) or call metering_client.usage.configure(url)"
        )
    return _Service(url, os.environ.get(REGION_VARIABLE) or None)


def client() -> MeteringClient:
    """The module's blocking client."""
    global _client
    with _lock:
        if _client is None:
            service = _service()
            _client = MeteringClient(service.base_url, **service.options())
        return _client


def async_client() -> AsyncMeteringClient:
    """The module's asyncio client for the running event loop."""
    loop = asyncio.get_running_loop()
    with _lock:
        found = _async_clients.get(loop)
        if found is None:
            service = _service()
            found = _async_clients[loop] = AsyncMeteringClient(service.base_url, **service.options())
        return found


def _blocking(op: Callable[P, Call[T]], name: str) -> Callable[P, T]:
    def function(*args: P.args, **kwargs: P.kwargs) -> T:
        return client()._run(op(*args, **kwargs))

    return _like(function, op, name=name, bound=False)


def _awaitable(op: Callable[P, Call[T]], name: str) -> Callable[P, Coroutine[Any, Any, T]]:
    async def function(*args: P.args, **kwargs: P.kwargs) -> T:
        return await async_client()._run(op(*args, **kwargs))

    return _like(function, op, name=name, bound=False)


def _mapped(op: Callable[P, Call[T]], f: Callable[[T], U]) -> Callable[P, Call[U]]:
    def build(*args: P.args, **kwargs: P.kwargs) -> Call[U]:
        return op(*args, **kwargs).map(f)

    return _like(build, op, bound=False)


def _check_usage_limit(
    user_id: str, usage_type: str, amount: int, *, reservation_id: str | None = None
) -> Call[CheckResult]:
    """Raise `UsageLimitExceeded` (with `.usage_type`, `.requested`, `.available`) unless `user_id`
    may consume `amount` of `usage_type`; else return the check. With `reservation_id`, the amount
    is held for 600 s (released by the record that names the same `reservation_id`)."""
    return _core.check(user_id, usage_type, amount, reservation_id=reservation_id, raise_on_deny=True)


def _breakdown(result: RecordResult) -> Breakdown:
    return result.breakdown


_record_usage = _mapped(_core.record, _breakdown)
_record_usage.__doc__ = (
    "Record usage (the parameters of `MeteringClient.record`) and return which pools paid for it."
)

check_usage_limit = _blocking(_check_usage_limit, "check_usage_limit")
check_usage_limit_async = _awaitable(_check_usage_limit, "check_usage_limit_async")
record_usage = _blocking(_record_usage, "record_usage")
record_usage_async = _awaitable(_record_usage, "record_usage_async")
get_usage_summary = _blocking(_core.summary, "get_usage_summary")
get_usage_summary_async = _awaitable(_core.summary, "get_usage_summary_async")
