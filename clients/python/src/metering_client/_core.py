"""The client without I/O: what each method sends, how an answer becomes a result or an error,
and the retry loop. `MeteringClient` and `AsyncMeteringClient` only move bytes and sleep.

- An operation (`check`, `record`, ...) is a plain function that returns a `Call`: the request to
  send (built once, so a generated `event_id` is the same on every attempt) and how to read a
  successful answer.
- `Exchange.flow(call)` is a generator that runs one call: it yields an `httpx.Request` to send
  (built and signed again for every attempt) or a `Sleep`, is sent back the `httpx.Response` or
  the `httpx.TransportError`, and returns the result or raises the error.
- `ROUTES` names every route the client calls with the model of each success status; the tests
  compare it with `docs/openapi.json`.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlencode

import httpx
from pydantic import BaseModel

from metering_client._version import __version__
from metering_client.errors import (
    MeteringError,
    UsageLimitExceeded,
    error_from_response,
    error_from_transport,
    is_retryable,
)
from metering_client.models import (
    AdjustmentResult,
    BatchResult,
    CheckResult,
    GrantResult,
    LedgerEntry,
    LedgerPage,
    RecordResult,
    Stats,
    Summary,
    UsageBreakdown,
    UsageEvent,
)

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_RESERVATION_TTL_SECONDS = 600
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as api.md and the OpenAPI document spell it, e.g. /v1/users/{user_id}/summary
    responses: Mapping[int, type[BaseModel] | None]  # success status -> model of its body

    def request(self, body: Any = None, params: Iterable[tuple[str, str]] = (), **path: str) -> Request:
        quoted = {name: quote(value, safe="") for name, value in path.items()}
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        return Request(self, self.path.format(**quoted), tuple(params), content)


ROUTES = {
    "check": Route("POST", "/v1/check", {200: CheckResult}),
    "release": Route("DELETE", "/v1/users/{user_id}/reservations/{reservation_id}", {204: None}),
    "record": Route("POST", "/v1/usage", {200: RecordResult, 201: RecordResult}),
    "record_batch": Route("POST", "/v1/usage/batch", {200: BatchResult}),
    "adjust": Route(
        "POST", "/v1/users/{user_id}/adjustments", {200: AdjustmentResult, 201: AdjustmentResult}
    ),
    "grant": Route("POST", "/v1/users/{user_id}/grants", {200: GrantResult, 201: GrantResult}),
    "summary": Route("GET", "/v1/users/{user_id}/summary", {200: Summary}),
    "breakdown": Route("GET", "/v1/users/{user_id}/breakdown", {200: UsageBreakdown}),
    "stats": Route("GET", "/v1/users/{user_id}/stats", {200: Stats}),
    "ledger": Route("GET", "/v1/users/{user_id}/ledger", {200: LedgerPage}),
}


@dataclass(frozen=True)
class Request:
    """What one call sends, every attempt alike (only the signature and its date change)."""

    route: Route
    path: str  # percent-encoded
    params: tuple[tuple[str, str], ...]
    content: bytes | None

    def target(self) -> str:
        # RFC 3986 encoding, the form SigV4 signs, so the signed and the sent query are one string
        return self.path + ("?" + urlencode(self.params, quote_via=quote) if self.params else "")


@dataclass(frozen=True)
class Call(Generic[T]):
    request: Request
    read: Callable[[Any], T]  # the validated model of a success status -> the result
    not_found: Callable[[], T] | None = None  # the result of a 404 `not_found` (release)

    def map(self, f: Callable[[T], U]) -> Call[U]:
        read, not_found = self.read, self.not_found
        return Call(
            self.request,
            lambda model: f(read(model)),
            None if not_found is None else (lambda: f(not_found())),
        )


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next: Call[Page[T]] | None


Action = httpx.Request | Sleep
Reply = httpx.Response | httpx.TransportError | None
Flow = Generator[Action, Reply, T]


def _same(model: T) -> T:
    return model


def _iso(value: datetime | str, name: str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"{name}: a timezone-aware datetime is required (got {value!r})")
    return value.isoformat()


def _compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Optional fields are sent only when given: the service refuses fields it does not know, so
    `occurred_at` (second release) must not reach a service of the first one as null."""
    return {name: value for name, value in fields.items() if value is not None}


