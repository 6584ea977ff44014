"""The command-line tools the infra tests run, offline: sam and cfn-lint (SAM_BIN, default
<repo>/.venv-sam/bin, made by `make samvenv`), checkov (CHECKOV_BIN, default <repo>/.venv-checkov/bin,
`make checkovvenv`) and CPython 3.12 for the build (PY312_BIN). A missing tool fails the test; it
is never skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# where each tool lives: (environment variable, default directory, make target that creates it)
_HOMES = {
    "sam": ("SAM_BIN", ".venv-sam", "samvenv"),
    "cfn-lint": ("SAM_BIN", ".venv-sam", "samvenv"),
    "python": ("SAM_BIN", ".venv-sam", "samvenv"),  # with the SAM translator
    "checkov": ("CHECKOV_BIN", ".venv-checkov", "checkovvenv"),
}


def py312_bin() -> Path | None:
    if os.environ.get("PY312_BIN"):
        return Path(os.environ["PY312_BIN"])
    for candidate in sorted((Path.home() / ".pyenv" / "versions").glob("3.12*/bin")):
        if (candidate / "python3.12").exists():
            return candidate
    found = shutil.which("python3.12")
    return Path(found).parent if found else None


def tool(name: str) -> Path:
    variable, venv, target = _HOMES[name]
    path = Path(os.environ.get(variable) or REPO / venv / "bin") / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} not found: run `make {target}` (or set {variable} to a directory with {name})")
    return path


def offline_env(**extra: str) -> dict[str, str]:
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


def run_tool(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd,
            cwd=REPO,
            env=env or offline_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{' '.join(cmd)} timed out after {timeout} s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        )


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


def _build_env() -> tuple[Path, dict[str, str]]:
    """CPython 3.12 for the build's Makefiles, and the offline environment with it on PATH."""
    py_bin = py312_bin()
    if py_bin is None or not (py_bin / "python3.12").exists():
        pytest.fail(f"python3.12 not found (PY312_BIN={py_bin}): the build's Makefiles need CPython 3.12")
    return py_bin, offline_env(PATH=f"{py_bin}{os.pathsep}{os.environ.get('PATH', '')}")


def sam_build(template_file: str, build_dir: Path) -> Path:
    """`sam build` of a template, without containers (the Makefiles run CPython 3.12): build_dir."""
    _, env = _build_env()
    proc = run_tool(
        [str(tool("sam")), "build", "--template-file", template_file, "--build-dir", str(build_dir)],
        timeout=900,
        env=env,
    )
    ok(proc)
    return build_dir


def make_build(build_dir: Path) -> Path:
    """The README's `make build` (sam build of template.yaml, without containers), into build_dir,
    with this module's sam and CPython 3.12."""
    py_bin, env = _build_env()
    sam_venv = tool("sam").parent.parent
    make = ["make", "--no-print-directory", "build", f"BUILD_DIR={build_dir}"]
    ok(run_tool([*make, f"PY312={py_bin / 'python3.12'}", f"SAMVENV={sam_venv}"], timeout=900, env=env))
    return build_dir


# Runs in the SAM CLI's virtualenv, which has the translator: argv template file, parameters (JSON).
_TRANSLATE = r"""
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

template_file, parameters = sys.argv[1], json.loads(sys.argv[2])
template = yaml_parse(open(template_file).read())
artifact = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}
for resource in template["Resources"].values():  # the translator wants S3 locations
    if resource["Type"] in artifact:
        resource["Properties"][artifact[resource["Type"]]] = "s3://bucket/artifact.zip"
json.dump(transform(template, parameters, NoManagedPolicies()), sys.stdout)
"""


def sam_translate(template_file: str, parameters: dict[str, str]) -> dict[str, Any]:
    """The template as CloudFormation receives it from SAM's transform, with these parameters."""
    proc = run_tool(
        [str(tool("python")), "-c", _TRANSLATE, template_file, json.dumps(parameters)], timeout=180
    )
    ok(proc)
    translated: dict[str, Any] = json.loads(proc.stdout)
    return translated
