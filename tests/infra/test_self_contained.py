"""The repository is self-contained: no tracked file points at a path above its root.

A clone must work on its own, so no tracked file (code, Makefiles, scripts, docs) may refer to
something beside or above the checkout, such as a sibling `shared/` folder. What counts as such a
reference:

- a relative path that climbs above the root: one that starts with a `..` component (tools here
  run from the root, and prose means the root too), or one relative to a file's own directory
  (after make's `$(dir $(lastword $(MAKEFILE_LIST)))` or a shell `$(dirname "$0")`, in a Markdown
  link, anywhere in a YAML template, whose `Location` and `CodeUri` CloudFormation resolves from
  the template's folder) whose `..` components climb more levels than the file is deep;
- in Python, `Path(__file__)` followed by `.parent`, `.parents[n]` or `/ ".."` steps (directly, or
  through a variable assigned such a path) that end above the root, and nested
  `os.path.dirname(__file__)` calls that do;
- an absolute path under the checkout's parent directory or under a home directory (home, Users
  or root at the top of the file system, or the current user's home).

System locations (`/usr/...`, `/tmp/...`) and URLs are not references to the checkout's
surroundings and are allowed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# `..` as a whole path component, possibly repeated with slashes between; `...` and `a..b` are not
UP_RUN = re.compile(r"(?<![\w.])\.\.(?:/\.\.)*(?![\w.])")
STEPS = r"(?:\.resolve\(\)|\.absolute\(\)|\.parent\b|\.parents\[\d+\]|\s*/\s*[\"']\.\.[\"'])*"
STEP = re.compile(r"\.parent\b|\.parents\[(\d+)\]|/\s*[\"']\.\.[\"']")
FILE_CHAIN = re.compile(rf"Path\(\s*__file__\s*\)(?P<steps>{STEPS})")
ASSIGNED = re.compile(rf"^\s*(?P<name>\w+)\s*(?::[^=]+)?=\s*Path\(\s*__file__\s*\)(?P<steps>{STEPS})", re.M)
DIRNAMES = re.compile(r"((?:os\.path\.dirname\(\s*)+)(?:os\.path\.(?:abspath|realpath)\(\s*)?__file__")


def climbs(steps: str) -> int:
    """How many directories up a chain of `.parent` / `.parents[n]` / `/ ".."` steps goes."""
    return sum(int(m.group(1)) + 1 if m.group(1) else 1 for m in STEP.finditer(steps))


FILE_RELATIVE = (".yaml", ".yml")  # templates: CloudFormation resolves paths from their folder


def _relative_escapes(rel: Path, text: str) -> Iterator[str]:
    depth = len(rel.parts) - 1  # directories between the root and this file
    file_relative = rel.suffix in FILE_RELATIVE
    for m in UP_RUN.finditer(text):
        before, after = text[: m.start()], text[m.end() :]
        if not (before.endswith("/") or after.startswith("/")):
            continue  # prose, as in "2023-08-16 .. 2025-03-31"
        anchor = before[:-1] if before.endswith("/") else before
        if before.endswith("/") and not anchor.endswith(")"):
            continue  # `dir/..`: climbs back from a named directory
        if file_relative or anchor.endswith((")", "](")):  # $(dir …), $(dirname …), a Markdown link
            if m.group().count("..") > depth:
                yield f"{m.group()!r} climbs above the root from {rel.parent}/"
        else:
            yield f"{(m.group() + after)[:40]!r}: a relative path above the root"


def _file_escapes(rel: Path, text: str) -> Iterator[str]:
    levels = len(rel.parts)  # climbing this many steps from the file reaches the root
    for m in FILE_CHAIN.finditer(text):
        if climbs(m.group("steps")) > levels:
            yield f"{m.group()!r} ends above the root"
    for m in DIRNAMES.finditer(text):
        if m.group(1).count("dirname") > levels:
            yield f"{m.group()!r} ends above the root"
    for a in ASSIGNED.finditer(text):
        base = climbs(a.group("steps"))
        for m in re.finditer(rf"\b{a.group('name')}(?P<steps>{STEPS})", text):
            if base + climbs(m.group("steps")) > levels:
                yield f"{m.group()!r} ({a.group('name')} = {a.group()}) ends above the root"


def _absolute_escapes(text: str, outside: list[str]) -> Iterator[str]:
    for prefix in outside:
        for m in re.finditer(rf"(?<![\w.~$}}/:-]){re.escape(prefix)}[\w.-]\S*", text):
            yield f"{m.group()!r}: an absolute path outside the checkout"


def outside_prefixes(root: Path, home: Path) -> list[str]:
    prefixes = {"/home/", "/Users/", "/root/", f"{home}/"}
    if root.parent != Path("/"):
        prefixes.add(f"{root.parent}/")
    return sorted(prefixes)


def references_outside(rel: Path, text: str, outside: list[str]) -> list[str]:
    """Every reference in `text` (the file at `rel`, relative to the root) to a path above the root."""
    found = [*_relative_escapes(rel, text), *_absolute_escapes(text, outside)]
    if rel.suffix == ".py":
        found += _file_escapes(rel, text)
    return found


def tracked_files() -> list[Path]:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [Path(p) for p in listing.stdout.decode().split("\0") if p]


def test_no_tracked_file_refers_to_a_path_above_the_root() -> None:
    outside = outside_prefixes(ROOT, Path.home())
    files = tracked_files()
    assert Path("tests/infra/test_self_contained.py") in files  # git saw the checkout
    problems = []
    for rel in files:
        try:
            text = (ROOT / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary, or deleted in the work tree
        problems += [f"{rel}: {p}" for p in references_outside(rel, text, outside)]
    assert not problems, "\n".join(problems)


# --- what the check catches and what it lets through ------------------------------------------------
# Written with placeholders (@UP@ for a `..` component, @FILE@ for the name of the module's path,
# @HOME@ and @PARENT@ for absolute directories) so that this file does not match its own checks.

OUTSIDE = ["/home/", "/srv/"]


def _example(text: str) -> str:
    for placeholder, value in {
        "@UP@": "..",
        "@FILE@": "__file__",
        "@HOME@": f"{OUTSIDE[0]}dev",
        "@PARENT@": OUTSIDE[1].rstrip("/"),
    }.items():
        text = text.replace(placeholder, value)
    return text


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("README.md", "The contract is `@UP@/shared/spec/api.md`."),
        ("docs/decisions.md", "see @UP@/@UP@/shared/research/notes.md"),
        ("tests/support/x.py", 'FIXTURES = Path("@UP@/shared/stripe/fixtures.json")'),
        ("tests/support/x.py", 'FIXTURES = Path(@FILE@).resolve().parents[3] / "shared"'),
        ("tests/support/x.py", "ROOT = Path(@FILE@).parent.parent.parent.parent"),
        ("tests/support/x.py", 'ROOT = Path(@FILE@).parent / "@UP@" / "@UP@" / "@UP@"'),
        ("tests/x.py", "ROOT = Path(@FILE@).resolve().parents[1]\nSPEC = ROOT.parent / 'shared'"),
        ("bench/x.py", "UP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(@FILE@))))"),
        ("functions/check/Makefile", "include $(dir $(lastword $(MAKEFILE_LIST)))@UP@/@UP@/@UP@/x.mk"),
        (".ci/run", 'cd "$(dirname "$0")/@UP@/@UP@"'),
        ("docs/x.md", "[spec](@UP@/@UP@/shared/spec/api.md)"),
        ("infra/quickstart.yaml", "      Location: @UP@/@UP@/shared/template.yaml"),
        ("docs/performance.md", "see @PARENT@/shared/research/tools.md §7"),
        ("Makefile", "PY ?= @HOME@/.pyenv/versions/3.12.1/bin/python3.12"),
    ],
)
def test_the_check_catches_references_above_the_root(rel: str, text: str) -> None:
    assert references_outside(Path(rel), _example(text), OUTSIDE) != []


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("README.md", "The contract is `api.md` (in the project's spec)."),
        ("tests/support/x.py", "ROOT = Path(@FILE@).resolve().parents[2]"),
        ("tests/x.py", "ROOT = Path(@FILE@).resolve().parents[1]\nTEMPLATE = ROOT / 'template.yaml'"),
        ("tools/metering_dev/openapi.py", "REPO_ROOT = Path(@FILE@).resolve().parents[2]"),
        ("functions/check/Makefile", "include $(dir $(lastword $(MAKEFILE_LIST)))@UP@/build.mk"),
        (".ci/run", 'cd "$(dirname "$0")/@UP@"'),
        ("docs/x.md", "[readme](@UP@/README.md)"),
        ("infra/quickstart.yaml", "      Location: @UP@/template.yaml"),
        ("bench/x.py", 'if file.parts[0] == "@UP@" or file.suffix == ".pyc":'),
        ("layers/x.py", "# API versions 2023-08-16 @UP@ 2025-03-31, then ... and a.b"),
        ("tests/x.py", 'url = "unix:///tmp/x/redis.socket"; pg = "/usr/lib/postgresql/15/bin"'),
        ("README.md", "curl -s https://example.com/root/x and /v1/users/u1/summary"),
    ],
)
def test_the_check_lets_paths_inside_the_root_through(rel: str, text: str) -> None:
    assert references_outside(Path(rel), _example(text), OUTSIDE) == []
