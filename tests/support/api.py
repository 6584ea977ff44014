"""Calls to the real handlers with contract-shaped requests (what a product's backend sends)."""

from __future__ import annotations

from typing import Any

from tests.support.lambda_events import call, http_event


def check(
    user_id: str, usage_type: str, amount: int, reservation: dict[str, Any] | None = None
) -> tuple[int, Any]:
    body: dict[str, Any] = {"user_id": user_id, "usage_type": usage_type, "amount": amount}
    if reservation is not None:
        body["reservation"] = reservation
    return call("check", http_event("POST", "/v1/check", body))


def release(user_id: str, reservation_id: str) -> tuple[int, Any]:
    path = f"/v1/users/{user_id}/reservations/{reservation_id}"
    return call(
        "check",
        http_event(
            "DELETE",
            path,
            route="/v1/users/{user_id}/reservations/{reservation_id}",
            path_parameters={"user_id": user_id, "reservation_id": reservation_id},
        ),
    )


def record(event_id: str, user_id: str, usage_type: str, amount: int, **fields: Any) -> tuple[int, Any]:
    body = {"event_id": event_id, "user_id": user_id, "usage_type": usage_type, "amount": amount, **fields}
    return call("record", http_event("POST", "/v1/usage", body))


def batch(events: list[Any]) -> tuple[int, Any]:
    return call("record", http_event("POST", "/v1/usage/batch", {"events": events}))


def adjust(
    user_id: str, adjustment_id: str, usage_type: str, pool: str, delta: int, reason: str = "support grant"
) -> tuple[int, Any]:
    body = {
        "adjustment_id": adjustment_id,
        "usage_type": usage_type,
        "pool": pool,
        "delta": delta,
        "reason": reason,
    }
    path = f"/v1/users/{user_id}/adjustments"
    return call(
        "record",
        http_event(
            "POST", path, body, route="/v1/users/{user_id}/adjustments", path_parameters={"user_id": user_id}
        ),
    )


def grant(
    user_id: str,
    grant_id: str,
    usage_type: str,
    amount: int,
    expires_at: str,
    reason: str = "promotion",
) -> tuple[int, Any]:
    """POST /v1/users/{user_id}/grants: credit that expires at `expires_at` (ISO-8601)."""
    body = {
        "grant_id": grant_id,
        "usage_type": usage_type,
        "amount": amount,
        "expires_at": expires_at,
        "reason": reason,
    }
    return call(
        "record",
        http_event(
            "POST",
            f"/v1/users/{user_id}/grants",
            body,
            route="/v1/users/{user_id}/grants",
            path_parameters={"user_id": user_id},
        ),
    )


def read(kind: str, user_id: str, **query: str) -> tuple[int, Any]:
    """GET /v1/users/{user_id}/{kind} (summary, breakdown, stats, ledger) as the product's backend."""
    path = f"/v1/users/{user_id}/{kind}"
    return call(
        "summary",
        http_event(
            "GET",
            path,
            route=f"/v1/users/{{user_id}}/{kind}",
            path_parameters={"user_id": user_id},
            query=query or None,
        ),
    )


def read_me(kind: str, sub: str | None = None, **query: str) -> tuple[int, Any]:
    """GET /v1/me/{kind} as the signed-in user `sub` (no JWT at all when None)."""
    return call("summary", http_event("GET", f"/v1/me/{kind}", jwt_sub=sub, query=query or None))