# ------------------------------------------------------------------------------------------------
# operations: the public methods' signatures and documentation live here, once for both clients


def check(
    user_id: str,
    usage_type: str,
    amount: int,
    *,
    reservation_id: str | None = None,
    ttl_seconds: int | None = None,
    raise_on_deny: bool = False,
) -> Call[CheckResult]:
    """May `user_id` consume `amount` of `usage_type`? With `reservation_id`, hold the amount for
    `ttl_seconds` (default 600) so that concurrent checks count it. With `raise_on_deny`, a "not
    allowed" answer raises `UsageLimitExceeded` instead of returning `allowed=False`."""
    if ttl_seconds is not None and reservation_id is None:
        raise ValueError("ttl_seconds: only with a reservation_id")
    body: dict[str, Any] = {"user_id": user_id, "usage_type": usage_type, "amount": amount}
    if reservation_id is not None:
        ttl = DEFAULT_RESERVATION_TTL_SECONDS if ttl_seconds is None else ttl_seconds
        body["reservation"] = {"id": reservation_id, "ttl_seconds": ttl}

    def read(result: CheckResult) -> CheckResult:
        if raise_on_deny and not result.allowed:
            raise UsageLimitExceeded(result)
        return result

    return Call(ROUTES["check"].request(body), read)


def release(user_id: str, reservation_id: str) -> Call[bool]:
    """Release a live reservation: True when one was released, False when none was live (after a
    retry, False may also mean the lost attempt released it)."""
    request = ROUTES["release"].request(user_id=user_id, reservation_id=reservation_id)
    return Call(request, lambda _: True, not_found=lambda: False)


def _event(event: UsageEvent | Mapping[str, Any]) -> dict[str, Any]:
    model = event if isinstance(event, UsageEvent) else UsageEvent.model_validate(event)
    body = _compact(model.model_dump(mode="json"))
    body.setdefault("event_id", str(uuid.uuid4()))  # once per call: every retry sends the same
    return body


