"""template.yaml: the linters, the SAM translator, a container-free `sam build`, and the contract.

Tools come from SAM_BIN (a directory with `sam` and `cfn-lint`, default <repo>/.venv-sam/bin, made
by `make samvenv`) and PY312_BIN (a directory with python3.12, which `sam build` needs on PATH).
Missing tools fail the tests; they are never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from metering.devtools.template import load_template

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"

# api.md section 1: logical id -> CodeUri
FUNCTIONS = {
    "CheckFunction": "functions/check/",
    "RecordFunction": "functions/record/",
    "RecordQueueFunction": "functions/record/",
    "SummaryFunction": "functions/summary/",
    "StripeWebhookFunction": "functions/stripe_webhook/",
}

# api.md section 5: (method, path) -> (function, auth kind)
ROUTES = {
    ("POST", "/v1/check"): ("CheckFunction", "IAM"),
    ("DELETE", "/v1/users/{user_id}/reservations/{reservation_id}"): ("CheckFunction", "IAM"),
    ("POST", "/v1/usage"): ("RecordFunction", "IAM"),
    ("POST", "/v1/usage/batch"): ("RecordFunction", "IAM"),
    ("POST", "/v1/users/{user_id}/adjustments"): ("RecordFunction", "IAM"),
    ("GET", "/v1/users/{user_id}/summary"): ("SummaryFunction", "IAM"),
    ("GET", "/v1/me/summary"): ("SummaryFunction", "JWT"),
    ("GET", "/v1/users/{user_id}/breakdown"): ("SummaryFunction", "IAM"),
    ("GET", "/v1/me/breakdown"): ("SummaryFunction", "JWT"),
    ("GET", "/v1/users/{user_id}/stats"): ("SummaryFunction", "IAM"),
    ("GET", "/v1/me/stats"): ("SummaryFunction", "JWT"),
    ("POST", "/v1/stripe/webhook"): ("StripeWebhookFunction", "NONE"),
}

ENV_VARS = {
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_IAM_AUTH",
    "REDIS_URL",
    "BILLING_ENABLED",
    "METERING_CATALOG",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}


# ---------------------------------------------------------------------------------------------
# tools


def _sam_bin() -> Path:
    return Path(os.environ.get("SAM_BIN") or REPO / ".venv-sam" / "bin")


def _py312_bin() -> Path | None:
    if os.environ.get("PY312_BIN"):
        return Path(os.environ["PY312_BIN"])
    for candidate in sorted(Path("/root/.pyenv/versions").glob("3.12*/bin")):
        if (candidate / "python3.12").exists():
            return candidate
    found = shutil.which("python3.12")
    return Path(found).parent if found else None


def _tool(name: str) -> Path:
    path = _sam_bin() / name
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} not found: run `make samvenv` (or set SAM_BIN to a directory with sam and cfn-lint)"
        )
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        SAM_CLI_TELEMETRY="0",
        # fake credentials and no config files: nothing may reach AWS
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    env.update(extra)
    return env


def _run(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(cmd)} timed out after {timeout} s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        )


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


# ---------------------------------------------------------------------------------------------
# the four commands


def test_cfn_lint() -> None:
    _ok(_run([str(_tool("cfn-lint")), "template.yaml"], timeout=180))


def test_sam_validate_lint() -> None:
    _ok(_run([str(_tool("sam")), "validate", "--lint", "--template-file", "template.yaml"], timeout=180))


def test_sam_validate_translator() -> None:
    # catches what the linters do not (an undefined route authorizer, for one)
    proc = _run(
        [str(_tool("sam")), "validate", "--region", "us-east-1", "--template-file", "template.yaml"],
        timeout=180,
    )
    _ok(proc)


def test_sam_build_without_containers(tmp_path: Path) -> None:
    sam = _tool("sam")
    py_bin = _py312_bin()
    if py_bin is None or not (py_bin / "python3.12").exists():
        pytest.fail(f"python3.12 not found (PY312_BIN={py_bin}): sam build needs it on PATH")
    build_dir = tmp_path / "build"
    env = _env(PATH=f"{py_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = _run(
        [str(sam), "build", "--template-file", "template.yaml", "--build-dir", str(build_dir)],
        timeout=900,
        env=env,
    )
    _ok(proc)

    layer = build_dir / "MeteringLayer" / "python"
    listing = sorted(p.name for p in layer.iterdir()) if layer.is_dir() else []
    assert (layer / "metering" / "__init__.py").is_file(), f"metering package missing from layer: {listing}"
    assert not (layer / "python").exists(), "layer built as python/python/: the source has a python/ folder"
    for package in ("sqlalchemy", "pg8000"):
        assert (layer / package).is_dir(), f"{package} missing from the layer: {listing}"
    assert not (layer / "stripe").exists(), "stripe belongs to the webhook function, not the layer"
    webhook = build_dir / "StripeWebhookFunction"
    assert (webhook / "stripe").is_dir(), f"stripe missing from StripeWebhookFunction: {os.listdir(webhook)}"


# ---------------------------------------------------------------------------------------------
# structure


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: res.get("Properties", {})
        for name, res in template["Resources"].items()
        if res["Type"] == "AWS::Serverless::Function"
    }


def _globals(template: dict[str, Any]) -> dict[str, Any]:
    return template.get("Globals", {}).get("Function", {})


def _prop(template: dict[str, Any], props: dict[str, Any], key: str) -> Any:
    return props.get(key, _globals(template).get(key))


def _http_api(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    apis = [(n, r) for n, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::HttpApi"]
    assert len(apis) == 1, f"expected one AWS::Serverless::HttpApi, found {[n for n, _ in apis]}"
    name, res = apis[0]
    return name, res.get("Properties", {})


def _auth_kind(authorizer: str | None, api_auth: dict[str, Any]) -> str:
    if authorizer is None:
        authorizer = api_auth.get("DefaultAuthorizer")
    if authorizer in (None, "NONE"):
        return "NONE"
    if authorizer == "AWS_IAM":
        assert api_auth.get("EnableIamAuthorizer") is True, (
            "AWS_IAM routes need Auth.EnableIamAuthorizer: true"
        )
        return "IAM"
    definition = api_auth.get("Authorizers", {}).get(authorizer)
    assert definition is not None, f"authorizer {authorizer!r} is not defined on the HttpApi"
    if "JwtConfiguration" in definition:
        assert definition.get("IdentitySource") == "$request.header.Authorization"
        return "JWT"
    return f"other:{authorizer}"


def test_routes_are_wired_once_with_the_right_auth(template: dict[str, Any]) -> None:
    api_name, api = _http_api(template)
    api_auth = api.get("Auth", {})
    wired: list[tuple[str, str, str, str]] = []
    for fn, props in _functions(template).items():
        for ev_name, ev in (props.get("Events") or {}).items():
            if ev.get("Type") != "HttpApi":
                continue
            p = ev.get("Properties", {})
            where = f"{fn}.Events.{ev_name}"
            assert p.get("ApiId") == {"Ref": api_name}, f"{where}: ApiId must be !Ref {api_name}"
            assert str(p.get("PayloadFormatVersion", "2.0")) == "2.0", f"{where}: payload format 2.0"
            kind = _auth_kind((p.get("Auth") or {}).get("Authorizer"), api_auth)
            wired.append((str(p.get("Method", "")).upper(), p.get("Path", ""), fn, kind))

    counts = Counter((m, path) for m, path, _, _ in wired)
    problems = []
    for (method, path), (fn, kind) in ROUTES.items():
        if counts[(method, path)] != 1:
            problems.append(f"{method} {path}: wired {counts[(method, path)]} times")
            continue
        got = next((f, k) for m, p, f, k in wired if (m, p) == (method, path))
        if got != (fn, kind):
            problems.append(f"{method} {path}: expected {fn}/{kind}, got {got[0]}/{got[1]}")
    assert not problems, "\n".join(problems)
    for method, path, fn, kind in wired:
        assert kind in ("IAM", "JWT", "NONE"), f"{method} {path} ({fn}): unexpected auth {kind}"
        if path.startswith("/v1/me/"):
            assert kind == "JWT", f"{method} {path} must use the JWT authorizer"


def test_jwt_authorizer_takes_issuer_and_audience_from_parameters(template: dict[str, Any]) -> None:
    _, api = _http_api(template)
    jwt = api["Auth"]["Authorizers"]["UserJwt"]["JwtConfiguration"]
    assert jwt["issuer"] == {"Ref": "JwtIssuer"}
    assert jwt["audience"] in ({"Ref": "JwtAudience"}, [{"Ref": "JwtAudience"}])
    assert {"JwtIssuer", "JwtAudience"} <= set(template["Parameters"])


def test_functions_use_python312_and_the_layer(template: dict[str, Any]) -> None:
    functions = _functions(template)
    for fn, code_uri in FUNCTIONS.items():
        assert fn in functions, f"{fn} missing"
        assert functions[fn]["CodeUri"] == code_uri, f"{fn}: CodeUri {functions[fn]['CodeUri']!r}"
    assert functions["MaintenanceFunction"]["CodeUri"] == "functions/maintenance/"
    for fn, props in functions.items():
        assert _prop(template, props, "Runtime") == "python3.12", f"{fn}: runtime"
        layers = list(_globals(template).get("Layers", [])) + list(props.get("Layers", []))
        assert {"Ref": "MeteringLayer"} in layers, f"{fn}: does not use MeteringLayer"
        assert props.get("VpcConfig"), f"{fn}: no VpcConfig (every function reaches the RDS Proxy)"
        if any(ev.get("Type") == "HttpApi" for ev in (props.get("Events") or {}).values()):
            assert int(_prop(template, props, "Timeout") or 3) <= 29, f"{fn}: timeout over API Gateway's 30 s"
    assert "VpcConfig" not in _globals(template), "a global VpcConfig cannot be opted out of per function"

    layer = template["Resources"]["MeteringLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["ContentUri"] == "layers/metering/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Metadata"]["BuildMethod"] == "python3.12"
    assert not (REPO / "layers" / "metering" / "python").exists(), "layer source must not have python/"


@pytest.mark.parametrize("fn", [*FUNCTIONS, "MaintenanceFunction"])
def test_handler_resolves_to_a_callable(template: dict[str, Any], fn: str) -> None:
    props = _functions(template)[fn]
    module, _, attr = props["Handler"].rpartition(".")
    source = REPO / props["CodeUri"] / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{fn}: handler module {source.relative_to(REPO)} does not exist"
    text = source.read_text()
    pattern = rf"^(?:async\s+)?def\s+{re.escape(attr)}\s*\(|^{re.escape(attr)}\s*(?::[^=\n]+)?=(?!=)"
    assert re.search(pattern, text, re.MULTILINE), f"{fn}: {source.relative_to(REPO)} defines no {attr}"


def test_environment(template: dict[str, Any]) -> None:
    functions = _functions(template)
    global_env = _globals(template).get("Environment", {}).get("Variables", {})
    for fn, props in functions.items():
        env = {**global_env, **props.get("Environment", {}).get("Variables", {})}
        missing = ENV_VARS - set(env)
        assert not missing, f"{fn}: missing environment variables {sorted(missing)}"
        assert env["DB_IAM_AUTH"] == "true"
        assert "DATABASE_URL" not in env, "DATABASE_URL is for local use only"
    queue_env = functions["RecordQueueFunction"]["Environment"]["Variables"]
    assert queue_env["USAGE_DLQ_URL"] == {"Ref": "UsageDeadLetterQueue"}
    webhook_env = functions["StripeWebhookFunction"]["Environment"]["Variables"]
    assert webhook_env["STRIPE_WEBHOOK_SECRET_ARN"] == {"Ref": "StripeWebhookSecretArn"}
    redis = global_env["REDIS_URL"]
    assert isinstance(redis, dict) and "Fn::If" in redis, "REDIS_URL must be empty when RedisEndpoint is"


def test_queue_consumer_and_dead_letter_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    props = _functions(template)["RecordQueueFunction"]
    assert props["Handler"] == "app.queue_handler"
    # declared as its own EventSourceMapping, not a SAM `SQS` event: that event would attach the
    # AWS managed AWSLambdaSQSQueueExecutionRole (receive/delete on every queue in the account)
    assert not [ev for ev in (props.get("Events") or {}).values() if ev["Type"] == "SQS"]
    mappings = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == 1
    event = mappings[0]
    assert event["FunctionName"] == {"Ref": "RecordQueueFunction"}
    assert event["EventSourceArn"] == {"Fn::GetAtt": ["UsageQueue", "Arn"]}
    assert "ReportBatchItemFailures" in event.get("FunctionResponseTypes", []), "partial batch failures"
    assert event.get("ScalingConfig", {}).get("MaximumConcurrency"), "cap consumers with MaximumConcurrency"

    queue = resources["UsageQueue"]["Properties"]
    assert resources["UsageQueue"]["Type"] == "AWS::SQS::Queue"
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]}
    assert int(queue["RedrivePolicy"]["maxReceiveCount"]) == 5
    timeout = int(_prop(template, props, "Timeout"))
    assert int(queue["VisibilityTimeout"]) >= 6 * timeout, "VisibilityTimeout must be >= 6 x function timeout"
    dlq = resources["UsageDeadLetterQueue"]["Properties"]
    assert int(dlq["MessageRetentionPeriod"]) == 14 * 24 * 3600


def _statements(node: Any) -> list[dict[str, Any]]:
    """Every IAM statement anywhere below node."""
    found = []
    if isinstance(node, dict):
        if "Effect" in node and "Action" in node:
            found.append(node)
        for value in node.values():
            found.extend(_statements(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_statements(value))
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _grants_db_connect(template: dict[str, Any], props: dict[str, Any]) -> bool:
    for policy in props.get("Policies", []):
        if isinstance(policy, dict) and set(policy) == {"Ref"}:
            target = template["Resources"].get(policy["Ref"], {})
            if target.get("Type") == "AWS::IAM::ManagedPolicy":
                policy = target["Properties"]["PolicyDocument"]
        if any("rds-db:connect" in _actions(s) for s in _statements(policy)):
            return True
    return False


def test_least_privilege(template: dict[str, Any]) -> None:
    statements = _statements(template["Resources"])
    for statement in statements:
        resources = statement.get("Resource")
        resources = resources if isinstance(resources, list) else [resources]
        assert "*" not in resources, f"statement with Resource '*': {statement}"
        assert not any(a == "*" or a.endswith(":*") for a in _actions(statement)), (
            f"wildcard action: {statement}"
        )

    connect = [s for s in statements if "rds-db:connect" in _actions(s)]
    assert connect, "no rds-db:connect statement"
    for statement in connect:
        resource = statement["Resource"]
        assert isinstance(resource, dict) and "Fn::Sub" in resource, f"rds-db:connect resource: {resource}"
        assert resource["Fn::Sub"].endswith(":dbuser:${DbProxyResourceId}/${DbUser}"), resource
        assert resource["Fn::Sub"].startswith(
            "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:"
        )
    for fn, props in _functions(template).items():
        assert _grants_db_connect(template, props), f"{fn}: no rds-db:connect"

    functions = _functions(template)
    dlq_send = [
        s
        for s in _statements(functions["RecordQueueFunction"].get("Policies"))
        if "sqs:SendMessage" in _actions(s)
    ]
    assert [s["Resource"] for s in dlq_send] == [{"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]}]
    secret = [
        s
        for s in _statements(functions["StripeWebhookFunction"].get("Policies"))
        if "secretsmanager:GetSecretValue" in _actions(s)
    ]
    assert [s["Resource"] for s in secret] == [{"Ref": "StripeWebhookSecretArn"}]


def test_maintenance_schedule(template: dict[str, Any]) -> None:
    props = _functions(template)["MaintenanceFunction"]
    events = props.get("Events") or {}
    assert not any(ev["Type"] == "HttpApi" for ev in events.values()), "maintenance has no HTTP route"
    schedules = [ev["Properties"] for ev in events.values() if ev["Type"] in ("Schedule", "ScheduleV2")]
    assert len(schedules) == 1
    assert yaml.safe_load(schedules[0]["Input"]) == {"action": "reconcile"}


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    values = [o["Value"] for o in outputs.values()]
    assert {"Ref": "UsageQueue"} in values
    assert {"Ref": "UsageDeadLetterQueue"} in values
    assert any("${MeteringApi}" in str(v) for v in values), "API URL output"
