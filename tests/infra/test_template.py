"""template.yaml: the linters, the SAM translator and checkov (on infra/quickstart.yaml too), a
container-free `sam build`, and the contract.

Tools come from tests/support/tools.py: SAM_BIN (`sam` and `cfn-lint`, `make samvenv`),
CHECKOV_BIN (`make checkovvenv`) and PY312_BIN (python3.12, which the build's Makefiles use and
the import checks run). Missing tools fail the tests; they are never skipped.

`sam build` runs once per module; its output is then checked as Lambda would load it: bytecode
compiled at build time for every module, alembic only in the maintenance function, every
requirement satisfied by the function and the layer together, each handler importing in a
bare CPython 3.12 from nothing but the build (and the runtime's boto3) without compiling a module,
and serving requests from it against this worker's database (the layer leaves out the parts of
its dependencies that layers/metering/prune.txt lists).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import subprocess
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from metering_dev.template import load_template
from tests.support.tools import REPO, make_build, ok, py312_bin, run_tool, sam_translate, tool

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]

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
# the linters, the translator and the security scanner, on both templates

TEMPLATES = ["template.yaml", "infra/quickstart.yaml"]


@pytest.mark.parametrize("template_file", TEMPLATES)
def test_cfn_lint(template_file: str) -> None:
    ok(run_tool([str(tool("cfn-lint")), template_file], timeout=180))


@pytest.mark.parametrize("template_file", TEMPLATES)
def test_sam_validate_lint(template_file: str) -> None:
    ok(run_tool([str(tool("sam")), "validate", "--lint", "--template-file", template_file], timeout=180))


@pytest.mark.parametrize("template_file", TEMPLATES)
def test_sam_validate_translator(template_file: str) -> None:
    # catches what the linters do not (an undefined route authorizer, for one)
    proc = run_tool(
        [str(tool("sam")), "validate", "--region", "us-east-1", "--template-file", template_file],
        timeout=180,
    )
    ok(proc)


def _checkov(template_file: str | Path) -> dict[str, Any]:
    """checkov's report on one template, with the repository's settings (.checkov.yaml)."""
    proc = run_tool(
        [
            str(tool("checkov")),
            "--config-file",
            ".checkov.yaml",
            "--file",
            str(template_file),
            "--output",
            "json",
        ],
        timeout=300,
    )
    # 0: no failed check, 1: some failed; anything else is checkov itself failing
    assert proc.returncode in (0, 1), f"checkov exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert isinstance(report, dict) and report.get("check_type") == "cloudformation", proc.stdout[:2000]
    return report


def _reason(check: dict[str, Any]) -> str:
    return str(check["check_result"].get("suppress_comment") or "")


@pytest.mark.parametrize("template_file", TEMPLATES)
def test_checkov_finds_nothing_and_every_skip_says_why(template_file: str) -> None:
    report = _checkov(template_file)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} (line {c['file_line_range'][0]})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, f"checkov: {len(failed)} failed checks in {template_file}:\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 0, "checkov checked nothing"
    unexplained = [
        f"{c['check_id']} on {c['resource']}"
        for c in report["results"]["skipped_checks"]
        if len(_reason(c)) < 40  # checkov's stand-in for none is "No comment provided"
    ]
    assert not unexplained, f"skipped without a reason: {unexplained}"


def test_checkov_fails_what_it_should(tmp_path: Path) -> None:
    """The scan is not vacuous: with the repository's settings, a queue without encryption and a
    skip without a reason both show."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "Resources:\n"
        "  Plain:\n"
        "    Type: AWS::SQS::Queue\n"
        "  Skipped:\n"
        "    Type: AWS::SQS::Queue\n"
        "    Metadata:\n"
        "      checkov:\n"
        "        skip:\n"
        "          - id: CKV_AWS_27\n"
    )
    report = _checkov(bad)
    assert [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]] == [
        ("CKV_AWS_27", "AWS::SQS::Queue.Plain")
    ]
    assert [_reason(c) for c in report["results"]["skipped_checks"]] == ["No comment provided"]


