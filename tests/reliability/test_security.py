"""Security (issue 7): bounded inputs, no SQL built from strings, secrets never logged, IAM scoped to
what each function needs, and the trust model of docs/security.md (who may call which route)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from metering_dev.template import load_template
from tests.support import api
from tests.support import stripe_events as stripe
from tests.support.lambda_events import call, http_event
from tests.support.servers import TABLES
from tests.support.state import query, use_test_catalog

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "metering" / "metering"
MAX_BODY = 5 * 1024 * 1024
DETAILS_MAX = 8 * 1024


@pytest.fixture
def service(clean):
    use_test_catalog()
    return clean


def stored() -> tuple[int, int, int]:
    return (
        query("SELECT count(*) FROM usage_events")[0][0],
        query("SELECT count(*) FROM journal")[0][0],
        query("SELECT count(*) FROM stripe_events")[0][0],
    )


# --- size bounds ------------------------------------------------------------------------------------------


def _padded_record_body(size: int) -> str:
    """A record request of exactly `size` bytes (its description is the padding)."""
    head = '{"event_id":"big","user_id":"u1","usage_type":"premium_voice","amount":1,"description":"'
    tail = '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("encoding", ["text", "base64"])
def test_a_body_over_5_mib_is_413_before_anything_is_parsed_or_stored(service, encoding):
    def post(size: int) -> tuple[int, Any]:
        body = _padded_record_body(size)
        # base64 (isBase64Encoded) is measured decoded: what the client sent, not the 4/3 larger text
        return call(
            "record",
            http_event("POST", "/v1/usage", raw_body=body.encode() if encoding == "base64" else body),
        )

    status, answer = post(MAX_BODY + 1)
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert answer["error"]["message"].startswith("body:")
    # exactly the limit passes the size gate (and then fails validation: the description is too long)
    status, answer = post(MAX_BODY)
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert "description" in answer["error"]["message"]
    assert stored() == (0, 0, 0)


@pytest.mark.parametrize(
    ("function", "method", "path"),
    [
        ("check", "POST", "/v1/check"),
        ("record", "POST", "/v1/usage/batch"),
        ("stripe_webhook", "POST", "/v1/stripe/webhook"),
    ],
)
def test_every_route_refuses_an_oversize_body(service, function, method, path):
    body = "[" + " " * MAX_BODY + "]"
    status, answer = call(function, http_event(method, path, raw_body=body, iam=path != "/v1/stripe/webhook"))
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert stored() == (0, 0, 0)


def test_details_are_bounded_to_8_kib_of_utf8_json(service):
    wrapper = len('{"k":""}')
    exact = {"k": "x" * (DETAILS_MAX - wrapper)}
    assert api.record("at-limit", "u1", "server_kokoro", 1, details=exact)[0] == 201
    over = {"k": "x" * (DETAILS_MAX - wrapper + 1)}
    status, body = api.record("over", "u1", "server_kokoro", 1, details=over)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert "details" in body["error"]["message"]
    # bytes, not characters: 4,094 two-byte characters are 8,196 bytes
    status, body = api.record("wide", "u1", "server_kokoro", 1, details={"k": "é" * (DETAILS_MAX // 2 - 2)})
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    # in a batch only the oversize event is refused
    status, body = api.batch(
        [
            {
                "event_id": "b-over",
                "user_id": "u1",
                "usage_type": "server_kokoro",
                "amount": 1,
                "details": over,
            },
            {"event_id": "b-ok", "user_id": "u1", "usage_type": "server_kokoro", "amount": 2},
        ]
    )
    assert status == 200
    assert [(r["event_id"], r["status"], (r["error"] or {}).get("code")) for r in body["results"]] == [
        ("b-over", "rejected", "payload_too_large"),
        ("b-ok", "recorded", None),
    ]
    assert query("SELECT event_id FROM usage_events ORDER BY 1") == [("at-limit",), ("b-ok",)]


RECORD = {"event_id": "e1", "user_id": "u1", "usage_type": "premium_voice", "amount": 1}


@pytest.mark.parametrize(
    ("function", "path", "body", "field"),
    [
        ("record", "/v1/usage", {**RECORD, "event_id": "e" * 256}, "event_id"),
        ("record", "/v1/usage", {**RECORD, "user_id": "u" * 256}, "user_id"),
        ("record", "/v1/usage", {**RECORD, "usage_type": "t" * 65}, "usage_type"),
        ("record", "/v1/usage", {**RECORD, "reference_id": "r" * 256}, "reference_id"),
        ("record", "/v1/usage", {**RECORD, "description": "d" * 1001}, "description"),
        ("record", "/v1/usage", {**RECORD, "reservation_id": "h" * 256}, "reservation_id"),
        ("record", "/v1/usage", {**RECORD, "amount": 2**63}, "amount"),
        ("record", "/v1/usage/batch", {"events": [RECORD] * 501}, "events"),
        (
            "check",
            "/v1/check",
            {
                "user_id": "u1",
                "usage_type": "premium_voice",
                "amount": 1,
                "reservation": {"id": "r" * 256, "ttl_seconds": 60},
            },
            "reservation.id",
        ),
        (
            "check",
            "/v1/check",
            {
                "user_id": "u1",
                "usage_type": "premium_voice",
                "amount": 1,
                "reservation": {"id": "r", "ttl_seconds": 604801},
            },
            "reservation.ttl_seconds",
        ),
    ],
    ids=[
        "event_id",
        "user_id",
        "usage_type",
        "reference_id",
        "description",
        "reservation_id",
        "amount",
        "batch-size",
        "check-reservation-id",
        "check-ttl",
    ],
)
def test_every_string_and_number_is_bounded(service, function, path, body, field):
    status, answer = call(function, http_event("POST", path, body))
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert field in answer["error"]["message"]
    assert stored() == (0, 0, 0)


def test_an_adjustment_reason_is_bounded(service):
    status, answer = api.adjust("u1", "a1", "premium_voice", "purchased", 5, reason="r" * 1001)
    assert (status, answer["error"]["code"]) == (400, "validation_error")
    assert "reason" in answer["error"]["message"]
    assert query("SELECT count(*) FROM adjustments")[0][0] == 0


# --- no SQL built from strings ----------------------------------------------------------------------------

SQL_CALLS = {"text", "exec_driver_sql", "execute", "executemany", "Statement"}
# The only places where SQL text is assembled at run time, each reviewed (docs/security.md):
ASSEMBLED_SQL = {
    # the breakdown statement is generated from the catalog's field names (operator configuration,
    # never request data), each checked against the catalog's field pattern by `_field_sql`, which
    # raises for anything else (test below); every request value is a bind parameter
    ("db/reads.py", "breakdown_statement"): "breakdown: catalog field names, validated by reads._field_sql",
    # CREATE DATABASE takes an identifier, which cannot be a bind parameter; dev tooling only,
    # called with the constant LOCAL_DB_NAME
    ("tools/metering_dev/embedded.py", "local_database_url"): "identifier of a dev database, a constant",
}


def _python_files() -> list[Path]:
    files = [*sorted(PACKAGE.rglob("*.py")), *sorted((ROOT / "functions").rglob("*.py"))]
    files += sorted((ROOT / "tools").rglob("*.py"))  # the dev tools too
    assert len(files) > 30
    return files


def _module_constants(tree: ast.Module) -> set[str]:
    """Module-level names bound to a string literal or to text(<string literal>)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            literal = isinstance(value, ast.Constant) and isinstance(value.value, str)
            text_of_literal = (
                isinstance(value, ast.Call)
                and _call_name(value) == "text"
                and len(value.args) == 1
                and isinstance(value.args[0], ast.Constant)
            )
            if literal or text_of_literal:
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_built(node: ast.AST) -> bool:
    """An expression that assembles a string at run time."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True
    return isinstance(node, ast.Call) and _call_name(node) in ("format", "join", "replace")


def _sql_violations() -> list[str]:
    found = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        constants = _module_constants(tree)
        rel = str(path.relative_to(PACKAGE)) if path.is_relative_to(PACKAGE) else str(path.relative_to(ROOT))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        owner = {id(c): f.name for f in functions for c in ast.walk(f)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _call_name(node) in SQL_CALLS and node.args):
                continue
            arg = node.args[0]
            name = _call_name(node)
            if name in ("execute", "executemany") and isinstance(arg, ast.Call) and _call_name(arg) == "text":
                continue  # checked as the text() call itself
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            constant = isinstance(arg, ast.Name) and arg.id in constants
            if literal or constant:
                continue
            if name in ("execute", "executemany") and not _is_built(arg) and not isinstance(arg, ast.Name):
                continue  # e.g. redis pipe.execute(), statement objects
            where = (rel, owner.get(id(node), "<module>"))
            if where in ASSEMBLED_SQL:
                continue
            found.append(f"{rel}:{node.lineno} {where[1]}: {name}({ast.unparse(arg)[:60]})")
    return found


def test_no_sql_is_built_from_strings():
    """Every statement is a literal (or a module constant bound to one), values are bind
    parameters; the reviewed exceptions are listed in ASSEMBLED_SQL. Migrations' op.execute takes
    module constants too."""
    assert _sql_violations() == []


def test_the_static_check_catches_sql_built_from_strings(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sqlalchemy import text\n"
        "def f(conn, user):\n"
        "    conn.execute(text(f\"SELECT * FROM t WHERE u = '{user}'\"))\n"
        "    conn.exec_driver_sql('SELECT ' + user)\n"
        "    conn.execute(text('SELECT %s' % user))\n"
        "    q = 'SELECT {}'.format(user)\n"
        "    conn.execute(text(q))\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "_python_files", lambda: [bad])
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert len(_sql_violations()) == 4


def test_catalog_field_names_cannot_inject_sql_into_the_breakdown():
    from metering.db.reads import _field_sql, _literal

    assert _field_sql("details.voice_slug") == ("(details -> 'voice_slug')", "(details ->> 'voice_slug')")
    for evil in (
        "details.x') OR true --",
        "details.a'b",
        "details.",
        "voice_slug",
        "details.x y",
        "details.x\n",
    ):
        with pytest.raises(ValueError):
            _field_sql(evil)
        with pytest.raises(ValueError):
            _literal(evil)


# --- secrets never logged ----------------------------------------------------------------------------------

PROBE_CONFIGS = {
    # the service's own logger at DEBUG, secret from the environment
    "powertools-debug": {"POWERTOOLS_LOG_LEVEL": "DEBUG"},
    # Lambda with ApplicationLogLevel DEBUG: the runtime's root logger at DEBUG (so libraries log
    # too), the secret from Secrets Manager, the database through an RDS IAM token
    "lambda-debug": {"POWERTOOLS_LOG_LEVEL": "DEBUG", "PROBE_ROOT_DEBUG": "1", "PROBE_AWS": "1"},
    # an operator turns on Powertools' event logging to debug deliveries
    "event-logging": {"POWERTOOLS_LOG_LEVEL": "DEBUG", "POWERTOOLS_LOGGER_LOG_EVENT": "true"},
}


@pytest.fixture(scope="module")
def probe_database(tcp_postgres):
    """A migrated database reached by host and port, as an RDS IAM connection must be."""
    return tcp_postgres.create_database("metering_probe")


@pytest.mark.parametrize("config", list(PROBE_CONFIGS))
def test_logs_never_contain_the_webhook_secret_a_signature_or_a_token(
    service, tcp_postgres, probe_database, tmp_path, config
):
    tcp_postgres.sql(f"TRUNCATE {TABLES}", "metering_probe")
    seen_file = tmp_path / "credentials.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POWERTOOLS_", "PYTEST_", "STRIPE_")) and k not in ("METERING_CATALOG",)
    }
    env.update(
        DATABASE_URL=probe_database,
        PROBE_OUT=str(seen_file),
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "layers" / "metering")]),
        POWERTOOLS_SERVICE_NAME="metering",
        POWERTOOLS_METRICS_NAMESPACE="MeteringTest",
        POWERTOOLS_TRACE_DISABLED="1",
        **PROBE_CONFIGS[config],
    )
    env.pop("POWERTOOLS_DEV", None)
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.reliability.test_security import log_probe; log_probe()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    probe = json.loads(seen_file.read_text())
    # the probe ran every case with the expected answers, and its logs were captured
    assert probe["answers"] == EXPECTED_ANSWERS, probe["answers"]
    assert '"message":"unhandled error"' in output, "the failing apply was not logged"
    assert '"message":"stripe event"' in output

    leaks = [(kind, value[:12] + "...") for kind, value in probe["credentials"] if value in output]
    assert not leaks, f"credentials in the logs ({config}): {leaks}"


EXPECTED_ANSWERS = {
    "top-up": [200, "ok"],
    "redelivery": [200, "duplicate"],
    "wrong secret": [400, "invalid_signature"],
    "tampered body": [400, "invalid_signature"],
    "stale timestamp": [400, "invalid_signature"],
    "malformed header": [400, "invalid_signature"],
    "no header": [400, "invalid_signature"],
    "apply fails": [500, "internal_error"],
    "database missing": [500, "internal_error"],
    "record": [201, None],
    "bad record": [400, "validation_error"],
    "me summary": [200, None],
}


def log_probe() -> None:
    """Runs in a fresh interpreter, so that logging is configured from PROBE_CONFIGS' environment.
    Writes the answers and every credential it used to PROBE_OUT; the test scans the output."""
    import logging

    if os.environ.get("PROBE_ROOT_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # as Lambda's runtime does
    os.environ["METERING_CATALOG"] = str(ROOT / "tests" / "fixtures" / "catalog.yaml")
    credentials: list[tuple[str, str]] = [("webhook secret", stripe.SECRET)]
    answers: dict[str, list[Any]] = {}

    mock = None
    if os.environ.get("PROBE_AWS"):
        import boto3
        from moto import mock_aws

        mock = mock_aws()
        mock.start()
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.WARNING)  # the probe's own set-up is not under test
        arn = boto3.client("secretsmanager").create_secret(
            Name="stripe-webhook", SecretString=json.dumps({"webhook_secret": stripe.SECRET})
        )["ARN"]
        logging.getLogger().setLevel(level)
        os.environ["STRIPE_WEBHOOK_SECRET_ARN"] = arn
        _use_iam_database_auth(credentials)
    else:
        os.environ["STRIPE_WEBHOOK_SECRET"] = stripe.SECRET
    from tests.support.servers import reset_caches

    reset_caches()

    def deliver(
        name: str,
        ev: dict[str, Any],
        *,
        secret: str = stripe.SECRET,
        tamper: bool = False,
        timestamp: int | None = None,
        header: str | None = "sign",
    ) -> None:
        body = stripe.payload_of(ev)
        signature = stripe.sign(body, secret, timestamp) if header == "sign" else header
        if signature is not None:
            credentials.append(("Stripe-Signature", signature))
            credentials.extend(
                ("v1 signature", part[3:]) for part in signature.split(",") if part.startswith("v1=")
            )
        status, answer = stripe.deliver(
            payload=body + (" " if tamper else ""), signature=signature, omit_signature=signature is None
        )
        answers[name] = [status, (answer or {}).get("status") or (answer or {}).get("error", {}).get("code")]

    def top_up(session: str) -> dict[str, Any]:
        obj = stripe.checkout_session(session, mode="payment", pack="voice_1k", quantity="1", user_id="u1")
        return stripe.event("checkout.session.completed", obj, int(time.time()))

    first = top_up("cs_log_1")
    deliver("top-up", first)
    deliver("redelivery", first)
    deliver("wrong secret", top_up("cs_log_2"), secret="whsec_not_the_right_one_0000000000")
    deliver("tampered body", top_up("cs_log_3"), tamper=True)
    deliver("stale timestamp", top_up("cs_log_4"), timestamp=int(time.time()) - 3600)
    deliver("malformed header", top_up("cs_log_5"), header="t=1,v1=" + "ab" * 32)
    deliver("no header", top_up("cs_log_6"), header=None)

    from metering.stripe_sync import apply

    original = apply._Sync.topup

    def fail(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the top-up could not be applied")

    apply._Sync.topup = fail  # type: ignore[method-assign]
    deliver("apply fails", top_up("cs_log_7"))
    apply._Sync.topup = original  # type: ignore[method-assign]

    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "DB_NAME")}
    if os.environ.get("DATABASE_URL"):
        missing = make_url(os.environ["DATABASE_URL"]).set(database="no_such_database")
        os.environ["DATABASE_URL"] = missing.render_as_string(hide_password=False)
    else:
        os.environ["DB_NAME"] = "no_such_database"
    reset_caches()
    deliver("database missing", top_up("cs_log_8"))
    for k, v in saved.items():
        if v is not None:
            os.environ[k] = v
    reset_caches()

    status, _ = api.record("log-1", "u1", "premium_voice", 5, details={"voice_slug": "heart"})
    answers["record"] = [status, None]
    status, answer = api.record("log-2", "u1", "premium_voice", -5)
    answers["bad record"] = [status, answer["error"]["code"]]
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLW9mLXRoZS11c2Vycy1qd3Q"
    credentials.append(("bearer token", token))
    status, _ = call(
        "summary",
        http_event("GET", "/v1/me/summary", jwt_sub="u1", headers={"Authorization": f"Bearer {token}"}),
    )
    answers["me summary"] = [status, None]
    if mock is not None:
        mock.stop()
    Path(os.environ["PROBE_OUT"]).write_text(json.dumps({"answers": answers, "credentials": credentials}))


def _use_iam_database_auth(credentials: list[tuple[str, str]]) -> None:
    """Connect as in AWS (DB_HOST + DB_IAM_AUTH): each new connection presents a fresh RDS IAM token.
    The test server trusts local connections, so the token is accepted whatever it is; the probe
    records each token and its signature as credentials the logs must not contain."""
    url = make_url(os.environ.pop("DATABASE_URL"))
    os.environ.update(
        DB_HOST=url.host or "127.0.0.1",
        DB_PORT=str(url.port or 5432),
        DB_NAME=url.database or "",
        DB_USER=url.username or "postgres",
        DB_IAM_AUTH="true",
        DB_TLS="false",
    )
    from metering.db import engine

    real = engine._rds_client

    class Recording:
        def __init__(self, client: Any) -> None:
            self.client = client

        def generate_db_auth_token(self, **kwargs: Any) -> str:
            token = self.client.generate_db_auth_token(**kwargs)
            credentials.append(("RDS IAM token", token))
            credentials.append(("RDS IAM token signature", token.rsplit("X-Amz-Signature=", 1)[-1]))
            return token

    engine._rds_client = lambda region: Recording(real(region))  # type: ignore[assignment]


# --- IAM and routes in template.yaml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: r["Properties"]
        for n, r in template["Resources"].items()
        if r["Type"] == "AWS::Serverless::Function"
    }


def _statements(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if "Effect" in node else []
        return own + [s for v in node.values() for s in _statements(v)]
    if isinstance(node, list):
        return [s for v in node for s in _statements(v)]
    return []


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _grants(template: dict[str, Any], props: dict[str, Any]) -> set[tuple[str, str]]:
    """(action, resource) pairs a function's own Policies grant (local managed policies resolved)."""
    grants = set()
    policies = []
    for policy in props.get("Policies", []):
        if isinstance(policy, dict) and set(policy) == {"Fn::If"}:  # a grant that a parameter turns on
            policies += [branch for branch in policy["Fn::If"][1:] if branch != {"Ref": "AWS::NoValue"}]
        else:
            policies.append(policy)
    for policy in policies:
        assert isinstance(policy, dict), f"AWS managed or named policy {policy!r}: grant statements instead"
        if set(policy) == {"Ref"}:
            target = template["Resources"][policy["Ref"]]
            assert target["Type"] == "AWS::IAM::ManagedPolicy", policy
            policy = target["Properties"]["PolicyDocument"]
        assert "Statement" in policy, f"SAM policy template {policy!r}: grant statements instead"
        for statement in _statements(policy):
            for action in _as_list(statement["Action"]):
                for resource in _as_list(statement["Resource"]):
                    grants.add((action, json.dumps(resource, sort_keys=True)))
    return grants


