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
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
TEST_CATALOG = ROOT / "tests" / "fixtures" / "catalog.yaml"
# The bench's catalog: the test catalog plus alerts (issue 19), so that every record evaluates the
# alerts of its type. The records the bench times cross none of them (premium_voice: the free
# plan's allowance is 0, so the percentages are skipped and `available` stays 0); "record crossing
# an alert" in the round-trip section crosses kokoro_80 (900 of a new user's free 1000).
BENCH_ALERTS = [
    {"id": "voice_80", "usage_type": "premium_voice", "at_percent": 80},
    {"id": "voice_100", "usage_type": "premium_voice", "at_percent": 100},
    {"id": "voice_out", "usage_type": "premium_voice", "when": "available_depleted"},
    {"id": "kokoro_80", "usage_type": "server_kokoro", "at_percent": 80},
]

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


def bench_catalog() -> Path:
    """The test catalog with `BENCH_ALERTS`, written to the temporary directory (never the repo)."""
    import yaml

    catalog = yaml.safe_load(TEST_CATALOG.read_text())
    catalog["alerts"] = [*catalog.get("alerts", []), *BENCH_ALERTS]
    path = Path(tempfile.gettempdir()) / f"metering-bench-catalog-{os.getuid()}.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def service_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **SERVICE_ENV,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "METERING_CATALOG": str(bench_catalog()),
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