def test_checks_skipped_everywhere_say_why() -> None:
    """.checkov.yaml's skip-check entries: each with a comment of its own just above it."""
    lines = (REPO / ".checkov.yaml").read_text().splitlines()
    config = yaml.safe_load("\n".join(lines))
    assert config["skip-download"] is True, "offline: checkov must not fetch Prisma Cloud's guidelines"
    assert set(config["framework"]) == {"cloudformation"}
    start = lines.index("skip-check:")
    for check in config["skip-check"]:
        at = lines.index(f"  - {check}", start)
        reason = []
        for line in reversed(lines[start + 1 : at]):
            if not line.strip().startswith("#"):
                break
            reason.append(line)
        assert len(" ".join(reason)) > 40, f"{check}: no reason above it in .checkov.yaml"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make build` (sam build of the template, without containers): the build directory."""
    return make_build(tmp_path_factory.mktemp("sam") / "build")


def test_sam_build_without_containers(built: Path) -> None:
    layer = built / "MeteringLayer" / "python"
    listing = sorted(p.name for p in layer.iterdir()) if layer.is_dir() else []
    assert (layer / "metering" / "__init__.py").is_file(), f"metering package missing from layer: {listing}"
    assert not (layer / "python").exists(), "layer built as python/python/: the source has a python/ folder"
    for package in ("sqlalchemy", "pg8000"):
        assert (layer / package).is_dir(), f"{package} missing from the layer: {listing}"
    assert not (layer / "stripe").exists(), "stripe belongs to the webhook function, not the layer"
    webhook = built / "StripeWebhookFunction"
    assert (webhook / "stripe").is_dir(), f"stripe missing from StripeWebhookFunction: {os.listdir(webhook)}"


# ---------------------------------------------------------------------------------------------
# the build output, as Lambda loads it

LAYER = "MeteringLayer"
ALL_FUNCTIONS = [*FUNCTIONS, "MaintenanceFunction"]
# alembic and what it alone needs: the migration path, shipped by the maintenance function only
MIGRATION_ONLY = ("alembic", "mako", "markupsafe")
# what the python3.12 runtime itself provides (in /var/runtime), after everything else on sys.path
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
# A .pyc starts with the magic number of the bytecode's Python (3531 for every CPython 3.12.x,
# importlib.util.MAGIC_NUMBER), then flags (PEP 552): 0 = timestamp, 0b01 = hash-based unchecked,
# 0b11 = hash-based checked against the source.
CPYTHON312_MAGIC = (3531).to_bytes(2, "little") + b"\r\n"
UNCHECKED_HASH = 0b01


def _artifact(built: Path, name: str) -> Path:
    """The directory Lambda puts on sys.path: /opt/python for the layer, /var/task for a function."""
    return built / name / "python" if name == LAYER else built / name


@pytest.mark.parametrize("name", [LAYER, *ALL_FUNCTIONS])
def test_bytecode_is_compiled_at_build_time(built: Path, name: str) -> None:
    root = _artifact(built, name)
    sources = sorted(root.rglob("*.py"))
    assert sources, f"{name}: no Python sources in {root}"
    missing, wrong = [], []
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
        if not pyc.is_file():
            missing.append(str(source.relative_to(root)))
            continue
        header = pyc.read_bytes()[:16]
        flags = int.from_bytes(header[4:8], "little")
        if header[:4] != CPYTHON312_MAGIC or flags != UNCHECKED_HASH:
            wrong.append(f"{pyc.relative_to(root)}: magic {header[:4]!r}, flags {flags:#04b}")
    assert not missing, f"{name}: {len(missing)} of {len(sources)} modules without .pyc, e.g. {missing[:5]}"
    assert not wrong, f"{name}: .pyc not unchecked-hash CPython 3.12 bytecode: {wrong[:5]}"


def test_alembic_ships_only_with_the_maintenance_function(built: Path) -> None:
    layer = _artifact(built, LAYER)
    for package in MIGRATION_ONLY:
        assert not (layer / package).exists(), (
            f"{package} is in the layer: only the maintenance function migrates"
        )
        assert not list(layer.glob(f"{package}-*.dist-info")), f"{package}'s dist-info is in the layer"
        assert (built / "MaintenanceFunction" / package / "__init__.py").is_file(), (
            f"{package} missing from MaintenanceFunction"
        )
        for fn in FUNCTIONS:
            assert not (built / fn / package).exists(), f"{package} is in {fn}"


def test_dev_tools_stay_out_of_the_layer(built: Path) -> None:
    """No function needs the dev server, `metering invoke` or the OpenAPI builder (they read
    template.yaml): they are the metering_dev package, which no build copies; the handlers import
    from the build without them (test below). tests/unit/test_dev_tools_apart.py checks the same of
    the layer's own recipe, without sam."""
    layer = _artifact(built, LAYER)
    assert (layer / "metering" / "db" / "ledger.py").is_file()
    for root in [layer, *(_artifact(built, fn) for fn in ALL_FUNCTIONS)]:
        assert not (root / "metering_dev").exists(), f"the dev tools are in {root}"
    assert not (layer / "metering" / "devtools").exists()
    assert not (layer / "metering" / "api" / "openapi.py").exists()


_LAMBDA_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


def _distributions(path: Path) -> dict[str, md.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in md.distributions(path=[str(path)])}


@pytest.mark.parametrize("fn", ALL_FUNCTIONS)
def test_function_and_layer_satisfy_every_requirement(built: Path, fn: str) -> None:
    """A function's requirements are installed with --no-deps: the layer must supply the rest."""
    layer = _distributions(_artifact(built, LAYER))
    own = _distributions(_artifact(built, fn))
    shadowed = sorted(set(own) & set(layer))
    assert not shadowed, (
        f"{fn} ships {shadowed}, which the layer has too (/var/task would shadow /opt/python)"
    )
    available = {**layer, **own}
    problems = []
    for name, dist in sorted(available.items()):
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(_LAMBDA_MARKERS):
                continue
            wanted = canonicalize_name(req.name)
            if wanted in RUNTIME_PROVIDED:
                continue
            got = available.get(wanted)
            if got is None:
                problems.append(f"{name} requires {line}: missing")
            elif not req.specifier.contains(got.version, prereleases=True):
                problems.append(f"{name} requires {line}: {got.version} shipped")
    assert not problems, f"{fn} with the layer:\n" + "\n".join(problems)


# Run in a bare `python3.12 -S -B` (no site-packages, no .pyc written): sys.path is the function
# directory, the layer's python/, the stdlib and, last, a directory holding only what the runtime
# provides. Every module that needs compiling from source (no .pyc, or one Python does not accept)
# goes through SourceFileLoader.source_to_code, which is spied on.
_PROBE = r"""
import importlib, importlib.machinery, importlib.util, json, os, sys
fn_dir, layer, runtime, mode = sys.argv[1:5]
sys.path[:] = [fn_dir, layer, *(p for p in sys.path[1:] if p), runtime]
compiled = []
_source_to_code = importlib.machinery.SourceFileLoader.source_to_code
def _spy(self, data, path, *, _optimize=-1):
    compiled.append(path)
    return _source_to_code(self, data, path, _optimize=_optimize)
importlib.machinery.SourceFileLoader.source_to_code = _spy
app = importlib.import_module("app")
extra = {}
if mode == "migrate":
    import alembic.command, alembic.runtime.migration  # what metering.db.migrate imports lazily
    from metering.db.migrate import head_revision
    extra["head"] = head_revision()  # loads the migration scripts through alembic
build = (fn_dir + os.sep, layer + os.sep)
modules = sorted(
    (name, m.__file__, getattr(m.__spec__, "cached", None))
    for name, m in list(sys.modules.items())
    if (getattr(m, "__file__", None) or "").startswith(build) and m.__file__.endswith(".py")
)
alembic = importlib.util.find_spec("alembic")
print(json.dumps({
    "handler": [app.__file__, app.__spec__.cached],
    "modules": modules,
    "compiled": [p for p in compiled if p.startswith(build)],
    "alembic": alembic and alembic.origin,
    "sys_path": sys.path,
    **extra,
}))
"""


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Stand-in for the runtime's own packages: links to this venv's boto3, botocore, s3transfer."""
    path = tmp_path_factory.mktemp("runtime")
    for package in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"{package} not installed in the venv"
        (path / package).symlink_to(spec.submodule_search_locations[0], target_is_directory=True)
    yield path


_LAMBDA_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_SERVICE_NAME": "metering",
    "POWERTOOLS_METRICS_NAMESPACE": "Metering",
}


def _run_in_build(
    built: Path, runtime_dir: Path, fn: str, script: str, args: list[str], env: dict[str, str]
) -> Any:
    """`script` in a bare python3.12 -S -B with fn's directory, the layer and the runtime's
    packages as its arguments (then `args`); the last line of its stdout, as JSON."""
    py_bin = py312_bin()
    assert py_bin is not None and (py_bin / "python3.12").exists(), "python3.12 not found"
    fn_dir, layer = _artifact(built, fn), _artifact(built, LAYER)
    proc = subprocess.run(
        [
            str(py_bin / "python3.12"),
            "-S",
            "-B",
            "-c",
            script,
            str(fn_dir),
            str(layer),
            str(runtime_dir),
            *args,
        ],
        cwd=fn_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ok(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fn", ALL_FUNCTIONS)
def test_handler_imports_from_the_build_without_compiling(built: Path, runtime_dir: Path, fn: str) -> None:
    fn_dir, layer = _artifact(built, fn), _artifact(built, LAYER)
    mode = "migrate" if fn == "MaintenanceFunction" else "api"
    result = _run_in_build(built, runtime_dir, fn, _PROBE, [mode], _LAMBDA_ENV)

    handler_file, handler_pyc = result["handler"]
    assert handler_file == str(fn_dir / "app.py"), f"{fn}: handler loaded from {handler_file}"
    assert handler_pyc == str(fn_dir / "__pycache__" / "app.cpython-312.pyc")
    assert not result["compiled"], f"{fn}: compiled from source at import: {result['compiled'][:10]}"
    no_pyc = [name for name, _, cached in result["modules"] if not cached or not os.path.isfile(cached)]
    assert not no_pyc, f"{fn}: modules without a .pyc: {no_pyc[:10]}"
    from_layer = {
        name.partition(".")[0] for name, path, _ in result["modules"] if path.startswith(str(layer))
    }
    assert "metering" in from_layer, f"{fn}: the metering package was not imported from the layer"
    if mode == "migrate":
        assert result["alembic"] == str(fn_dir / "alembic" / "__init__.py"), result["alembic"]
        assert result["head"], "no head revision: the migration scripts did not load"
    else:
        assert result["alembic"] is None, f"{fn} can import alembic ({result['alembic']}): it should not ship"


def _requirement_set(path: Path) -> set[tuple[str, str]]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {(canonicalize_name(r.name), str(r.specifier)) for r in map(Requirement, filter(None, lines))}


def test_requirements_follow_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {(canonicalize_name(r.name), str(r.specifier)) for r in map(Requirement, project["dependencies"])}
    migration = {d for d in deps if d[0] == "alembic"}
    assert migration, "alembic left pyproject's dependencies: the CLI's `metering migrate` needs it"
    assert _requirement_set(REPO / "layers" / "metering" / "requirements.txt") == deps - migration, (
        "layers/metering/requirements.txt must be pyproject's dependencies minus alembic"
    )
    assert migration <= _requirement_set(REPO / "functions" / "maintenance" / "requirements.txt")
    webhook = {
        (canonicalize_name(r.name), str(r.specifier))
        for r in map(Requirement, project["optional-dependencies"]["webhook"])
    }
    assert webhook <= _requirement_set(REPO / "functions" / "stripe_webhook" / "requirements.txt")


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
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert "build-MeteringLayer:" in (REPO / "layers" / "metering" / "Makefile").read_text()
    assert not (REPO / "layers" / "metering" / "python").exists(), "layer source must not have python/"


def test_functions_are_built_by_one_makefile(template: dict[str, Any]) -> None:
    """Every function: BuildMethod makefile, and the same Makefile in each CodeUri folder (two
    lines including functions/build.mk, the one build of every function)."""
    makefiles = {}
    for fn, res in template["Resources"].items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        assert (res.get("Metadata") or {}).get("BuildMethod") == "makefile", f"{fn}: BuildMethod makefile"
        makefile = REPO / res["Properties"]["CodeUri"] / "Makefile"
        assert makefile.is_file(), f"{fn}: {makefile.relative_to(REPO)} missing"
        makefiles[makefile.relative_to(REPO)] = makefile.read_text()
    assert len(set(makefiles.values())) == 1, f"the function Makefiles differ: {sorted(map(str, makefiles))}"
    assert "include $(dir $(lastword $(MAKEFILE_LIST)))../build.mk" in next(iter(makefiles.values()))


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
    assert event["FunctionName"] == {"Ref": "RecordQueueFunction.Alias"}  # the published version
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
    schedules = {
        ev["Properties"]["Schedule"]: yaml.safe_load(ev["Properties"]["Input"])
        for ev in events.values()
        if ev["Type"] in ("Schedule", "ScheduleV2")
    }
    # the daily reconciliation, and the journaling of expired grants (api.md section 7)
    assert schedules == {
        "cron(15 3 * * ? *)": {"action": "reconcile"},
        "rate(5 minutes)": {"action": "expire_grants"},
    }
    # the schedule invokes asynchronously: what still fails after Lambda's retries is kept
    dlq = props["DeadLetterQueue"]
    assert dlq == {"Type": "SQS", "TargetArn": {"Fn::GetAtt": ["MaintenanceDeadLetterQueue", "Arn"]}}
    assert template["Resources"]["MaintenanceDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True


# what template.yaml's required parameters are given when it is translated
SERVICE_PARAMETERS = {
    "VpcSubnetIds": "subnet-1",
    "VpcSecurityGroupIds": "sg-1",
    "DbProxyEndpoint": "proxy",
    "DbProxyResourceId": "prx-0",
    "JwtIssuer": "https://issuer",
    "JwtAudience": "aud",
    "StripeWebhookSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:whsec",
}


def test_snapstart_option_publishes_versions_that_everything_invokes() -> None:
    """SnapStart applies to published versions only: every function publishes one per deploy
    behind the alias `live`, which the routes, the queue mapping and the schedule invoke; the
    SnapStart parameter turns snapshots on or off through a condition CloudFormation evaluates
    (SAM takes none on AutoPublishAlias, so versions and aliases are there either way)."""
    translated = sam_translate("template.yaml", {**SERVICE_PARAMETERS, "SnapStart": "true"})
    assert translated["Conditions"]["UseSnapStart"] == {"Fn::Equals": [{"Ref": "SnapStart"}, "true"]}

    def of(type_: str) -> list[dict[str, Any]]:
        return [r["Properties"] for r in translated["Resources"].values() if r["Type"] == type_]

    functions = {p["FunctionName"]["Ref"] for p in of("AWS::Lambda::Version")}
    assert functions == set(ALL_FUNCTIONS)
    snapstart = {"ApplyOn": {"Fn::If": ["UseSnapStart", "PublishedVersions", "None"]}}
    assert [p.get("SnapStart") for p in of("AWS::Lambda::Function")] == [snapstart] * len(functions)
    assert sorted((p["FunctionName"]["Ref"], p["Name"]) for p in of("AWS::Lambda::Alias")) == [
        (name, "live") for name in sorted(functions)
    ]
    assert [p["FunctionName"] for p in of("AWS::Lambda::EventSourceMapping")] == [
        {"Ref": "RecordQueueFunctionAliaslive"}
    ]
    assert [t["Arn"] for p in of("AWS::Events::Rule") for t in p["Targets"]] == [
        {"Ref": "MaintenanceFunctionAliaslive"},
        {"Ref": "MaintenanceFunctionAliaslive"},
    ]


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    values = [o["Value"] for o in outputs.values()]
    assert {"Ref": "UsageQueue"} in values
    assert {"Ref": "UsageDeadLetterQueue"} in values
    assert any("${MeteringApi}" in str(v) for v in values), "API URL output"


# ---------------------------------------------------------------------------------------------
# the build serves requests: every handler invoked from nothing but the build (and the runtime's
# boto3), against this worker's database and Redis. The layer leaves out parts of its
# dependencies (layers/metering/prune.txt); this is what shows that no function needed them.

PRUNED = [
    line.strip()
    for line in (REPO / "layers" / "metering" / "prune.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

# Invokes each (handler attribute, event) of a JSON file in order; the last line of stdout is the
# results (Powertools prints logs and metrics before it).
_SERVE = r"""
import importlib, json, sys, uuid
fn_dir, layer, runtime, calls = sys.argv[1:5]
sys.path[:] = [fn_dir, layer, *(p for p in sys.path[1:] if p), runtime]
app = importlib.import_module("app")

class Context:
    function_name = "BuildCheck"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:BuildCheck"
    log_group_name = "/aws/lambda/BuildCheck"
    log_stream_name = "build"
    def __init__(self):
        self.aws_request_id = str(uuid.uuid4())
    def get_remaining_time_in_millis(self):
        return 29000

with open(calls) as f:
    results = [getattr(app, attribute)(event, Context()) for attribute, event in json.load(f)]
layer_modules = sorted(
    name for name, m in list(sys.modules.items()) if (getattr(m, "__file__", None) or "").startswith(layer)
)
print("\n" + json.dumps({"results": results, "layer_modules": layer_modules}))
"""


def test_the_layer_leaves_out_what_prune_txt_lists(built: Path) -> None:
    layer = _artifact(built, LAYER)
    assert PRUNED, "prune.txt lists nothing"
    left = [path for path in PRUNED if (layer / path).exists()]
    assert not left, f"listed in prune.txt but still in the layer: {left}"
    # what the service does use stays
    for kept in (
        "sqlalchemy/dialects/postgresql/pg8000.py",
        "sqlalchemy/pool",
        "sqlalchemy/ext/compiler.py",  # alembic's
        "aws_lambda_powertools/utilities/parameters",
        "aws_lambda_powertools/utilities/data_classes",
        "yaml/_yaml.cpython-312-x86_64-linux-gnu.so",
    ):
        assert (layer / kept).exists(), f"{kept} is missing from the layer"


def _serve(built: Path, runtime_dir: Path, fn: str, calls: list[tuple[str, Any]], env: dict[str, str]) -> Any:
    calls_file = _artifact(built, fn).parent / f"{fn}-calls.json"
    calls_file.write_text(json.dumps(calls))
    out = _run_in_build(built, runtime_dir, fn, _SERVE, [str(calls_file)], env)
    assert "metering" in out["layer_modules"], f"{fn}: metering not loaded from the layer"
    return out["results"]


def _status_and_body(result: dict[str, Any]) -> tuple[int, Any]:
    body = result.get("body")
    return result["statusCode"], (json.loads(body) if body else None)


def test_every_handler_serves_requests_from_the_build(
    built: Path, runtime_dir: Path, clean: dict[str, str]
) -> None:
    from metering_dev.events import sqs_event
    from tests.support import stripe_events as se
    from tests.support.lambda_events import http_event
    from tests.support.state import TEST_CATALOG

    env = {
        **_LAMBDA_ENV,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "DATABASE_URL": clean["database_url"],
        "REDIS_URL": clean["redis_url"],
        "METERING_CATALOG": str(TEST_CATALOG),
        "STRIPE_WEBHOOK_SECRET": se.SECRET,
    }
    user = "build-user"

    # a top-up pack bought through Stripe: 1,000 purchased premium_voice units
    paid = se.event(
        "checkout.session.completed",
        se.checkout_session("cs_build", mode="payment", user_id=user, pack="voice_1k"),
        int(time.time()),
    )
    body = se.payload_of(paid)
    webhook = http_event(
        "POST", "/v1/stripe/webhook", raw_body=body, headers={"Stripe-Signature": se.sign(body)}, iam=False
    )
    unsigned = http_event("POST", "/v1/stripe/webhook", raw_body=body, iam=False)
    calls: list[tuple[str, Any]] = [("lambda_handler", webhook), ("lambda_handler", unsigned)]
    results = _serve(built, runtime_dir, "StripeWebhookFunction", calls, env)
    assert _status_and_body(results[0]) == (200, {"status": "ok"})
    assert _status_and_body(results[1])[0] == 400

    usage = {"event_id": "build-e1", "user_id": user, "usage_type": "premium_voice", "amount": 300}
    check = http_event("POST", "/v1/check", {"user_id": user, "usage_type": "premium_voice", "amount": 300})
    release = http_event(
        "DELETE",
        f"/v1/users/{user}/reservations/none",
        route="/v1/users/{user_id}/reservations/{reservation_id}",
        path_parameters={"user_id": user, "reservation_id": "none"},
    )
    calls = [("lambda_handler", check), ("lambda_handler", release)]
    results = _serve(built, runtime_dir, "CheckFunction", calls, env)
    status, answer = _status_and_body(results[0])
    assert status == 200 and answer["allowed"] is True, answer
    assert _status_and_body(results[1])[0] == 404

    calls = [
        ("lambda_handler", http_event("POST", "/v1/usage", usage)),
        ("lambda_handler", http_event("POST", "/v1/usage", usage)),  # the same event again
        ("lambda_handler", http_event("POST", "/v1/usage", {**usage, "event_id": "build-e2", "amount": 0})),
        (
            "lambda_handler",
            http_event(
                "POST", "/v1/usage/batch", {"events": [{**usage, "event_id": "build-b1", "amount": 10}]}
            ),
        ),
        (
            "lambda_handler",
            http_event(
                "POST",
                f"/v1/users/{user}/adjustments",
                {
                    "adjustment_id": "build-a1",
                    "usage_type": "premium_voice",
                    "pool": "purchased",
                    "delta": 5,
                    "reason": "goodwill",
                },
                route="/v1/users/{user_id}/adjustments",
                path_parameters={"user_id": user},
            ),
        ),
    ]
    results = _serve(built, runtime_dir, "RecordFunction", calls, env)
    recorded, replayed, invalid, batch, adjusted = map(_status_and_body, results)
    assert recorded[0] == 201 and recorded[1]["breakdown"]["from_purchased"] == 300, recorded
    assert replayed[0] == 200 and replayed[1]["duplicate"] is True, replayed
    assert invalid[0] == 400 and "amount" in json.dumps(invalid[1]), invalid
    assert batch[0] == 200 and batch[1]["results"][0]["status"] == "recorded", batch
    assert adjusted[0] == 201 and adjusted[1]["balance"]["purchased"] == 1000 - 300 - 10 + 5, adjusted

    queued = sqs_event([{**usage, "event_id": "build-q1", "amount": 20}])
    results = _serve(built, runtime_dir, "RecordQueueFunction", [("queue_handler", queued)], env)
    assert results == [{"batchItemFailures": []}]

    summary = http_event(
        "GET",
        f"/v1/users/{user}/summary",
        route="/v1/users/{user_id}/summary",
        path_parameters={"user_id": user},
    )
    results = _serve(built, runtime_dir, "SummaryFunction", [("lambda_handler", summary)], env)
    status, answer = _status_and_body(results[0])
    assert status == 200 and answer["usage_types"]["premium_voice"]["purchased"] == 675, answer

    calls = [("lambda_handler", {"action": "migrate"}), ("lambda_handler", {"action": "reconcile"})]
    results = _serve(built, runtime_dir, "MaintenanceFunction", calls, env)
    assert results[0]["action"] == "migrate" and results[0]["revision"], results
    assert results[1] == {"action": "reconcile", "clean": True, "drifts": 0}, results
