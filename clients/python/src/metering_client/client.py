"""`MeteringClient` and `AsyncMeteringClient`: the same operations (`metering_client._core`) driven
by a blocking and by an asyncio httpx client.

Each public method is made from its operation by `_blocking` or `_awaitable` (`_pages` and
`_async_pages` for `ledger`): the signature, documentation, request, result and retry rules are
written once, and each class only says how to send a request and how to wait (`_run`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import httpx

from metering_client import _core
from metering_client._core import Call, Page, Reply, Sleep

P = ParamSpec("P")
T = TypeVar("T")
E = TypeVar("E")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)


def _like(
    fn: Callable[..., Any], op: Callable[..., Any], *, name: str | None = None, bound: bool = True
) -> Any:
    """`fn` named, documented and signed like `op` (with `self` in front when it is a method),
    without `op`'s `Call[...]` return annotation."""
    signature = inspect.signature(op)
    fn.__name__ = fn.__qualname__ = name or op.__name__
    fn.__doc__ = op.__doc__
    parameters = list(signature.parameters.values())
    if bound:
        parameters.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY))
    fn.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation=inspect.Signature.empty
    )
    return fn


def _blocking(op: Callable[P, Call[T]]) -> Callable[Concatenate[MeteringClient, P], T]:
    def method(self: MeteringClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(op(*args, **kwargs))

    return _like(method, op)


def _awaitable(
    op: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncMeteringClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncMeteringClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(op(*args, **kwargs))

    return _like(method, op)


def _pages(op: Callable[P, Call[Page[E]]]) -> Callable[Concatenate[MeteringClient, P], Iterator[E]]:
    def method(self: MeteringClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[E]:
        call: Call[Page[E]] | None = op(*args, **kwargs)
        while call is not None:
            page = self._run(call)
            yield from page.items
            call = page.next

    return _like(method, op)


def _async_pages(
    op: Callable[P, Call[Page[E]]],
) -> Callable[Concatenate[AsyncMeteringClient, P], AsyncIterator[E]]:
    async def method(self: AsyncMeteringClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[E]:
        call: Call[Page[E]] | None = op(*args, **kwargs)
        while call is not None:
            page = await self._run(call)
            for item in page.items:
                yield item
            call = page.next

    return _like(method, op)


class _Shell(Generic[H]):
    _transport: Callable[..., H]

    def __init__(
        self, base_url: str, *, aws_region: str | None = None, timeout: float = 5.0, retries: int = 3
    ) -> None:
        self.base_url, self.aws_region = base_url, aws_region
        self._exchange = _core.exchange(base_url, aws_region=aws_region, retries=retries)
        self._http: H = self._transport(timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, aws_region={self.aws_region!r})"


class MeteringClient(_Shell[httpx.Client]):
    """A blocking client of the service's routes. With `aws_region`, every request is SigV4-signed
    for API Gateway (`execute-api`, credentials from the default AWS chain). `timeout` (seconds)
    bounds connecting and each read and write; 5xx, 429, timeouts and connection errors are tried
    again up to `retries` times with exponential backoff and jitter, other 4xx never."""

    _transport = httpx.Client

    def _run(self, call: Call[T]) -> T:
        flow = self._exchange.flow(call)
        reply: Reply = None
        while True:
            try:
                action = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(action, Sleep):
                time.sleep(action.seconds)
                reply = None
            else:
                try:
                    reply = self._http.send(action)
                except httpx.TransportError as exc:
                    reply = exc

    check = _blocking(_core.check)
    release = _blocking(_core.release)
    record = _blocking(_core.record)
    record_batch = _blocking(_core.record_batch)
    adjust = _blocking(_core.adjust)
    grant = _blocking(_core.grant)
    summary = _blocking(_core.summary)
    breakdown = _blocking(_core.breakdown)
    stats = _blocking(_core.stats)
    ledger = _pages(_core.ledger)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MeteringClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncMeteringClient(_Shell[httpx.AsyncClient]):
    """`MeteringClient` for asyncio: the same methods, awaitable (`ledger` is an async iterator)."""

    _transport = httpx.AsyncClient

    async def _run(self, call: Call[T]) -> T:
        flow = self._exchange.flow(call)
        reply: Reply = None
        while True:
            try:
                action = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(action, Sleep):
                await asyncio.sleep(action.seconds)
                reply = None
            else:
                try:
                    reply = await self._http.send(action)
                except httpx.TransportError as exc:
                    reply = exc

    check = _awaitable(_core.check)
    release = _awaitable(_core.release)
    record = _awaitable(_core.record)
    record_batch = _awaitable(_core.record_batch)
    adjust = _awaitable(_core.adjust)
    grant = _awaitable(_core.grant)
    summary = _awaitable(_core.summary)
    breakdown = _awaitable(_core.breakdown)
    stats = _awaitable(_core.stats)
    ledger = _async_pages(_core.ledger)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMeteringClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
