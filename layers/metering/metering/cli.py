"""`python -m metering` / `metering`: the command line of the layer.

Each subcommand's module is imported only when that subcommand runs, so `migrate` works with
nothing but the layer and its requirements on the path (as a migration function in AWS would).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help). Each module exposes `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("metering.db.migrate", "bring the database at DATABASE_URL to the latest schema"),
    "reconcile": ("metering.services.reconcile", "check that balances and counters equal their journal"),
    "invoke": (
        "metering.devtools.invoke",
        "run one handler on one event file (Docker-free sam local invoke)",
    ),
    "dev": ("metering.devtools.devserver", "serve every route of template.yaml on 127.0.0.1:3000"),
    "openapi": ("metering.api.openapi", "print the HTTP API's OpenAPI document"),
    "alerts": (
        "metering.services.alert_delivery",
        "usage alerts: list them, replay dead ones, deliver the due ones",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # argument definitions are cheap; import the module only for the chosen command
        if name == (argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else None)):
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