DB_CONNECT = (
    "rds-db:connect",
    json.dumps(
        {
            "Fn::Sub": "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:dbuser:${DbProxyResourceId}/${DbUser}"
        }
    ),
)
NEEDS = {  # function -> exactly what its code calls, on exactly which resource
    "CheckFunction": {DB_CONNECT},
    "RecordFunction": {DB_CONNECT},
    "SummaryFunction": {DB_CONNECT},
    "MaintenanceFunction": {DB_CONNECT},
    "RecordQueueFunction": {
        DB_CONNECT,
        *(
            (action, json.dumps({"Fn::GetAtt": ["UsageQueue", "Arn"]}))
            for action in (
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            )
        ),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]})),
    },
    "StripeWebhookFunction": {
        DB_CONNECT,
        ("secretsmanager:GetSecretValue", json.dumps({"Ref": "StripeWebhookSecretArn"})),
    },
    "AlertDeliveryFunction": {
        DB_CONNECT,
        (  # the one alert bus: the stack's own, or the one named by AlertEventBusName
            "events:PutEvents",
            json.dumps(
                {
                    "Fn::If": [
                        "CreateAlertEventBus",
                        {"Fn::GetAtt": ["AlertEventBus", "Arn"]},
                        {
                            "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}"
                            ":event-bus/${AlertEventBusName}"
                        },
                    ]
                },
                sort_keys=True,
            ),
        ),
        ("secretsmanager:GetSecretValue", json.dumps({"Ref": "AlertWebhookSecretArn"})),  # when given
    },
}


