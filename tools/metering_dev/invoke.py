"""`metering invoke FunctionLogicalId events/x.json`: run one handler of template.yaml on one event
file in this process, as `sam local invoke` would without Docker, and print its result as JSON.

When DATABASE_URL is unset, the database and Redis are chosen as `metering dev` chooses them (the
local servers if they answer, else embedded ones in --state-dir) and the schema is brought to head.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metering_dev.context import make_context
from metering_dev.template import FunctionSpec, functions, load_handler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("function", help="logical id in the template, e.g. CheckFunction")
    parser.add_argument("event", type=Path, help="JSON event file")
    parser.add_argument("--template", default="template.yaml", type=Path)
    parser.add_argument("--state-dir", default=".local", type=Path, help="embedded PostgreSQL/Redis data")


def run(args: argparse.Namespace) -> int:
    template = Path(args.template)
    if not template.is_file():
        print(f"error: template not found: {template}", file=sys.stderr)
        return 1
    specs = functions(template)
    spec = specs.get(args.function)
    if spec is None:
        known = ", ".join(sorted(specs)) or "(none)"
        print(f"error: unknown function {args.function!r} in {template}; known: {known}", file=sys.stderr)
        return 1
    try:
        event = json.loads(Path(args.event).read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: event file not found: {args.event}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"error: event file {args.event} is not JSON: {exc}", file=sys.stderr)
        return 1

    # stdout carries only the result: whatever the backends or the handler print goes to stderr
    with _stdout_to_stderr():
        ok, output = _invoke(args, spec, event)
    print(output)
    return 0 if ok else 1


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _invoke(args: argparse.Namespace, spec: FunctionSpec, event: Any) -> tuple[bool, str]:
    from metering_dev.devserver import prepare_backends, set_powertools_defaults

    if not os.environ.get("DATABASE_URL", "").strip():
        for line in prepare_backends(Path(args.state_dir)):
            print(line, file=sys.stderr)
    else:
        set_powertools_defaults()

    context = make_context(spec.logical_id, timeout_s=spec.timeout_s)
    context.memory_limit_in_mb = spec.memory_mb
    try:
        handler = load_handler(spec)
        result = handler(event, context)
    except Exception as exc:
        # the shape Lambda reports an unhandled error in
        error = {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "requestId": context.aws_request_id,
            "stackTrace": traceback.format_exception(exc),
        }
        traceback.print_exc()
        return False, json.dumps(error, indent=2)
    return True, json.dumps(result, indent=2, default=str)
