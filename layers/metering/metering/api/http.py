"""The one place that turns errors into HTTP responses, shared by every handler.

`make_resolver()` gives an APIGatewayHttpResolver with pydantic validation on, where
- a request that fails validation is 400 `validation_error` (or 413 `payload_too_large`) with a
  message naming the field (Powertools' default would be 422 with its own shape);
- a MeteringError becomes its status and `{"error": {"code", "message"}}`;
- anything else is logged with its traceback and answered 500 `internal_error`, without details.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from metering.errors import MeteringError, PayloadTooLarge, Unauthorized
from metering.observability import logger

MAX_BODY_BYTES = 5 * 1024 * 1024  # a batch of 500 events with 8 KiB of details each fits
# An id in a path: whatever API Gateway can deliver in one segment (it decodes the path, and
# cannot carry '/' or '?' there; the request models refuse ids with those, and NUL, at creation).
ID_IN_PATH = r"^[^/?\x00]+$"
USER_ID_PATH = PathParam(min_length=1, max_length=255, pattern=ID_IN_PATH)
RESERVATION_ID_PATH = PathParam(min_length=1, max_length=255, pattern=ID_IN_PATH)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "validation_error, unknown_usage_type, ..."},
    413: {"description": "payload_too_large"},
    500: {"description": "internal_error"},
    503: {"description": "unavailable or not_configured"},
}


def error_response(status: int, code: str, message: str) -> Response[dict[str, Any]]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body={"error": {"code": code, "message": message}},
    )


def created_or_replayed[M](model: M, *, applied: bool) -> Response[M]:
    """201 for a state change just applied, 200 for the replay of one applied before."""
    return Response(
        status_code=201 if applied else 200, content_type=content_types.APPLICATION_JSON, body=model
    )


def describe_validation_errors(errors: Any) -> tuple[int, str, str]:
    """(status, code, message) for a list of pydantic-style errors, naming each field."""
    parts, status, code = [], 400, "validation_error"
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc) or "body"
        if err.get("type") == "payload_too_large":
            status, code = 413, "payload_too_large"
        if err.get("type") == "json_invalid":
            field, msg = "body", "is not valid JSON"
        elif err.get("type") == "missing":
            msg = "is required"
        else:
            msg = err.get("msg", "is invalid")
        parts.append(f"{field}: {msg}")
    return status, code, "; ".join(parts) or "invalid request"


def body_size(event: Mapping[str, Any]) -> int:
    """Bytes the client sent (a base64 body is 4/3 of that)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return len(body) * 3 // 4 - (len(body) - len(body.rstrip("=")))  # minus the padding
    return len(body.encode())


class MeteringResolver(APIGatewayHttpResolver):
    """Refuses an oversize body before anything parses it: Powertools validates the body before
    any middleware runs, so the size gate sits in front of `resolve`.

    Path parameters: a route's parameter matches any text of one path segment (Powertools' own
    pattern takes only URI-safe ASCII and word characters, so ids such as "a#b", "€" or an emoji
    matched no route), and its value is the one API Gateway decoded into `pathParameters`, not
    the text cut out of the path (which may still be percent-encoded)."""

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}$") -> re.Pattern[str]:
        return re.compile(base_regex.format(re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", rule)))

    def _convert_matches_into_route_keys(self, match: re.Match[str]) -> dict[str, str]:
        decoded = self.current_event.path_parameters or {}
        return {name: decoded.get(name, value) for name, value in match.groupdict().items()}

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        size = body_size(event)
        if size > MAX_BODY_BYTES:
            return {
                "statusCode": 413,
                "headers": {"Content-Type": content_types.APPLICATION_JSON},
                "body": json.dumps(
                    PayloadTooLarge(f"body: {size} bytes, at most {MAX_BODY_BYTES} allowed").to_body()
                ),
                "isBase64Encoded": False,
            }
        return super().resolve(event, context)


def make_resolver() -> APIGatewayHttpResolver:
    app = MeteringResolver(enable_validation=True)

    @app.exception_handler(RequestValidationError)
    def _invalid(error: RequestValidationError) -> Response[Any]:
        status, code, message = describe_validation_errors(error.errors())
        return error_response(status, code, message)

    @app.exception_handler([UnicodeDecodeError, binascii.Error])
    def _undecodable(error: Exception) -> Response[Any]:
        # a body API Gateway base64-encoded because it is not UTF-8 text cannot be JSON
        return error_response(400, "validation_error", "body: is not valid UTF-8 text")

    @app.exception_handler(MeteringError)
    def _domain(error: MeteringError) -> Response[Any]:
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(NotFoundError)
    def _no_route(error: NotFoundError) -> Response[Any]:
        return error_response(404, "not_found", "no such route")

    @app.exception_handler(Exception)
    def _unexpected(error: Exception) -> Response[Any]:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the request may be retried")

    return app


def jwt_subject(event: APIGatewayProxyEventV2) -> str:
    """The user a `/v1/me/...` request acts for: the JWT `sub` claim from API Gateway's authorizer."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    claims = (authorizer.get("jwt") or {}).get("claims") or {}
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 1 <= len(sub) <= 255:
        raise Unauthorized("a JWT with a `sub` claim is required")
    return sub
