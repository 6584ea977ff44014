"""RecordFunction (POST /v1/usage, /v1/usage/batch, /v1/users/{user_id}/adjustments and
/v1/users/{user_id}/grants) and
RecordQueueFunction (the SQS usage queue): same code, two handlers."""

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from metering.api.http import ERROR_RESPONSES, USER_ID_PATH, created_or_replayed, make_resolver
from metering.api.models import (
    AdjustmentRequest,
    AdjustmentResponse,
    BatchRequest,
    BatchResponse,
    GrantRequest,
    GrantResponse,
    UsageRequest,
    UsageResponse,
)
from metering.ingest import batch_results, process_queue_batch
from metering.observability import logger, metrics
from metering.services import adjustments, grants, record

app = make_resolver()


@app.post(
    "/v1/usage",
    summary="Record usage (idempotent on event_id)",
    responses={201: {"description": "recorded"}, 200: {"description": "duplicate"}, **ERROR_RESPONSES},
)
def record_usage(event: Annotated[UsageRequest, Body()]) -> Response[UsageResponse]:
    outcome = record.record(event)
    response = outcome.response
    assert response is not None
    return created_or_replayed(response, applied=outcome.status == "recorded")


@app.post("/v1/usage/batch", summary="Record up to 500 events, each on its own", responses=ERROR_RESPONSES)
def record_batch(batch: Annotated[BatchRequest, Body()]) -> BatchResponse:
    return batch_results(batch.events)


@app.post(
    "/v1/users/<user_id>/adjustments",
    summary="Grant or correct purchased / rollover credit (idempotent on adjustment_id)",
    responses={201: {"description": "applied"}, 200: {"description": "duplicate"}, **ERROR_RESPONSES},
)
def adjust(
    user_id: Annotated[str, USER_ID_PATH], adjustment: Annotated[AdjustmentRequest, Body()]
) -> Response[AdjustmentResponse]:
    outcome = adjustments.adjust(user_id, adjustment)
    return created_or_replayed(outcome.response, applied=outcome.applied)


@app.post(
    "/v1/users/<user_id>/grants",
    summary="Grant credit that expires (idempotent on grant_id)",
    responses={201: {"description": "granted"}, 200: {"description": "duplicate"}, **ERROR_RESPONSES},
)
def grant(
    user_id: Annotated[str, USER_ID_PATH], request: Annotated[GrantRequest, Body()]
) -> Response[GrantResponse]:
    outcome = grants.grant(user_id, request)
    return created_or_replayed(outcome.response, applied=outcome.applied)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)


@logger.inject_lambda_context
@metrics.log_metrics
def queue_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch: report only retryable failures; never-valid messages go to the dead-letter queue."""
    return process_queue_batch(event)
