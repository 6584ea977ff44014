"""The layer's command line (`python -m metering`) as an operator runs it: in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def metering(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `metering <args>` with this process's environment plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", "metering", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )
