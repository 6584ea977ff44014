"""Cold start: the import of each handler module in a fresh interpreter, and its peak memory.

What is imported is the real `sam build` output: the template is built (without containers, by
the Makefiles of the layer and the functions, which compile the bytecode) into a temporary
--build-dir, so nothing is written into the repository. sam is .venv-sam/bin/sam (`make
samvenv`), else SAM_BIN/sam, else `sam` on PATH. Without sam, or if the build fails, a copy of
what the build ships is assembled instead, and the results say so (`build`, `build_note`): the
layer (`python/`: layers/metering/metering plus the distributions of
layers/metering/requirements.txt and their dependencies, copied from the venv at the same pinned
versions) and each function's code directory (app.py plus its own requirements.txt, minus what
the layer has).

Each handler is imported in a fresh `python -S -B` (no site-packages, no .pyc writing) with only
the function directory, the layer and the stdlib on sys.path, plus *last* a directory of links to
the venv's boto3, botocore and s3transfer as a stand-in for what the Lambda runtime provides (as
tests/infra does): a module found only there is reported. (Until 2026-12-03 the whole venv
site-packages was that stand-in, so stripe found the venv's httpx, which Lambda does not have,
and the webhook's figure carried httpx and rich: ≈ 100 ms under -X importtime.)

Beside the imports, in the same rounds, the bare interpreter's start-up: `python -c pass` and
`python -S -c pass`, wall time of the whole process. Each handler's figures: `import_ms`, the wall
time of the import inside the process (the target's figure); `import_cpu_ms`, the process CPU
time of the same import (less sensitive to other processes on the machine); `first_use_ms`, the
import, after the handler's, of what the handlers import only on their first request
(`FIRST_USE`: SQLAlchemy and its PostgreSQL dialect, pg8000, PyYAML, redis), so that what an
import left for later is visible and not hidden.

Two passes: with the bytecode the build compiled (unchecked-hash .pyc, as shipped), and on a copy
of the same files without any __pycache__ (what Lambda does when the zip ships no .pyc).
The import is timed inside the subprocess (time.perf_counter around exec_module); peak memory is
the process's VmHWM after the import (/proc/self/status; ru_maxrss of a child forked from the
big bench process would report the parent's peak, because Linux carries it across fork and exec).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.handlers import FUNCTIONS, ROOT
from metering.snapstart import FIRST_USE  # imported by the handlers on their first request

HANDLERS = ("check", "record", "summary", "stripe_webhook", "maintenance")
TARGETS_MS = {"stripe_webhook": 350.0}  # issue 20 (it was 600, and 400 for the others: issue 6)
DEFAULT_TARGET_MS = 250.0
# what the Lambda runtime provides (tests/infra/test_template.py RUNTIME_PROVIDED)
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
BARE = {"python -c pass": ["-c", "pass"], "python -S -c pass": ["-S", "-c", "pass"]}
LAYER_SRC = ROOT / "layers" / "metering"
SITE = Path(sysconfig.get_paths()["purelib"])

_PROBE = r"""
import importlib, importlib.util, json, resource, sys, time
fn_dir, layer, site, first_use = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path[0:0] = [fn_dir, layer]
sys.path.append(site)
before = set(sys.modules)
t0, c0 = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("app", fn_dir + "/app.py")
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
deferred = [name for name in first_use.split(",") if name and name not in sys.modules]
def hwm_kb():
    # VmHWM is this process's own peak; ru_maxrss would carry over the forking parent's
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_kb = hwm_kb()
imported = set(sys.modules)
t1 = time.perf_counter()
for name in deferred:
    try:
        importlib.import_module(name)
    except ImportError:  # not shipped with this function (maintenance has no redis)
        pass
first_use_ms = (time.perf_counter() - t1) * 1000
def top(prefix):
    names = set()
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if name not in before and name in imported and f.startswith(prefix):
            names.add(f[len(prefix):].lstrip("/").split("/")[0].removesuffix(".py"))
    return sorted(names)
print(json.dumps({"import_ms": elapsed * 1000, "import_cpu_ms": cpu * 1000, "maxrss_mb": rss_kb / 1024,
                  "first_use_ms": first_use_ms, "deferred": deferred,
                  "modules": len(imported - before),
                  "from_layer": top(layer), "from_runtime_fallback": top(site)}))
