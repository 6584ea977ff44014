"""Run the maintenance function's migrate in a deployed stack: the last step of `make deploy`.

    python infra/migrate.py --stack-name metering-quickstart

The function is the stack's `MaintenanceFunctionName` output. It is invoked once and waited for
(up to the function's 300 s timeout): a client that timed out after the SDK's default 60 s and
retried would start a second migrate beside the first. A failed migrate exits non-zero with the
function's error. Credentials and region come from the environment (AWS_PROFILE, AWS_REGION).
Needs boto3 only (the SAM CLI's virtualenv has it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

OUTPUT = "MaintenanceFunctionName"
EVENT = {"action": "migrate"}
READ_TIMEOUT_S = 330  # the function's Timeout (300 s) and some


def function_name(cloudformation: Any, stack: str) -> str:
    outputs = cloudformation.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    for output in outputs:
        if output["OutputKey"] == OUTPUT:
            return str(output["OutputValue"])
    raise SystemExit(f"stack {stack} has no {OUTPUT} output: is it a metering stack?")


def migrate(lambda_client: Any, function: str) -> Any:
    response = lambda_client.invoke(FunctionName=function, Payload=json.dumps(EVENT).encode())
    result = json.loads(response["Payload"].read() or b"null")
    if response.get("FunctionError"):
        raise SystemExit(f"migrate failed in {function}: {json.dumps(result)}")
    return result


def lambda_client(session: Any) -> Any:
    from botocore.config import Config

    config = Config(read_timeout=READ_TIMEOUT_S, retries={"total_max_attempts": 1})
    return session.client("lambda", config=config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack-name", required=True)
    args = parser.parse_args(argv)

    import boto3

    session = boto3.Session()
    function = function_name(session.client("cloudformation"), args.stack_name)
    print(f"migrating with {function} ...", file=sys.stderr)
    print(json.dumps(migrate(lambda_client(session), function)))


if __name__ == "__main__":
    main()
