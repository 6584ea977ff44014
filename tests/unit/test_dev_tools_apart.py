"""The dev tools (tools/metering_dev) stay out of the runtime package and the layer: the layer's
own build recipe (layers/metering/Makefile) is run, without pip, on a copy of its folder, as `sam
build` runs it; the result holds no dev tools module, and `python -m metering` from it runs its
runtime commands and calls the development ones what they are."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER_SRC = ROOT / "layers" / "metering"
PACKAGE = LAYER_SRC / "metering"
DEV_COMMANDS = ("dev", "invoke", "openapi")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_runtime_package_holds_and_imports_no_dev_tool() -> None:
    assert not (PACKAGE / "devtools").exists()
    assert not (PACKAGE / "api" / "openapi.py").exists()
    importing = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name == "metering_dev" or name.startswith("metering_dev.") for name in _imports(path))
    )
    assert importing == [], "the runtime package imports the dev tools (cli.py names them lazily)"
    assert (ROOT / "tools" / "metering_dev" / "devserver.py").is_file()


def test_the_layer_recipe_deletes_nothing_of_the_package() -> None:
    """The dev tools are not copied, so the recipe has nothing of metering/ to delete again."""
    recipe = (LAYER_SRC / "Makefile").read_text(encoding="utf-8")
    assert "cp -R metering '$(LAYER)/metering'" in recipe
    assert "$(LAYER)/metering/" not in recipe.replace("cp -R metering '$(LAYER)/metering'", "")


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """layers/metering/Makefile's build-MeteringLayer, run as sam runs it (a scratch copy of the
    folder, the Makefile read from the source tree), with pip and prune.txt left out: the layer's
    dependencies come from this virtualenv instead."""
    scratch = tmp_path_factory.mktemp("layer-src")
    shutil.copytree(PACKAGE, scratch / "metering", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(LAYER_SRC / "requirements.txt", scratch / "requirements.txt")
    (scratch / "prune.txt").write_text("# nothing installed, nothing to prune\n")
    artifacts = tmp_path_factory.mktemp("layer")
    make = shutil.which("make")
    assert make, "make is needed to run the layer's recipe"
    subprocess.run(
        [
            make,
            "--no-print-directory",
            "--makefile",
            str(LAYER_SRC / "Makefile"),
            "build-MeteringLayer",
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON312={sys.executable}",
            "PIP_INSTALL=true",
        ],
        cwd=scratch,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return artifacts / "python"


def test_the_built_layer_holds_no_dev_tools_module(layer: Path) -> None:
    assert (layer / "metering" / "cli.py").is_file()
    modules = sorted(str(p.relative_to(layer)) for p in layer.rglob("*.py"))
    dev = [m for m in modules if "devtools" in m or "metering_dev" in m or m.endswith("openapi.py")]
    assert dev == [], f"dev tools in the layer: {dev}"
    assert sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")) == sorted(
        str(p.relative_to(layer / "metering")) for p in (layer / "metering").rglob("*.py")
    ), "the layer's package is the runtime package, file for file"


def _from_layer(layer: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m metering <args>` as Lambda would import it: the layer first, then the
    dependencies, and no site hooks (so not this checkout's editable install of metering_dev)."""
    code = (
        "import runpy, sys; "
        f"sys.path[0:0] = [{str(layer)!r}]; sys.path.append({sysconfig.get_paths()['purelib']!r}); "
        f"sys.argv = ['metering', *{list(args)!r}]; runpy.run_module('metering', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-S", "-B", "-c", code],
        cwd=layer,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_layer_runs_its_own_commands_without_the_dev_tools(layer: Path) -> None:
    probe = _from_layer(layer, "migrate", "--help")
    assert probe.returncode == 0, probe.stderr
    assert "DATABASE_URL" in probe.stdout
    where = _from_layer(layer, "reconcile", "--help")
    assert where.returncode == 0, where.stderr


@pytest.mark.parametrize("command", DEV_COMMANDS)
def test_a_dev_command_in_the_layer_says_it_is_one(layer: Path, command: str) -> None:
    done = _from_layer(layer, command)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"metering {command} is a development command" in done.stderr
    assert "metering_dev" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", DEV_COMMANDS)
def test_with_the_dev_tools_installed_the_same_command_runs(command: str) -> None:
    """In this checkout's virtualenv the command is there (its --help answers)."""
    done = subprocess.run(
        [sys.executable, "-m", "metering", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "development command" not in done.stderr