"""

_BASELINE = (
    "import json\n"
    "kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "print(json.dumps({'maxrss_mb': kb / 1024}))"
)


def _requirements(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def _name(requirement: str) -> tuple[str, None]:
    try:
        from packaging.requirements import Requirement

        req = Requirement(requirement)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            return "", None
        return req.name, None
    except ImportError:  # crude fallback: skip anything conditional
        if ";" in requirement:
            return "", None
        return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0], None


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str], exclude: set[str]) -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = [_name(r)[0] for r in requirements]
    while todo:
        name = todo.pop()
        key = _key(name)
        if not name or key in seen or key in exclude:
            continue
        dist = md.distribution(name)
        seen[key] = dist
        todo += [_name(r)[0] for r in dist.requires or []]
    return list(seen.values())


def _copy_dists(dists: list[md.Distribution], target: Path) -> None:
    for dist in dists:
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            src = Path(dist.locate_file(file))
            if src.is_file():
                dest = target / file
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)


def _leave_out(layer: Path) -> None:
    """What layers/metering/Makefile deletes after installing: the parts of the dependencies that
    layers/metering/prune.txt lists."""
    listed = [line.strip() for line in (LAYER_SRC / "prune.txt").read_text().splitlines()]
    for path in (p for p in listed if p and p[0] != "#"):
        target = layer / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def build(workdir: Path) -> tuple[Path, dict[str, Path]]:
    """Assemble the layer and the function directories as `sam build` would, without .pyc
    (the fallback when sam is not available)."""
    layer = workdir / "layer" / "python"
    layer.mkdir(parents=True)
    shutil.copytree(
        LAYER_SRC / "metering", layer / "metering", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    # boto3 is not a layer requirement (the runtime provides it), so the closure does not hold it
    layer_dists = _closure(_requirements(LAYER_SRC / "requirements.txt"), set())
    _copy_dists(layer_dists, layer)
    _leave_out(layer)
    in_layer = {_key(d.metadata["Name"]) for d in layer_dists}
    functions: dict[str, Path] = {}
    for name in HANDLERS:
        src = FUNCTIONS / name
        if not (src / "app.py").exists():
            continue
        dest = workdir / "functions" / name
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _copy_dists(_closure(_requirements(src / "requirements.txt"), in_layer), dest)
        functions[name] = dest
    return layer, functions


def runtime_dir(workdir: Path) -> Path:
    """Links to the venv's copies of what the Lambda runtime provides, and nothing else."""
    path = workdir / "runtime"
    path.mkdir(exist_ok=True)
    for package in RUNTIME_PROVIDED:
        src = SITE / package
        if src.is_dir() and not (path / package).exists():
            (path / package).symlink_to(src, target_is_directory=True)
    return path


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "metering",
        "POWERTOOLS_METRICS_NAMESPACE": "Metering",
        "LANG": "C.UTF-8",
    }


def _probe(fn_dir: Path, layer: Path, runtime: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-S",
        "-B",
        "-c",
        _PROBE,
        str(fn_dir),
        str(layer),
        str(runtime),
        ",".join(FIRST_USE),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:300]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _bare(args: list[str]) -> float:
    """Wall time of a whole interpreter process that does nothing, in ms."""
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=_env(), check=True, capture_output=True)
    return (time.perf_counter() - started) * 1000