def record(
    user_id: str,
    usage_type: str,
    amount: int,
    *,
    event_id: str | None = None,
    reference_id: str | None = None,
    description: str | None = None,
    details: dict[str, Any] | None = None,
    reservation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Call[RecordResult]:
    """Record usage, idempotent on `event_id` (generated when absent, the same on every retry of
    this call). A repeat of an applied event answers its original breakdown with
    `duplicate=True`; the same id with another user, type or amount raises `EventIdConflict`."""
    event = UsageEvent(
        user_id=user_id,
        usage_type=usage_type,
        amount=amount,
        event_id=event_id,
        reference_id=reference_id,
        description=description,
        details=details,
        reservation_id=reservation_id,
        occurred_at=occurred_at,
    )
    return Call(ROUTES["record"].request(_event(event)), _same)


def record_batch(events: Iterable[UsageEvent | Mapping[str, Any]]) -> Call[BatchResult]:
    """Record up to 500 events (`UsageEvent`s or mappings of `record`'s parameters), each applied
    or rejected on its own; results in request order. Events without `event_id` get one, once."""
    return Call(ROUTES["record_batch"].request({"events": [_event(e) for e in events]}), _same)


def adjust(
    user_id: str,
    adjustment_id: str,
    usage_type: str,
    pool: Literal["purchased", "rollover"],
    delta: int,
    reason: str,
) -> Call[AdjustmentResult]:
    """Credit or correct a pooled usage type's `purchased` or `rollover` pool, idempotent on
    `adjustment_id`."""
    body = {"adjustment_id": adjustment_id, "usage_type": usage_type, "pool": pool, "delta": delta}
    return Call(ROUTES["adjust"].request({**body, "reason": reason}, user_id=user_id), _same)


def grant(
    user_id: str,
    grant_id: str,
    usage_type: str,
    amount: int,
    expires_at: datetime | str,
    reason: str,
) -> Call[GrantResult]:
    """Give `amount` units of a pooled usage type that expire at `expires_at`, idempotent on
    `grant_id`."""
    body = {"grant_id": grant_id, "usage_type": usage_type, "amount": amount}
    body |= {"expires_at": _iso(expires_at, "expires_at"), "reason": reason}
    return Call(ROUTES["grant"].request(body, user_id=user_id), _same)


def summary(user_id: str) -> Call[Summary]:
    """Plan, subscription, current period and, per usage type, limit / used / available."""
    return Call(ROUTES["summary"].request(user_id=user_id), _same)


def breakdown(
    user_id: str,
    *,
    usage_type: str | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> Call[UsageBreakdown]:
    """Usage from `start` (inclusive) to `end` (exclusive), default the current period, grouped as
    the catalog declares, largest total first."""
    query = _compact({"usage_type": usage_type, "from": start, "to": end})
    params = [(name, _iso(value, name)) for name, value in query.items()]
    return Call(ROUTES["breakdown"].request(params=params, user_id=user_id), _same)


def stats(user_id: str) -> Call[Stats]:
    """Lifetime totals per usage type and group."""
    return Call(ROUTES["stats"].request(user_id=user_id), _same)


def ledger(
    user_id: str, *, usage_type: str | None = None, page_size: int | None = None
) -> Call[Page[LedgerEntry]]:
    """Every journal entry of the user, newest first, fetched page by page (`page_size` entries a
    page, the service's `limit`) as the iteration goes."""
    query = _compact({"usage_type": usage_type, "limit": page_size})

    def page(cursor: str | None) -> Call[Page[LedgerEntry]]:
        params = [(name, str(value)) for name, value in _compact({**query, "cursor": cursor}).items()]
        request = ROUTES["ledger"].request(params=params, user_id=user_id)

        def read(got: LedgerPage) -> Page[LedgerEntry]:
            return Page(got.entries, page(got.next_cursor) if got.next_cursor else None)

        return Call(request, read)

    return page(None)


# ------------------------------------------------------------------------------------------------
# the exchange: base URL, headers, signing, retries


class Signer:
    """SigV4 for API Gateway's AWS_IAM authorizer (service `execute-api`), with credentials from
    botocore's default chain (environment, shared files, SSO, container and instance roles),
    resolved at the first request and refreshed by botocore when they are temporary."""

    def __init__(self, region: str) -> None:
        import botocore.session

        self.region = region
        self._session = botocore.session.Session()
        self._credentials: Any = None

    def headers(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._credentials is None:
            self._credentials = self._session.get_credentials()
            if self._credentials is None:
                raise MeteringError(
                    "no AWS credentials found (environment, shared files, SSO, container or instance role)",
                    status=None,
                    code="no_credentials",
                )
        signed = AWSRequest(method=method, url=url, data=body or b"", headers=dict(headers))
        SigV4Auth(self._credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(signed)
        return {k: v for k, v in signed.headers.items() if k.lower() not in {h.lower() for h in headers}}


@dataclass
class Exchange:
    base_url: str
    retries: int
    signer: Signer | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.retries < 0:
            raise ValueError(f"retries: must be >= 0 (got {self.retries})")

    def build(self, request: Request) -> httpx.Request:
        url = self.base_url + request.target()
        headers = {"Accept": "application/json", "User-Agent": f"metering-client/{__version__}"}
        if request.content is not None:
            headers["Content-Type"] = "application/json"
        if self.signer is not None:
            headers |= self.signer.headers(request.route.method, url, headers, request.content)
        return httpx.Request(request.route.method, url, headers=headers, content=request.content)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return self.rng.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))

    def flow(self, call: Call[T]) -> Flow[T]:
        route = call.request.route
        for attempt in range(self.retries + 1):
            reply = yield self.build(call.request)  # signed again: a fresh X-Amz-Date each attempt
            if isinstance(reply, httpx.Response) and reply.status_code in route.responses:
                model = route.responses[reply.status_code]
                return call.read(None if model is None else model.model_validate_json(reply.content))
            if isinstance(reply, httpx.Response):
                error = error_from_response(reply)
            elif isinstance(reply, httpx.TransportError):
                error = error_from_transport(reply)
            else:
                raise TypeError(f"a flow is sent a response or a transport error, not {reply!r}")
            if error.code == "not_found" and call.not_found is not None:
                return call.not_found()
            if attempt == self.retries or not is_retryable(error):
                raise error
            yield Sleep(self.backoff(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")


def exchange(base_url: str, *, aws_region: str | None, retries: int) -> Exchange:
    return Exchange(base_url, retries, Signer(aws_region) if aws_region else None)
