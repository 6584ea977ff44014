"""`metering invoke` as a subprocess, and the template reader it shares with `metering dev`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metering_dev import template as tpl
from metering_dev.context import FakeLambdaContext, make_context


def invoke(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metering", "invoke", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def event_file(tmp_path: Path) -> Path:
    path = tmp_path / "event.json"
    path.write_text(
        json.dumps({"version": "2.0", "rawPath": "/v1/open", "body": '{"a": 1}'}), encoding="utf-8"
    )
    return path


def test_invoke_prints_handler_result_as_json(
    fake_project: Path, event_file: Path, base_env: dict[str, str], services: dict[str, str]
) -> None:
    env = {**base_env, "DATABASE_URL": services["database_url"], "REDIS_URL": services["redis_url"]}
    proc = invoke(
        "EchoFunction", str(event_file), "--template", str(fake_project), env=env, cwd=fake_project.parent
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout holds the result only; the handler's print went to stderr
    assert "echo handler log line on stdout" in proc.stderr
    assert result["statusCode"] == 200
    body = json.loads(result["body"])
    assert body["event"] == json.loads(event_file.read_text())
    assert body["context"]["function_name"] == "EchoFunction"
    assert body["context"]["memory_limit_in_mb"] == 256
    assert 0 < body["context"]["remaining_ms"] <= 10_000
    assert body["database_url"] == services["database_url"]
    assert proc.stdout.startswith("{\n  ")  # indent 2


def test_invoke_without_database_url_resolves_backends(
    fake_project: Path, event_file: Path, base_env: dict[str, str], tmp_path: Path
) -> None:
    proc = invoke(
        "EchoFunction",
        str(event_file),
        "--template",
        str(fake_project),
        "--state-dir",
        str(tmp_path / "state"),
        env=base_env,
        cwd=fake_project.parent,
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(json.loads(proc.stdout)["body"])
    assert body["database_url"].startswith("postgresql+pg8000://")
    assert "Database (local)" in proc.stderr or "Database (embedded)" in proc.stderr


def test_unknown_function_lists_the_known_ones(
    fake_project: Path, event_file: Path, base_env: dict[str, str]
) -> None:
    proc = invoke(
        "NopeFunction",
        str(event_file),
        "--template",
        str(fake_project),
        env=base_env,
        cwd=fake_project.parent,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "unknown function 'NopeFunction'" in proc.stderr
    assert "known: BoomFunction, EchoFunction, PowertoolsFunction" in proc.stderr


def test_missing_or_invalid_event_file(fake_project: Path, tmp_path: Path, base_env: dict[str, str]) -> None:
    proc = invoke(
        "EchoFunction",
        str(tmp_path / "missing.json"),
        "--template",
        str(fake_project),
        env=base_env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "event file not found" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    proc = invoke("EchoFunction", str(bad), "--template", str(fake_project), env=base_env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "is not JSON" in proc.stderr


def test_raising_handler_reports_lambda_error_shape(
    fake_project: Path, event_file: Path, base_env: dict[str, str], services: dict[str, str]
) -> None:
    env = {**base_env, "DATABASE_URL": services["database_url"], "REDIS_URL": services["redis_url"]}
    proc = invoke(
        "BoomFunction", str(event_file), "--template", str(fake_project), env=env, cwd=fake_project.parent
    )
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["errorType"] == "RuntimeError"
    assert error["errorMessage"] == "boom from the handler"
    assert "RuntimeError: boom from the handler" in proc.stderr


# ---- template reader and context, in process


def test_template_functions_routes_and_auth(fake_project: Path) -> None:
    specs = tpl.functions(fake_project)
    assert set(specs) == {"EchoFunction", "BoomFunction", "PowertoolsFunction"}
    echo = specs["EchoFunction"]
    assert echo.code_uri == fake_project.parent / "echo"
    assert echo.handler == "app.handler"
    assert (echo.timeout_s, echo.memory_mb) == (10, 256)  # from Globals
    assert {(r.method, r.path, r.auth) for r in echo.routes} == {
        ("POST", "/v1/echo/{user_id}/items/{item_id}", "AWS_IAM"),  # the API's DefaultAuthorizer
        ("GET", "/v1/me/echo", "JWT"),
        ("POST", "/v1/open", "NONE"),
        ("ANY", "/v1/files/{proxy+}", "NONE"),
        ("GET", "/v1/files/exact", "NONE"),
    }
    assert specs["PowertoolsFunction"].timeout_s == 3  # !If is not resolved: Lambda's default


def test_template_short_tags_load_as_long_form(fake_project: Path) -> None:
    doc = tpl.load_template(fake_project)
    assert doc["Outputs"]["EchoArn"]["Value"] == {"Fn::GetAtt": ["EchoFunction", "Arn"]}
    assert doc["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "AWS::StackName"}, "prod"]}
    assert doc["Resources"]["EchoFunction"]["Properties"]["Events"]["Service"]["Properties"]["ApiId"] == {
        "Ref": "Api"
    }


def test_missing_default_authorizer_means_none(tmp_path: Path) -> None:
    (tmp_path / "fn").mkdir()
    (tmp_path / "template.yaml").write_text(
        "Resources:\n"
        "  F:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties:\n"
        "      CodeUri: fn/\n"
        "      Handler: app.handler\n"
        "      Events:\n"
        "        E: {Type: HttpApi, Properties: {Path: /x, Method: GET}}\n"
        "        Q: {Type: SQS, Properties: {Queue: !GetAtt Q.Arn}}\n",
        encoding="utf-8",
    )
    assert tpl.functions(tmp_path / "template.yaml")["F"].routes == [tpl.Route("GET", "/x", "NONE")]


def test_load_handler_imports_each_app_py_once_under_its_own_name(fake_project: Path) -> None:
    specs = tpl.functions(fake_project)
    echo = tpl.load_handler(specs["EchoFunction"])
    boom = tpl.load_handler(specs["BoomFunction"])
    assert echo is not boom
    assert echo.__module__ == "lambda_EchoFunction" and boom.__module__ == "lambda_BoomFunction"
    assert tpl.load_handler(specs["EchoFunction"]) is echo  # cached per logical id
    result = echo({"queryStringParameters": {"mode": "plain"}}, make_context("EchoFunction"))
    assert result == {"plain": True}
    with pytest.raises(RuntimeError, match="boom"):
        boom({}, make_context("BoomFunction"))


def test_fake_context() -> None:
    ctx = make_context("CheckFunction", timeout_s=2)
    assert isinstance(ctx, FakeLambdaContext)
    assert ctx.function_name == "CheckFunction"
    assert ctx.invoked_function_arn.endswith(":function:CheckFunction")
    assert isinstance(ctx.aws_request_id, str) and len(ctx.aws_request_id) == 36
    assert make_context("CheckFunction").aws_request_id != ctx.aws_request_id
    assert 1500 < ctx.get_remaining_time_in_millis() <= 2000
    assert isinstance(ctx.memory_limit_in_mb, int)