def test_every_statement_in_the_template_names_its_resources_and_only_what_the_code_needs(template):
    for statement in _statements(template["Resources"]):
        assert statement["Effect"] == "Allow" and not {"NotAction", "NotResource", "NotPrincipal"} & set(
            statement
        )
        for resource in _as_list(statement["Resource"]):
            assert "*" not in json.dumps(resource), f"wildcard resource: {statement}"
        for action in _as_list(statement["Action"]):
            assert "*" not in action, f"wildcard action: {statement}"
    functions = _functions(template)
    assert set(functions) == set(NEEDS)
    for name, props in functions.items():
        assert "Role" not in props, f"{name}: a custom role escapes these checks"
        assert _grants(template, props) == NEEDS[name], name
        assert "FunctionUrlConfig" not in props, f"{name}: a function URL would bypass API Gateway's auth"
    permissions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"]
    assert not permissions, "resource policies on functions are SAM's job (API Gateway, SQS, schedule)"


def test_only_the_webhook_route_has_no_authorizer(template):
    api_auth = next(r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::HttpApi")[
        "Properties"
    ]["Auth"]
    assert api_auth["DefaultAuthorizer"] == "AWS_IAM" and api_auth["EnableIamAuthorizer"] is True
    routes = {}
    for name, props in _functions(template).items():
        for ev in (props.get("Events") or {}).values():
            if ev["Type"] == "HttpApi":
                p = ev["Properties"]
                routes[(p["Method"], p["Path"])] = (name, (p.get("Auth") or {}).get("Authorizer", "AWS_IAM"))
    open_routes = [route for route, (_, auth) in routes.items() if auth == "NONE"]
    assert open_routes == [("POST", "/v1/stripe/webhook")]
    for (method, path), (_, auth) in routes.items():
        if path.startswith("/v1/me/"):
            assert auth == "UserJwt", (method, path)
        elif path != "/v1/stripe/webhook":
            assert auth == "AWS_IAM", (method, path)


