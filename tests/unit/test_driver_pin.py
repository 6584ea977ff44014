"""The pipelined driver (`metering.db.wire`) leans on pg8000's internals: an upgrade of pg8000 must
be a deliberate change of `PG8000_VERSION`, not something a dependency bump does quietly."""

import re
from pathlib import Path

import pg8000
from pg8000 import core, legacy

from metering.db import wire

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    found = {}
    for path in ("layers/metering/requirements.txt", "pyproject.toml"):
        match = re.search(r"pg8000==([\w.]+)", (ROOT / path).read_text())
        assert match, f"{path} does not pin pg8000 with =="
        found[path] = match.group(1)
    return found


def test_pg8000_is_the_version_the_driver_was_written_against():
    assert pg8000.__version__ == wire.PG8000_VERSION, (
        f"pg8000 {pg8000.__version__} is installed, metering.db.wire was written against "
        f"{wire.PG8000_VERSION}: check its use of pg8000's internals, then move PG8000_VERSION"
    )
    assert set(_pins().values()) == {wire.PG8000_VERSION}, _pins()


def test_the_internals_the_driver_uses_are_there():
    for name in (
        "_write",
        "_flush",
        "_read",
        "Context",
        "PARSE",
        "BIND",
        "EXECUTE_MSG",
        "SYNC_MSG",
        "NULL_BYTE",
    ):
        assert hasattr(core, name), f"pg8000.core.{name} is gone"
    for name in ("handle_ROW_DESCRIPTION", "execute_unnamed", "execute_simple", "message_types"):
        assert hasattr(legacy.Connection, name) or name == "message_types", name
    assert issubclass(wire.PipelinedConnection, legacy.Connection)


PROBE = """
import pg8000, pg8000.core, pg8000.legacy, pg8000.converters, pg8000.native
modules = (pg8000, pg8000.core, pg8000.legacy, pg8000.converters, pg8000.native)
def snapshot():
    return {(m.__name__, k): id(v) for m in modules for k, v in vars(m).items()}
before = snapshot()
import metering.db.wire, metering.db.engine
after = snapshot()
print(sorted(k for k in before if before[k] != after.get(k)))
"""


def test_importing_the_driver_patches_nothing_in_pg8000():
    """No process-wide patching: after importing the driver, every name of pg8000's modules is
    bound to what pg8000 itself bound (a fresh interpreter, so nothing else was imported first)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "layers" / "metering"), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]", out.stdout
