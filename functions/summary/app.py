"""SummaryFunction: summary, breakdown, stats and ledger history of a user (api.md sections 5, 7).

`/v1/users/{user_id}/...` are service routes (AWS_IAM); `/v1/me/...` act for the JWT `sub` that API
Gateway's authorizer verified (401 `unauthorized` without one). Locally, `make dev` turns an
`X-Metering-User: <id>` header (or a Bearer JWT, decoded but not verified) into that claim.
"""

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from metering.api.base import ErrorBody
from metering.api.http import USER_ID_PATH, jwt_subject, make_resolver
from metering.api.read_models import BreakdownResponse, LedgerResponse, StatsResponse, SummaryResponse
from metering.observability import logger, metrics
from metering.services import ledger_history, reads

app = make_resolver()


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"model": ErrorBody}}}


SERVICE_ERRORS: dict[int, dict[str, Any]] = {
    500: _error("internal_error"),
    503: _error("unavailable: the database is unreachable"),
}
USER_ERRORS = {400: _error("validation_error: user_id is 1..255 characters"), **SERVICE_ERRORS}
ME_ERRORS = {401: _error("unauthorized: no JWT `sub` claim"), **SERVICE_ERRORS}
BREAKDOWN_ERRORS = {
    400: _error("validation_error naming `from` or `to`; unknown_usage_type"),
    **SERVICE_ERRORS,
}

UsageTypeQuery = Annotated[
    str | None,
    Query(max_length=64, description="only this usage type (400 unknown_usage_type if not in the catalog)"),
]
FromQuery = Annotated[
    str | None,
    Query(
        alias="from",
        max_length=64,
        description="window start, ISO-8601 with a timezone (e.g. 2026-01-01T00:00:00Z); "
        "default: the current period's start",
    ),
]
ToQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="window end (exclusive), ISO-8601 with a timezone; default: the current period's end. "
        "At most 366 days after `from`",
    ),
]

LimitQuery = Annotated[str | None, Query(max_length=20, description="entries per page, 1..500 (default 100)")]
CursorQuery = Annotated[
    str | None, Query(max_length=4096, description="next_cursor of the previous page (opaque)")
]
LEDGER_ERRORS = {
    400: _error("validation_error naming `limit` or `cursor`; unknown_usage_type"),
    **SERVICE_ERRORS,
}

OK = {200: {"description": "OK"}}
SUMMARY = "Plan, subscription, current period and availability per usage type"
BREAKDOWN = "Usage in a window grouped as the catalog declares, largest first"
STATS = "Lifetime totals per usage type and group (maintained aggregates)"
LEDGER = "Ledger history: every journal entry, newest first, with the balance after it"


@app.get("/v1/users/<user_id>/summary", summary=SUMMARY, responses={**OK, **USER_ERRORS})
def user_summary(user_id: Annotated[str, USER_ID_PATH]) -> SummaryResponse:
    return reads.summary(user_id)


@app.get("/v1/me/summary", summary=SUMMARY + " (the caller)", responses={**OK, **ME_ERRORS})
def my_summary() -> SummaryResponse:
    return reads.summary(jwt_subject(app.current_event))


@app.get(
    "/v1/users/<user_id>/breakdown",
    summary=BREAKDOWN,
    responses={**OK, **BREAKDOWN_ERRORS},
)
def user_breakdown(
    user_id: Annotated[str, USER_ID_PATH],
    usage_type: UsageTypeQuery = None,
    from_: FromQuery = None,
    to: ToQuery = None,
) -> BreakdownResponse:
    return reads.breakdown(user_id, usage_type=usage_type, start=from_, end=to)


@app.get(
    "/v1/me/breakdown",
    summary=BREAKDOWN + " (the caller)",
    responses={**OK, **BREAKDOWN_ERRORS, **ME_ERRORS},
)
def my_breakdown(
    usage_type: UsageTypeQuery = None, from_: FromQuery = None, to: ToQuery = None
) -> BreakdownResponse:
    return reads.breakdown(jwt_subject(app.current_event), usage_type=usage_type, start=from_, end=to)


@app.get("/v1/users/<user_id>/stats", summary=STATS, responses={**OK, **USER_ERRORS})
def user_stats(user_id: Annotated[str, USER_ID_PATH]) -> StatsResponse:
    return reads.stats(user_id)


@app.get("/v1/me/stats", summary=STATS + " (the caller)", responses={**OK, **ME_ERRORS})
def my_stats() -> StatsResponse:
    return reads.stats(jwt_subject(app.current_event))


@app.get("/v1/users/<user_id>/ledger", summary=LEDGER, responses={**OK, **LEDGER_ERRORS, **USER_ERRORS})
def user_ledger(
    user_id: Annotated[str, USER_ID_PATH],
    usage_type: UsageTypeQuery = None,
    limit: LimitQuery = None,
    cursor: CursorQuery = None,
) -> LedgerResponse:
    return ledger_history.ledger(user_id, usage_type=usage_type, limit=limit, cursor=cursor)


@app.get("/v1/me/ledger", summary=LEDGER + " (the caller)", responses={**OK, **LEDGER_ERRORS, **ME_ERRORS})
def my_ledger(
    usage_type: UsageTypeQuery = None, limit: LimitQuery = None, cursor: CursorQuery = None
) -> LedgerResponse:
    user_id = jwt_subject(app.current_event)
    return ledger_history.ledger(user_id, usage_type=usage_type, limit=limit, cursor=cursor)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