# AWS managed policies SAM attaches to the roles it generates, and their statements (all on "*").
MANAGED = {
    "AWSLambdaBasicExecutionRole": {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"},
    "AWSLambdaVPCAccessExecutionRole": {
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    },
    "AWSXrayWriteOnlyAccess": {
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "xray:GetSamplingStatisticSummaries",
    },
    "AWSLambdaSQSQueueExecutionRole": {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    },
}
# Actions that may stay on "*": the ENI actions Lambda needs to attach to a VPC and X-Ray's write
# actions support no resource-level permissions; the logs actions write the function's own log group
# (AWS's standard execution policy; scoping them needs a custom role for every function, for little).
UNSCOPABLE = MANAGED["AWSLambdaVPCAccessExecutionRole"] | MANAGED["AWSXrayWriteOnlyAccess"]
ACCEPTED = UNSCOPABLE | MANAGED["AWSLambdaBasicExecutionRole"]


def _sam_python() -> Path:
    sam_bin = Path(os.environ.get("SAM_BIN") or ROOT / ".venv-sam" / "bin")
    python = sam_bin / "python"
    if not python.exists():
        pytest.fail(f"{python} not found: run `make samvenv` (or set SAM_BIN)")
    return python


TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse
template = yaml_parse(open("template.yaml").read())
for resource in template["Resources"].values():  # the translator wants S3 locations
    if resource["Type"] == "AWS::Serverless::Function":
        resource["Properties"]["CodeUri"] = "s3://bucket/code.zip"
    if resource["Type"] == "AWS::Serverless::LayerVersion":
        resource["Properties"]["ContentUri"] = "s3://bucket/layer.zip"
class NoPolicies:
    def load(self):
        return {}
parameters = {"VpcSubnetIds": "subnet-1", "VpcSecurityGroupIds": "sg-1", "DbProxyEndpoint": "proxy",
              "DbProxyResourceId": "prx-0", "JwtIssuer": "https://issuer", "JwtAudience": "aud",
              "StripeWebhookSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:whsec"}
out = transform(template, parameters, NoPolicies())
json.dump({name: r["Properties"] for name, r in out["Resources"].items() if r["Type"] == "AWS::IAM::Role"},
          sys.stdout)
"""


def test_the_roles_sam_generates_leave_on_star_only_actions_aws_cannot_scope():
    """What is deployed is SAM's translation: the roles get AWS managed policies besides the
    template's own statements. Each of those policies' "*" statements must be one AWS cannot scope
    (or the accepted log-writing actions)."""
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "SAM_CLI_TELEMETRY": "0",
    }
    proc = subprocess.run(
        [str(_sam_python()), "-c", TRANSLATE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    roles = json.loads(proc.stdout)
    assert len(roles) == len(NEEDS)
    broad: dict[str, set[str]] = {}
    for role, props in roles.items():
        for arn in props.get("ManagedPolicyArns", []):
            if isinstance(arn, dict):  # a Ref to the template's own DbConnectPolicy, checked above
                assert arn == {"Ref": "DbConnectPolicy"}, arn
                continue
            name = arn.rsplit("/", 1)[-1]
            assert name in MANAGED, f"{role}: unexpected managed policy {arn}"
            if MANAGED[name] - ACCEPTED:
                broad[f"{role} <- {name}"] = MANAGED[name] - ACCEPTED
    assert not broad, f"actions on Resource '*' that could be scoped: {broad}"


# --- who may act for whom -----------------------------------------------------------------------------------


def test_me_routes_act_only_for_the_jwt_subject(service):
    assert api.record("a-1", "alice", "server_kokoro", 7)[0] == 201
    assert api.record("b-1", "bob", "server_kokoro", 900)[0] == 201
    for path in ("/v1/me/summary", "/v1/me/stats"):
        # a user_id parameter cannot redirect a /v1/me route to someone else
        status, body = call("summary", http_event("GET", path, jwt_sub="alice", query={"user_id": "bob"}))
        assert status == 200 and body["user_id"] == "alice", (path, body)
        # no JWT (or one without `sub`): 401, whatever else the request carries
        status, body = call("summary", http_event("GET", path, iam=False, query={"user_id": "bob"}))
        assert (status, body["error"]["code"]) == (401, "unauthorized"), path
        event = http_event("GET", path, iam=False)
        event["requestContext"]["authorizer"] = {
            "jwt": {"claims": {"email": "bob@example.com"}, "scopes": None}
        }
        assert call("summary", event)[0] == 401
    status, body = call("summary", http_event("GET", "/v1/me/summary", jwt_sub="alice"))
    assert body["usage_types"]["server_kokoro"]["used"] == 7


def test_the_webhook_trusts_only_a_valid_signature(service, monkeypatch):
    obj = stripe.checkout_session("cs_sec", mode="payment", pack="voice_1k", quantity="1", user_id="mallory")
    event = stripe.event("checkout.session.completed", obj, int(time.time()))
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", stripe.SECRET)
    from tests.support.servers import reset_caches

    reset_caches()
    forged = [
        stripe.deliver(event, secret="whsec_guessed"),
        stripe.deliver(event, omit_signature=True),
        stripe.deliver(event, timestamp=int(time.time()) - 301),
        stripe.deliver(event, signature="v1=" + "0" * 64),
        stripe.deliver(
            event,
            payload=stripe.payload_of(event).replace('"quantity": "1"', '"quantity": "99"'),
            signature=stripe.sign(stripe.payload_of(event)),
        ),
    ]
    assert [(s, b["error"]["code"]) for s, b in forged] == [(400, "invalid_signature")] * len(forged)
    assert query("SELECT count(*) FROM topups")[0][0] == 0 and stored() == (0, 0, 0)
    assert stripe.deliver(event) == (200, {"status": "ok"})
    assert query("SELECT user_id, purchased FROM balances") == [("mallory", 1000)]
    # without a configured secret nothing is accepted
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    reset_caches()
    status, body = stripe.deliver(event)
    assert (status, body["error"]["code"]) == (503, "not_configured")