def _measure(functions: dict[str, Path], layer: Path, runtime: Path, runs: int) -> dict[str, Any]:
    """Median of `runs` imports per handler, after one untimed import. The handlers take turns
    (one import of each per round), and each round starts with the bare interpreter's start-ups:
    a slow spell of the host, which can last seconds here, then falls on one run of every figure
    rather than on every run of one."""
    out: dict[str, Any] = {}
    for fn_dir in functions.values():
        _probe(fn_dir, layer, runtime)  # untimed: the files are then in the page cache for every timed run
    bare: dict[str, list[float]] = {name: [] for name in BARE}
    rounds = []
    for _ in range(runs):
        for name, args in BARE.items():
            bare[name].append(_bare(args))
        rounds.append({name: _probe(fn_dir, layer, runtime) for name, fn_dir in functions.items()})
    out["interpreter"] = {
        name: {
            "ms": statistics.median(samples),
            "min_ms": min(samples),
            "runs": [round(x, 1) for x in samples],
        }
        for name, samples in bare.items()
    }
    handlers: dict[str, Any] = {}
    for name in functions:
        samples = [r[name] for r in rounds]
        errors = [s["error"] for s in samples if "error" in s]
        if errors:
            handlers[name] = {"error": errors[0]}
            continue
        handlers[name] = {
            "import_ms": statistics.median(s["import_ms"] for s in samples),
            "import_min_ms": min(s["import_ms"] for s in samples),
            "import_ms_runs": [round(s["import_ms"], 1) for s in samples],
            "import_cpu_ms": statistics.median(s["import_cpu_ms"] for s in samples),
            "first_use_ms": statistics.median(s["first_use_ms"] for s in samples),
            "deferred": samples[0]["deferred"],
            "maxrss_mb": statistics.median(s["maxrss_mb"] for s in samples),
            "modules": samples[0]["modules"],
            "from_layer": samples[0]["from_layer"],
            "from_runtime_fallback": samples[0]["from_runtime_fallback"],
        }
    out["handlers"] = handlers
    return out


def _size(path: Path, pyc: bool) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and (pyc or "__pycache__" not in p.parts):
            total += p.stat().st_size
    return total


def layer_contents(layer: Path) -> list[dict[str, Any]]:
    rows = []
    for entry in sorted(layer.iterdir()):
        if entry.name.endswith(".dist-info") or entry.name == "__pycache__":
            continue
        rows.append(
            {"name": entry.name, "kb": _size(entry, False) // 1024, "kb_with_pyc": _size(entry, True) // 1024}
        )
    return sorted(rows, key=lambda r: -r["kb"])


def _note(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] cold start: {message}", file=sys.stderr, flush=True)


def _sam() -> Path | None:
    candidates = [ROOT / ".venv-sam" / "bin" / "sam"]
    if os.environ.get("SAM_BIN"):
        candidates.append(Path(os.environ["SAM_BIN"]) / "sam")
    found = shutil.which("sam")
    if found:
        candidates.append(Path(found))
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def _function_ids() -> dict[str, str]:
    """functions/<name> -> the logical id of the (first) function built from it."""
    from metering_dev.template import load_template

    ids: dict[str, str] = {}
    for logical_id, res in load_template(ROOT / "template.yaml")["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            ids.setdefault(Path(res["Properties"]["CodeUri"]).name, logical_id)
    return ids


def sam_build(workdir: Path) -> tuple[Path, dict[str, Path], float] | str:
    """`sam build` into workdir: (layer python/, handler -> function dir, seconds), or why not."""
    sam = _sam()
    if sam is None:
        return "sam not found (make samvenv, or SAM_BIN / PATH)"
    build_dir = workdir / "sam-build"
    _note(f"{sam} build of template.yaml into a temporary --build-dir")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    cmd = [str(sam), "build", "--template-file", str(ROOT / "template.yaml"), "--build-dir", str(build_dir)]
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd)} failed: {exc}"
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return f"sam build exited {done.returncode}: {tail[:500]}"
    ids = _function_ids()
    functions = {
        name: build_dir / ids[name]
        for name in HANDLERS
        if name in ids and (build_dir / ids[name] / "app.py").exists()
    }
    return build_dir / "MeteringLayer" / "python", functions, seconds


def _without_pyc(layer: Path, functions: dict[str, Path], workdir: Path) -> tuple[Path, dict[str, Path]]:
    """A copy of the built layer and functions without any __pycache__."""
    skip = shutil.ignore_patterns("__pycache__")
    bare_layer = workdir / "no-pyc" / "layer" / "python"
    shutil.copytree(layer, bare_layer, ignore=skip, symlinks=True)
    bare = {}
    for name, fn_dir in functions.items():
        bare[name] = workdir / "no-pyc" / "functions" / name
        shutil.copytree(fn_dir, bare[name], ignore=skip, symlinks=True)
    return bare_layer, bare


