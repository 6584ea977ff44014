"""CheckFunction: POST /v1/check and DELETE /v1/users/{user_id}/reservations/{reservation_id}."""

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from metering.api.http import ERROR_RESPONSES, RESERVATION_ID_PATH, USER_ID_PATH, make_resolver
from metering.api.models import CheckRequest, CheckResponse
from metering.observability import logger, metrics
from metering.services import check as checks

app = make_resolver()


@app.post(
    "/v1/check", summary="May this user consume this amount? Optionally hold it.", responses=ERROR_RESPONSES
)
def check(request: Annotated[CheckRequest, Body()]) -> CheckResponse:
    return checks.check(request)


@app.delete(
    "/v1/users/<user_id>/reservations/<reservation_id>",
    summary="Release a live reservation",
    responses={204: {"description": "released"}, 404: {"description": "no live reservation"}},
)
def release(
    user_id: Annotated[str, USER_ID_PATH], reservation_id: Annotated[str, RESERVATION_ID_PATH]
) -> Response[None]:
    checks.release(user_id, reservation_id)
    return Response(status_code=204)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
