"""The service's handlers, loaded as Lambda loads them: functions/<name>/app.py by path, with the
layer package (`metering`, installed editable in the venv) importable.

Output: Powertools metrics stay enabled (each invocation still builds and serialises its EMF
record, as in Lambda) but stdout is discarded while handlers run; the Logger level is ERROR
(POWERTOOLS_LOG_LEVEL). POWERTOOLS_METRICS_DISABLED is deliberately not used: in Powertools 3.37
it skips clearing the metric set, so metrics would pile up instead of being flushed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
TEST_CATALOG = ROOT / "tests" / "fixtures" / "catalog.yaml"

# Set before anything imports Powertools.
SERVICE_ENV = {
    "POWERTOOLS_SERVICE_NAME": "metering",
    "POWERTOOLS_METRICS_NAMESPACE": "MeteringBench",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_loaded: dict[str, ModuleType] = {}


def service_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **SERVICE_ENV,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "METERING_CATALOG": str(TEST_CATALOG),
    }


def apply_env(env: dict[str, str]) -> None:
    os.environ.update(env)
    for var in ("BILLING_ENABLED", "USAGE_DLQ_URL", "STRIPE_WEBHOOK_SECRET"):
        os.environ.pop(var, None)
    # Emitted on every invocation that adds no metric (an allowed check); shown once per process
    # by default. Filtering keeps the per-call cost (the warning is still raised) but not the noise.
    warnings.filterwarnings("ignore", message="No application metrics to publish")


def load(name: str) -> ModuleType:
    """functions/<name>/app.py as a module (imported once per process, like a warm container)."""
    if name not in _loaded:
        path = FUNCTIONS / name / "app.py"
        spec = importlib.util.spec_from_file_location(f"bench_fn_{name}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def handler(name: str, attribute: str = "lambda_handler") -> Any:
    return getattr(load(name), attribute)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Discard what handlers print (EMF metrics) for the duration."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def silence_process_stdout() -> None:
    """In a worker process: fd 1 and sys.stdout go to /dev/null for good."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
