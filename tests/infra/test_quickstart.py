"""infra/quickstart.yaml: everything the service needs, with the service (template.yaml) nested in
it, and `make deploy`'s two steps after the build: `sam deploy`, then infra/migrate.py.

The linters, the translator and checkov run on it in test_template.py; here: the service gets
every parameter it requires from the quickstart's own resources, the network has no route out and
only the endpoints the functions call, the database and cache take TLS only, and the whole nests
through a container-free `sam build`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from metering_dev.template import load_template
from tests.support.tools import REPO, sam_build

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

QUICKSTART = REPO / "infra" / "quickstart.yaml"
SERVICE = REPO / "template.yaml"

INTRINSICS = {"Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Join", "Fn::Select", "Fn::FindInMap"}


@pytest.fixture(scope="module")
def quickstart() -> dict[str, Any]:
    return load_template(QUICKSTART)


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return load_template(SERVICE)


def _of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {n: r.get("Properties", {}) for n, r in template["Resources"].items() if r["Type"] == type_}


def _nested(quickstart: dict[str, Any]) -> dict[str, Any]:
    apps = _of_type(quickstart, "AWS::Serverless::Application")
    assert list(apps) == ["Service"], f"expected the service as the one nested application: {list(apps)}"
    return apps["Service"]


def test_the_service_gets_every_parameter_it_requires(
    quickstart: dict[str, Any], service: dict[str, Any]
) -> None:
    nested = _nested(quickstart)
    assert (QUICKSTART.parent / nested["Location"]).resolve() == SERVICE
    given = nested["Parameters"]
    required = {name for name, p in service["Parameters"].items() if "Default" not in p}
    assert required, "template.yaml requires no parameter?"
    assert not required - set(given), f"not given to the service: {sorted(required - set(given))}"
    assert not set(given) - set(service["Parameters"]), (
        f"not parameters of template.yaml: {sorted(set(given) - set(service['Parameters']))}"
    )
    # each comes from a resource, a parameter or a mapping of the quickstart, never a placeholder
    literal = {
        name: value
        for name, value in given.items()
        if not (isinstance(value, dict) and set(value) <= INTRINSICS)
    }
    assert not literal, f"literal values: {literal}"
    # reservations are on: the cache's endpoint, not the empty default
    assert given["RedisEndpoint"] == {"Fn::Sub": "${Cache.Endpoint.Address}:${Cache.Endpoint.Port}"}
    # the quickstart's own parameters reach the service unchanged
    for name in ("JwtIssuer", "BillingEnabled", "SnapStart"):
        assert given[name] == {"Ref": name}, name
        assert quickstart["Parameters"][name].get("AllowedValues") == service["Parameters"][name].get(
            "AllowedValues"
        ), name


def test_the_service_outputs_are_the_stacks_outputs(
    quickstart: dict[str, Any], service: dict[str, Any]
) -> None:
    outputs = quickstart["Outputs"]
    for name in service["Outputs"]:
        assert outputs.get(name, {}).get("Value") == {"Fn::GetAtt": ["Service", f"Outputs.{name}"]}, name
    assert outputs["StripeWebhookSecretArn"]["Value"] == {"Ref": "StripeWebhookSecret"}
    assert outputs["AlertEventBusName"]["Value"] == {"Ref": "AlertEventBus"}


ENDPOINTS = {  # service -> the one action the functions (and the proxy) call through it
    "secretsmanager": "secretsmanager:GetSecretValue",
    "sqs": "sqs:SendMessage",
    "events": "events:PutEvents",
}


def test_no_route_out_only_the_endpoints_the_functions_call(quickstart: dict[str, Any]) -> None:
    types = {r["Type"] for r in quickstart["Resources"].values()}
    for way_out in ("AWS::EC2::NatGateway", "AWS::EC2::InternetGateway", "AWS::EC2::EIP", "AWS::EC2::Route"):
        assert way_out not in types, f"{way_out}: the VPC has no route out"
    for name, subnet in _of_type(quickstart, "AWS::EC2::Subnet").items():
        assert subnet["MapPublicIpOnLaunch"] is False, name

    endpoints = {}
    for name, props in _of_type(quickstart, "AWS::EC2::VPCEndpoint").items():
        service = props["ServiceName"]["Fn::Sub"].removeprefix("com.amazonaws.${AWS::Region}.")
        endpoints[service] = props
        assert props["VpcEndpointType"] == "Interface" and props["PrivateDnsEnabled"] is True, name
    assert set(endpoints) == set(ENDPOINTS)
    for service, props in endpoints.items():
        statements = props["PolicyDocument"]["Statement"]
        assert [s["Action"] for s in statements] == [ENDPOINTS[service]], service
        for statement in statements:
            assert statement["Effect"] == "Allow"
            condition = statement["Condition"]["StringEquals"]
            assert condition == {"aws:PrincipalAccount": {"Ref": "AWS::AccountId"}}, service
            resource = json.dumps(statement["Resource"])
            assert "${AWS::AccountId}" in resource or "AlertEventBus" in resource, service


def test_security_groups_open_nothing_to_the_world(quickstart: dict[str, Any]) -> None:
    groups = _of_type(quickstart, "AWS::EC2::SecurityGroup")
    ingress = [
        *_of_type(quickstart, "AWS::EC2::SecurityGroupIngress").values(),
        *(rule for g in groups.values() for rule in g.get("SecurityGroupIngress", [])),
    ]
    assert ingress and all("SourceSecurityGroupId" in rule for rule in ingress), ingress
    allowed = {
        (json.dumps(rule["GroupId"]), rule["FromPort"], json.dumps(rule["SourceSecurityGroupId"]))
        for rule in ingress
    }
    fn, proxy = json.dumps({"Ref": "FunctionSecurityGroup"}), json.dumps({"Ref": "ProxySecurityGroup"})
    assert allowed == {
        (proxy, 5432, fn),
        (json.dumps({"Ref": "DatabaseSecurityGroup"}), 5432, proxy),
        (json.dumps({"Ref": "CacheSecurityGroup"}), 6379, fn),
        (json.dumps({"Ref": "EndpointSecurityGroup"}), 443, fn),
        (json.dumps({"Ref": "EndpointSecurityGroup"}), 443, proxy),
    }
    for name, group in groups.items():
        egress = group["SecurityGroupEgress"]  # without it a group may send anywhere
        assert all(
            "DestinationSecurityGroupId" in rule or rule.get("CidrIp") == "255.255.255.255/32"
            for rule in egress
        ), name


def test_the_database_and_cache_take_tls_and_the_proxy_iam_only(quickstart: dict[str, Any]) -> None:
    (proxy,) = _of_type(quickstart, "AWS::RDS::DBProxy").values()
    assert proxy["RequireTLS"] is True and proxy["EngineFamily"] == "POSTGRESQL"
    assert [a["IAMAuth"] for a in proxy["Auth"]] == ["REQUIRED"]
    assert proxy["IdleClientTimeout"] > 1700, "the functions recycle pooled connections after 1700 s"
    (params,) = _of_type(quickstart, "AWS::RDS::DBClusterParameterGroup").values()
    assert params["Parameters"]["rds.force_ssl"] == "1"
    (cluster,) = _of_type(quickstart, "AWS::RDS::DBCluster").values()
    assert cluster["Engine"] == "aurora-postgresql" and "ServerlessV2ScalingConfiguration" in cluster
    assert cluster["StorageEncrypted"] is True and cluster["ManageMasterUserPassword"] is True
    assert quickstart["Resources"]["DbCluster"]["DeletionPolicy"] == "Snapshot"
    (instance,) = _of_type(quickstart, "AWS::RDS::DBInstance").values()
    assert instance["DBInstanceClass"] == "db.serverless" and instance["PubliclyAccessible"] is False
    (cache,) = _of_type(quickstart, "AWS::ElastiCache::ServerlessCache").values()
    assert cache["Engine"] == "valkey"  # serverless caches always use TLS; the service says rediss://
    assert "rediss://${RedisEndpoint}" in json.dumps(load_template(SERVICE)["Globals"])


def _statements(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if "Effect" in node and "Action" in node else []
        return own + [s for v in node.values() for s in _statements(v)]
    if isinstance(node, list):
        return [s for v in node for s in _statements(v)]
    return []


def test_roles_name_their_resources(quickstart: dict[str, Any]) -> None:
    roles = _of_type(quickstart, "AWS::IAM::Role")
    assert set(roles) == {"FlowLogRole", "DbMonitoringRole", "DbProxyRole"}
    for name, role in roles.items():
        for statement in _statements(role.get("Policies", [])):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any("*" in a for a in actions), (name, statement)
            assert "*" not in json.dumps(statement["Resource"]), (name, statement)
    proxy_reads = _statements(roles["DbProxyRole"]["Policies"])
    assert proxy_reads[0]["Resource"] == {"Fn::GetAtt": ["DbCluster", "MasterUserSecret.SecretArn"]}


def test_sam_build_builds_the_nested_service(tmp_path: Path) -> None:
    built = sam_build("infra/quickstart.yaml", tmp_path / "build")
    root = load_template(built / "template.yaml")
    assert root["Resources"]["Service"]["Properties"]["Location"] == "Service/template.yaml"
    nested = load_template(built / "Service" / "template.yaml")
    for name, res in nested["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            assert (built / "Service" / name / "app.py").is_file(), f"{name} not built"
    assert (built / "Service" / "MeteringLayer" / "python" / "metering" / "snapstart.py").is_file()


# ---------------------------------------------------------------------------------------------
# make deploy


def test_make_deploy_builds_deploys_then_migrates() -> None:
    proc = subprocess.run(
        ["make", "-n", "deploy", "STACK=qs-test", "JWT_ISSUER=https://issuer.example", "JWT_AUDIENCE=app"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = proc.stdout.replace("\\\n", " ").splitlines()  # recipe lines continued with a backslash
    steps = [line for line in commands if "sam " in line or "migrate.py" in line]
    assert len(steps) == 3, proc.stdout
    build, deploy, migrate = steps
    assert "sam build --template-file infra/quickstart.yaml" in build
    assert "sam deploy --config-env quickstart --stack-name qs-test" in deploy
    assert "--parameter-overrides JwtIssuer=https://issuer.example JwtAudience=app" in deploy
    assert migrate.endswith("infra/migrate.py --stack-name qs-test")
    # a later deploy passes no JWT values: the stack keeps the ones it has
    proc = subprocess.run(
        ["make", "-n", "deploy", "STACK=qs-test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--parameter-overrides" not in proc.stdout


def _migrate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_migrate", REPO / "infra" / "migrate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _payload(value: Any) -> StreamingBody:
    raw = json.dumps(value).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def test_migrate_invokes_the_stacks_maintenance_function_once_and_fails_with_it() -> None:
    migrate = _migrate_module()
    session = boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    cloudformation = session.client("cloudformation")
    lambda_client = migrate.lambda_client(session)
    # one attempt, and a wait longer than the function may run
    timeout = load_template(SERVICE)["Resources"]["MaintenanceFunction"]["Properties"]["Timeout"]
    assert lambda_client.meta.config.read_timeout > timeout
    assert lambda_client.meta.config.retries["total_max_attempts"] == 1

    outputs = {
        "Outputs": [
            {"OutputKey": "ApiUrl", "OutputValue": "https://x"},
            {"OutputKey": "MaintenanceFunctionName", "OutputValue": "qs-Maintenance-1"},
        ]
    }
    stack = {
        "StackName": "qs",
        "CreationTime": "2026-01-01T00:00:00Z",
        "StackStatus": "CREATE_COMPLETE",
        **outputs,
    }
    with Stubber(cloudformation) as cfn, Stubber(lambda_client) as lam:
        cfn.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": "qs"})
        event = {"FunctionName": "qs-Maintenance-1", "Payload": b'{"action": "migrate"}'}
        lam.add_response(
            "invoke",
            {"StatusCode": 200, "Payload": _payload({"action": "migrate", "revision": "0002"})},
            event,
        )
        assert migrate.function_name(cloudformation, "qs") == "qs-Maintenance-1"
        assert migrate.migrate(lambda_client, "qs-Maintenance-1") == {"action": "migrate", "revision": "0002"}

        error = {"errorMessage": "connection refused", "errorType": "OperationalError"}
        lam.add_response(
            "invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": _payload(error)}, event
        )
        with pytest.raises(SystemExit, match=r"migrate failed in qs-Maintenance-1: .*connection refused"):
            migrate.migrate(lambda_client, "qs-Maintenance-1")

        cfn.add_response("describe_stacks", {"Stacks": [{**stack, "Outputs": []}]}, {"StackName": "qs"})
        with pytest.raises(SystemExit, match="no MaintenanceFunctionName output"):
            migrate.function_name(cloudformation, "qs")
