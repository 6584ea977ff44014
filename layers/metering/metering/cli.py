"""`python -m metering` / `metering`: the command line of the layer.

Each subcommand's module is imported only when that subcommand runs, so `migrate` works with
nothing but the layer and its requirements on the path (as a migration function in AWS would).
`dev`, `invoke` and `openapi` are development commands: their code is the `metering_dev` package
(tools/metering_dev), which the project's virtualenv installs and the layer never ships; where it
is absent (inside Lambda) they say so and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

DEV_PACKAGE = "metering_dev"

# subcommand -> (module, help). Each module exposes `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("metering.db.migrate", "bring the database at DATABASE_URL to the latest schema"),
    "reconcile": ("metering.services.reconcile", "check that balances and counters equal their journal"),
    "invoke": (
        f"{DEV_PACKAGE}.invoke",
        "run one handler on one event file (Docker-free sam local invoke)",
    ),
    "dev": (f"{DEV_PACKAGE}.devserver", "serve every route of template.yaml on 127.0.0.1:3000"),
    "openapi": (f"{DEV_PACKAGE}.openapi", "print the HTTP API's OpenAPI document"),
}


class DevToolsMissing(Exception):
    """A development command was asked for where its package is not installed."""


def _load(command: str) -> ModuleType:
    module_name = COMMANDS[command][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the dev package itself being absent; an import error inside it is a bug to show
        if module_name.startswith(f"{DEV_PACKAGE}.") and exc.name == DEV_PACKAGE:
            raise DevToolsMissing(
                f"metering {command} is a development command: its package {DEV_PACKAGE} "
                "(tools/metering_dev) is not installed here. The Lambda layer does not ship it; "
                "run it from a checkout of the repository (`make venv`, then `make dev` / `make invoke`)."
            ) from exc
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        for name, (_, help_text) in COMMANDS.items():
            p = sub.add_parser(name, help=help_text, description=help_text)
            # argument definitions are cheap; import the module only for the chosen command
            if name == chosen:
                _load(name).add_arguments(p)
        args = parser.parse_args(argv)
        module = _load(args.command)
    except DevToolsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
