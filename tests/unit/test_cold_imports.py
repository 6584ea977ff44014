"""What a handler's import (a Lambda cold start's init) loads, and what it leaves to first use.

Structural facts only, no timings (those are `make bench`'s, docs/performance.md): each check is
a fresh interpreter that imports one handler module, as Lambda's init does, and reports which of
the heavy modules are in `sys.modules`. A module that creeps back into an import fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# imported by the first request that needs them (or SnapStart's before-snapshot hook), never by a
# handler's import
DEFERRED = ("sqlalchemy", "yaml", "pg8000", "redis", "boto3", "alembic", "metering.catalog.model")
WEBHOOK_ONLY = ("stripe",)

_PROBE = r"""
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
watched = sys.argv[2].split(",")
loaded = sorted(name for name in watched if name in sys.modules)
from pydantic import BaseModel
from metering.api import models
print(json.dumps({
    "loaded": loaded,
    "built": sorted(
        name for name, value in vars(models).items()
        if isinstance(value, type) and issubclass(value, BaseModel)
        and value.__module__ == models.__name__ and value.__pydantic_complete__
    ),
}))
"""


def _imported_by(module: str, watched: tuple[str, ...] = (*DEFERRED, *WEBHOOK_ONLY)) -> dict[str, Any]:
    env = {**os.environ, "POWERTOOLS_SERVICE_NAME": "metering", "AWS_REGION": "us-east-1"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, ",".join(watched)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("name", ["check", "record", "summary", "maintenance"])
def test_a_handler_imports_no_database_yaml_redis_aws_or_stripe_library(name: str) -> None:
    assert _imported_by(f"functions.{name}.app")["loaded"] == []


def test_the_webhook_imports_stripe_and_nothing_deferred() -> None:
    assert _imported_by("functions.stripe_webhook.app")["loaded"] == ["stripe"]


def test_a_handler_builds_the_schemas_of_its_own_models_only() -> None:
    # defer_build: the check handler never validates a usage record or a batch, so importing it
    # builds neither (powertools builds the route's own models when it registers the route)
    built = _imported_by("functions.check.app")["built"]
    for other in ("UsageRequest", "UsageResponse", "BatchRequest", "BatchResponse", "AdjustmentRequest"):
        assert other not in built


def test_the_summary_defines_no_write_model() -> None:
    # its routes are reads: metering.api.base and read_models, not the check's and writes' models
    write_models = ("metering.api.models",)
    assert _imported_by("functions.summary.app", write_models)["loaded"] == []
    assert _imported_by("functions.record.app", write_models)["loaded"] == ["metering.api.models"]


def test_the_lazy_exceptions_module_hands_out_sqlalchemys_own_classes() -> None:
    script = (
        "import sys\n"
        "from metering.db import exc\n"
        "assert 'sqlalchemy' not in sys.modules, 'importing metering.db.exc imported SQLAlchemy'\n"
        "import sqlalchemy.exc as real\n"
        "assert exc.DBAPIError is real.DBAPIError and exc.InterfaceError is real.InterfaceError\n"
        "assert exc.DisconnectionError is real.DisconnectionError\n"
        "try:\n"
        "    exc.NoSuchThing\n"
        "except AttributeError:\n"
        "    print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_bench_prints_each_import_beside_the_bare_interpreter(tmp_path: Path) -> None:
    from bench import cli, coldstart

    fn_dir, layer = tmp_path / "fn", tmp_path / "layer"
    fn_dir.mkdir()
    layer.mkdir()
    (layer / "tiny.py").write_text("VALUE = 1\n")
    (fn_dir / "app.py").write_text("import json\nimport tiny\n")
    measured = coldstart._measure({"tiny": fn_dir}, layer, coldstart.runtime_dir(tmp_path), runs=2)

    assert set(measured["interpreter"]) == {"python -c pass", "python -S -c pass"}
    assert all(len(r["runs"]) == 2 and r["ms"] > 0 for r in measured["interpreter"].values())
    tiny = measured["handlers"]["tiny"]
    assert tiny["from_layer"] == ["tiny"] and tiny["from_runtime_fallback"] == []
    assert len(tiny["import_ms_runs"]) == 2 and tiny["import_cpu_ms"] >= 0
    # first use: what a handler's first request imports, timed after the import
    assert tiny["deferred"] == list(coldstart.FIRST_USE)  # nothing of it imported by this app

    cold = {
        "method": "test",
        "runs": 2,
        "runs_without_pyc": 2,
        "interpreter_baseline_maxrss_mb": 10.0,
        "interpreter_startup": measured["interpreter"],
        "first_use": list(coldstart.FIRST_USE),
        "with_pyc": measured["handlers"],
        "without_pyc": measured["handlers"],
        "missing_handlers": [],
        "layer": {"total_kb": 1, "total_kb_with_pyc": 1, "entries": []},
        "targets_ms": {"tiny": 250.0},
    }
    text = cli.cold_start_table(cold)
    assert "bare interpreter start-up, same rounds" in text and "python -S -c pass:" in text
    assert any(line.strip().startswith("tiny") for line in text.splitlines())
    figures = [r["figure"] for r in cli.build_rows({"cold_start": cold}, [])]
    assert "start-up of a bare `python -S -c pass`" in figures and "import tiny (.pyc)" in figures
