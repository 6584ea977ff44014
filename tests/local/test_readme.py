"""Every command the README shows is run by a test as written (plus, at most, a variable that keeps
the run to this worker: a port, an output path), or is named below with the reason no test can run
it here. The make targets no other test runs are run in this module."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.local.test_make_dev import try_it_block

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

RUN_ELSEWHERE = {
    "metering alerts list": "tests/integration/test_alerts_delivery.py: the dead alerts listed",
    "metering alerts replay [ID ...]": "tests/integration/test_alerts_delivery.py: replayed by id and by user",
    "metering alerts deliver": "tests/integration/test_alerts_delivery.py: deliver_due, as it runs",
    "make dev": "tests/local/test_make_dev.py: make dev (with PORT=<free port>)",
    "make dev PORT=3001": "tests/local/test_make_dev.py: make dev with PORT=<free port>",
    "STRIPE_WEBHOOK_SECRET=whsec_... make dev": "tests/local/test_make_dev.py, with a signed event",
    "make build": "tests/infra/test_template.py: the `built` fixture (with BUILD_DIR=<tmp>)",
    "make validate": "tests/infra/test_template.py: each of its tools on each template, one test each",
}
RUN_HERE = (
    "make migrate",
    "make reconcile",
    "make invoke FN=CheckFunction EVENT=events/check.json",
    "make openapi",
)
CANNOT_RUN_HERE = {
    "make test": "the run these tests are part of; .ci/fresh-clone runs it whole in a fresh clone",
    "make bench": "minutes of load (docs/performance.md); its parts have tests/unit/test_bench_smoke.py",
    "make deploy": "needs an AWS account (tests/infra/test_quickstart.py builds what it deploys)",
    "AWS_PROFILE=... AWS_REGION=... make deploy": "needs an AWS account",
    "aws secretsmanager put-secret-value": "needs a deployed stack",
    "stripe listen": "needs the Stripe CLI and a Stripe account",
    "stripe trigger": "needs the Stripe CLI and a Stripe account; test_make_dev sends such an event",
}


def shell_commands(lines: list[str]) -> list[str]:
    """The commands of a block of shell lines: comments dropped, continuation lines joined, spaces
    collapsed, a trailing `&` left out."""
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    commands = (
        " ".join(line.split("#")[0].split()).removesuffix("&").strip() for line in joined.splitlines()
    )
    return [c for c in commands if c]


def readme_commands() -> list[str]:
    """Commands of the README's sh blocks and the `make ...` commands its prose names in backticks."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        commands += shell_commands(block.splitlines())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [" ".join(m.group(1).split()) for m in re.finditer(r"`(make [^`]+)`", prose)]
    return commands


def test_every_readme_command_is_run_by_a_test_or_said_why_not() -> None:
    try_it = set(shell_commands(try_it_block()))  # tests/local/test_make_dev.py runs them all
    commands = readme_commands()
    assert {"make dev", "make test", "make migrate"} <= set(commands)  # the parser found them
    unaccounted = [
        c
        for c in commands
        if c not in try_it | set(RUN_ELSEWHERE) | set(RUN_HERE)
        and not any(c == name or c.startswith(f"{name} ") for name in CANNOT_RUN_HERE)
    ]
    assert unaccounted == []
    listed = [*RUN_ELSEWHERE, *RUN_HERE, *CANNOT_RUN_HERE]
    gone = [n for n in listed if not any(c == n or c.startswith(f"{n} ") for c in commands)]
    assert gone == [], "listed here, no longer in the README"


def make(command: str, *variables: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The README's `command` (a make command line), run silently in the checkout."""
    assert command in readme_commands()
    args = ["make", "--no-print-directory", "-s", *command.split()[1:], *variables]
    return subprocess.run(
        args, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout
    )


def test_make_migrate_and_make_reconcile(clean: dict[str, str]) -> None:
    # this worker's database (DATABASE_URL in the environment), already at the latest schema
    migrated = make("make migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert re.fullmatch(r"database at revision (\w+) \(head \1\)\n", migrated.stdout), migrated.stdout
    reconciled = make("make reconcile")
    assert (reconciled.returncode, reconciled.stdout) == (0, "reconcile (all users): clean\n"), (
        reconciled.stderr
    )


def test_make_invoke_runs_a_handler_on_an_event_file(clean: dict[str, str]) -> None:
    proc = make("make invoke FN=CheckFunction EVENT=events/check.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["statusCode"] == 200
    body = json.loads(result["body"])
    assert (body["user_id"], body["usage_type"], body["requested"]) == ("user-42", "ocr_tokens", 2000)
    assert body["allowed"] is False  # the free plan includes no ocr_tokens


def test_make_openapi_writes_the_committed_document(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"  # not over the committed file, which other tests read meanwhile
    proc = make("make openapi", f"OPENAPI={out}")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == (ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")
