"""A stand-in for the `LambdaContext` object the Lambda runtime passes to a handler.

Powertools reads `function_name`, `memory_limit_in_mb`, `invoked_function_arn` and `aws_request_id`
(which must be a *str*: a `UUID` breaks `inject_lambda_context`'s JSON logging), and idempotency and
batch processing call `get_remaining_time_in_millis()`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT = "123456789012"


@dataclass
class FakeLambdaContext:
    function_name: str = "LocalFunction"
    function_version: str = "$LATEST"
    invoked_function_arn: str = f"arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:LocalFunction"
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/LocalFunction"
    log_stream_name: str = "local"
    timeout_s: float = 29.0
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def make_context(function_name: str, timeout_s: float = 29) -> FakeLambdaContext:
    """A fresh context (new request id, full time budget) for one invocation of `function_name`."""
    return FakeLambdaContext(
        function_name=function_name,
        invoked_function_arn=f"arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{function_name}",
        log_group_name=f"/aws/lambda/{function_name}",
        log_stream_name=time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()) + uuid.uuid4().hex,
        timeout_s=float(timeout_s),
    )