def _compile(workdir: Path) -> None:
    """What the Makefiles do: bytecode for CPython 3.12, never checked against the source."""
    cmd = [sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    subprocess.run([*cmd, str(workdir)], check=False, capture_output=True)


def measure(runs: int, runs_without_pyc: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="metering-bench-build-") as tmp:
        workdir = Path(tmp)
        built = sam_build(workdir)
        if isinstance(built, str):
            note = f"NOT the sam build output ({built}): measuring an assembled copy instead"
            _note(note)
            layer, functions = build(workdir)
            bare_layer, bare_functions = layer, functions  # no .pyc until _compile below
            source, where, sam_seconds = "assembled copy", "assembled copy in a temp dir", None
        else:
            layer, functions, sam_seconds = built
            bare_layer, bare_functions = _without_pyc(layer, functions, workdir)
            source, where, note = "sam build", "sam build output in a temp --build-dir", ""
        baseline = json.loads(
            subprocess.run(
                [sys.executable, "-S", "-B", "-c", _BASELINE], capture_output=True, text=True, check=True
            ).stdout
        )
        runtime = runtime_dir(workdir)
        without = _measure(bare_functions, bare_layer, runtime, runs_without_pyc or runs)["handlers"]
        if source == "assembled copy":
            _compile(workdir)
        measured = _measure(functions, layer, runtime, runs)
        with_pyc = measured["handlers"]
        missing = [name for name in HANDLERS if name not in functions]
        contents = layer_contents(layer)
        for row in contents:
            row["imported_by"] = sorted(
                n for n, r in with_pyc.items() if row["name"].removesuffix(".py") in r.get("from_layer", [])
            )
        return {
            "method": f"python -S -B, import of <function>/app.py by path; {where}; runtime stand-in: "
            + ", ".join(RUNTIME_PROVIDED),
            "build": source,
            "build_note": note,
            "sam_build_s": None if sam_seconds is None else round(sam_seconds, 1),
            "runs": runs,
            "runs_without_pyc": runs_without_pyc or runs,
            "interpreter_baseline_maxrss_mb": baseline["maxrss_mb"],
            "interpreter_startup": measured["interpreter"],
            "first_use": list(FIRST_USE),
            "with_pyc": with_pyc,
            "without_pyc": without,
            "missing_handlers": missing,
            "layer": {
                "total_kb": sum(r["kb"] for r in contents),
                "total_kb_with_pyc": sum(r["kb_with_pyc"] for r in contents),
                "entries": contents,
            },
            "targets_ms": {name: TARGETS_MS.get(name, DEFAULT_TARGET_MS) for name in functions},
        }


def compare(builds: dict[str, Path], runs: int) -> dict[str, Any]:
    """The handlers of several `sam build` outputs (label -> --build-dir), e.g. main's and a
    branch's, imported in the same rounds: round by round, the bare interpreter's start-ups, then
    every handler of every build, so that a slow spell of the host falls on all of them."""
    ids = _function_ids()
    sets = {
        label: (
            d / "MeteringLayer" / "python",
            {n: d / ids[n] for n in HANDLERS if (d / ids[n] / "app.py").exists()},
        )
        for label, d in builds.items()
    }
    with tempfile.TemporaryDirectory(prefix="metering-bench-compare-") as tmp:
        runtime = runtime_dir(Path(tmp))
        for layer, functions in sets.values():  # untimed: page cache
            for fn_dir in functions.values():
                _probe(fn_dir, layer, runtime)
        bare: dict[str, list[float]] = {name: [] for name in BARE}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {label: {} for label in sets}
        for i in range(runs):
            for name, args in BARE.items():
                bare[name].append(_bare(args))
            for label, (layer, functions) in sets.items():
                for name, fn_dir in functions.items():
                    samples[label].setdefault(name, []).append(_probe(fn_dir, layer, runtime))
            _note(f"compare: round {i + 1} of {runs}")
    out: dict[str, Any] = {
        "runs": runs,
        "loadavg": list(os.getloadavg()),
        "interpreter": {
            n: {"ms": statistics.median(x), "min_ms": min(x), "runs": x} for n, x in bare.items()
        },
    }
    for label, handlers in samples.items():
        out[label] = {}
        for name, probes in handlers.items():
            ok = [p for p in probes if "error" not in p]
            if len(ok) < len(probes):
                out[label][name] = {"error": next(p["error"] for p in probes if "error" in p)}
                continue
            out[label][name] = {
                key: {"median": statistics.median(p[key] for p in ok), "min": min(p[key] for p in ok)}
                for key in ("import_ms", "import_cpu_ms", "first_use_ms", "maxrss_mb")
            } | {"import_ms_runs": [round(p["import_ms"], 1) for p in ok]}
    return out


_IMPORT_ONLY = r"""
import importlib.util, sys
fn_dir, layer, site = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[0:0] = [fn_dir, layer]
sys.path.append(site)
spec = importlib.util.spec_from_file_location("app", fn_dir + "/app.py")
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
"""


def _instructions(args: list[str]) -> int:
    """Instructions of a whole `python` process (valgrind's callgrind, `Collected`): the same
    count on a fast or a slow host, so a change of a few percent shows above the host's noise."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, *args]
    env = _env() | {"PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {done.stderr[-300:]}")
    return int(found.group(1))


def instructions(builds: dict[str, Path]) -> dict[str, Any]:
    """Per build and handler, the instructions of a `python -S -B` that imports the handler, and
    of one that does nothing (the interpreter's start-up): two valgrind runs at a time."""
    from concurrent.futures import ThreadPoolExecutor

    ids = _function_ids()
    with tempfile.TemporaryDirectory(prefix="metering-bench-instr-") as tmp:
        runtime = str(runtime_dir(Path(tmp)))
        jobs = {("interpreter", "python -S -c pass"): ["-S", "-B", "-c", "pass"]}
        for label, d in builds.items():
            layer = str(d / "MeteringLayer" / "python")
            for name in HANDLERS:
                fn_dir = d / ids[name]
                if (fn_dir / "app.py").exists():
                    jobs[(label, name)] = ["-S", "-B", "-c", _IMPORT_ONLY, str(fn_dir), layer, runtime]
        with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
            counts = dict(zip(jobs, pool.map(_instructions, jobs.values()), strict=True))
    out: dict[str, Any] = {}
    for (label, name), count in counts.items():
        out.setdefault(label, {})[name] = count
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.coldstart LABEL=BUILD_DIR ... [--runs N] [--instructions]`: `compare`,
    printed and written to bench/results/coldstart-compare.json."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=compare.__doc__)
    parser.add_argument("builds", nargs="+", help="label=path of a `sam build --build-dir`")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "coldstart-compare.json")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions with valgrind (about 25 s per handler)",
    )
    args = parser.parse_args(argv)
    builds = {b.split("=", 1)[0]: Path(b.split("=", 1)[1]) for b in args.builds}
    result = compare(builds, args.runs) if args.runs > 0 else {"interpreter": {}}
    if args.instructions:
        result["instructions"] = instructions(builds)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in result["interpreter"].items():
        print(f"{name:<34} median {r['ms']:6.1f} ms  min {r['min_ms']:6.1f}")
    for label in builds:
        for name, r in result.get(label, {}).items():
            if "error" in r:
                print(f"{label + ' ' + name:<34} {r['error']}")
                continue
            print(
                f"{label + ' ' + name:<34} import median {r['import_ms']['median']:6.1f} ms  "
                f"min {r['import_ms']['min']:6.1f}  CPU {r['import_cpu_ms']['median']:6.1f}  "
                f"first use {r['first_use_ms']['median']:6.1f}  RSS {r['maxrss_mb']['median']:4.0f} MB"
            )
    counts = result.get("instructions", {})
    bare = counts.get("interpreter", {}).get("python -S -c pass")
    if bare:
        print(f"{'instructions, python -S -c pass':<34} {bare / 1e6:8.1f} M")
    for label in builds:
        for name, count in counts.get(label, {}).items():
            print(
                f"{label + ' ' + name:<34} {count / 1e6:8.1f} M instructions "
                f"({(count - bare) / 1e6:.1f} M beyond start-up)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
