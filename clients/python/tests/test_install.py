"""`pip install ./clients/python` into a fresh virtualenv that has nothing else of this repo, on
the oldest Python the package supports when the machine has it (3.11), then a real call to the
dev server from there."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import importlib.util, json, sys
from metering_client import MeteringClient
from metering_client.usage import configure, record_usage
assert importlib.util.find_spec("metering") is None, "the service's package leaked in"
configure(sys.argv[1])
breakdown = record_usage(sys.argv[2], "server_kokoro", 21)
with MeteringClient(sys.argv[1]) as client:
    summary = client.summary(sys.argv[2])
print(json.dumps({"python": list(sys.version_info[:2]), "from_subscription": breakdown.from_subscription,
                  "used": summary.usage_types["server_kokoro"].used}))
"""


def oldest_python() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.11*/bin/python3.11")))
    return found[-1] if found else shutil.which("python3.11") or sys.executable


def test_installs_alone_and_calls_the_service(tmp_path, dev_server, user) -> None:
    source = tmp_path / "metering-client"  # the folder alone, away from the rest of the repo
    shutil.copytree(
        ROOT / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv = tmp_path / "venv"
    subprocess.run([oldest_python(), "-m", "venv", str(venv)], check=True, env=env, cwd=tmp_path)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(source)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    run = subprocess.run(
        [python, "-c", SCRIPT, dev_server.url, user], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert outcome["python"] >= [3, 11]
    assert (outcome["from_subscription"], outcome["used"]) == (21, 21)
