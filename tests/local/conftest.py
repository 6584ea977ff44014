"""Fixtures for the local-tooling tests: a throwaway project (template + handlers). The tests use
the suite's own servers (`services`: the local PostgreSQL and Redis, else embedded ones)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Description: throwaway project for the devtools tests
Globals:
  Function:
    Runtime: python3.12
    Timeout: 10
    MemorySize: 256
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        EnableIamAuthorizer: true
        DefaultAuthorizer: AWS_IAM
        Authorizers:
          UserJwt:
            IdentitySource: $request.header.Authorization
            JwtConfiguration:
              issuer: !Sub "https://cognito-idp.${AWS::Region}.amazonaws.com/pool"
              audience: [!Ref "AWS::StackName"]
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: echo/
      Handler: app.handler
      Events:
        Service:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: "/v1/echo/{user_id}/items/{item_id}", Method: POST}
        Me:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: /v1/me/echo, Method: get, Auth: {Authorizer: UserJwt}}
        Open:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: /v1/open, Method: POST, Auth: {Authorizer: NONE}}
        Files:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: "/v1/files/{proxy+}", Method: ANY, Auth: {Authorizer: NONE}}
        Literal:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: /v1/files/exact, Method: GET, Auth: {Authorizer: NONE}}
  BoomFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: boom/
      Handler: app.handler
      Events:
        Boom:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: /v1/boom, Method: GET}
  PowertoolsFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: pt/
      Handler: app.lambda_handler
      Timeout: !If [IsProd, 5, 7]
      Events:
        Pt:
          Type: HttpApi
          Properties: {ApiId: !Ref Api, Path: "/v1/pt/{user_id}", Method: GET}
Conditions:
  IsProd: !Equals [!Ref "AWS::StackName", prod]
Outputs:
  ApiUrl:
    Value: !Sub "https://${Api}.execute-api.${AWS::Region}.amazonaws.com"
  EchoArn:
    Value: !GetAtt EchoFunction.Arn
"""

ECHO = """\
import json
import os

from helper import describe_context  # a sibling module, importable as in Lambda


def handler(event, context):
    print("echo handler log line on stdout")
    query = event.get("queryStringParameters") or {}
    payload = {"event": event, "context": describe_context(context)}
    payload["database_url"] = os.environ.get("DATABASE_URL")
    if query.get("mode") == "plain":
        return {"plain": True}
    headers = {"Content-Type": "application/json"}
    response = {"statusCode": 200, "headers": headers, "body": json.dumps(payload)}
    if query.get("mode") == "cookies":
        response["cookies"] = ["a=1; Path=/", "b=2; HttpOnly"]
    if query.get("mode") == "binary":
        import base64

        response = {"statusCode": 200, "headers": {"Content-Type": "application/octet-stream"},
                    "body": base64.b64encode(b"\\x00\\xffbin").decode(), "isBase64Encoded": True}
    return response
"""

HELPER = """\
def describe_context(context):
    return {
        "function_name": context.function_name,
        "aws_request_id": context.aws_request_id,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
"""

BOOM = """\
def handler(event, context):
    raise RuntimeError("boom from the handler")
"""

POWERTOOLS = """\
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()


@app.get("/v1/pt/<user_id>")
def get_user(user_id: str):
    event = app.current_event
    return {
        "user_id": user_id,
        "x": event.get_query_string_value("x"),
        "caller": event.request_context.authorizer.iam.user_arn,
        "route_key": event.request_context.route_key,
    }


def lambda_handler(event, context):
    return app.resolve(event, context)
"""


def write_project(root: Path) -> Path:
    """A template.yaml with three functions and their code under `root`; returns the template path."""
    files = {
        "template.yaml": TEMPLATE,
        "echo/app.py": ECHO,
        "echo/helper.py": HELPER,
        "boom/app.py": BOOM,
        "pt/app.py": POWERTOOLS,
        "docs/openapi.json": '{"openapi": "3.1.0", "info": {"title": "fake", "version": "0"}, "paths": {}}',
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "template.yaml"


@pytest.fixture(scope="session")
def fake_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("project"))


@pytest.fixture
def base_env() -> dict[str, str]:
    """This process's environment without DATABASE_URL / REDIS_URL, for subprocesses."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
