"""What every API model shares: the request and response bases, the error body, a period.

Apart from `metering.api.models` (the check and the writes) so that the summary function, whose
routes are reads (`metering.api.read_models`), does not define the write models at its cold start.
"""

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Response(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)


class PeriodOut(Response):
    start: datetime
    end: datetime


class ErrorOut(Response):
    code: str
    message: str


class ErrorBody(Response):
    error: ErrorOut
