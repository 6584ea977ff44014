"""Machine information, the results table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.handlers import ROOT


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "git": _git(),
    }


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "layers", "functions"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+uncommitted changes in layers/ or functions/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def row(
    figure: str,
    ours: Any,
    unit: str = "",
    reference: Any = None,
    ratio: float | None = None,
    target: str = "",
    met: bool | None = None,
) -> dict[str, Any]:
    return {
        "figure": figure,
        "ours": ours,
        "unit": unit,
        "reference": reference,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = ["figure", "ours", "reference", "ratio", "target", "met?"]
    lines = [
        [
            r["figure"],
            f"{_fmt(r['ours'])} {r['unit']}".strip(),
            _fmt(r["reference"]),
            "—" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"] or "—",
            {True: "yes", False: "NO", None: "—"}[r["met"]],
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    for line in lines:
        out.append(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(out)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def cpu_sample() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def server_cpu_sample() -> float:
    """CPU seconds used so far by PostgreSQL on this machine, from /proc/<pid>/stat: every live
    postgres process (backends, WAL writer, checkpointer...) plus what exited backends used (the
    postmaster's cutime/cstime: pgbench's backends exit before the second sample). The server's
    share of a run is the difference."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name.startswith(("postgres", "postmaster")):
            total += sum(int(rest[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime (ticks)
    return total / os.sysconf("SC_CLK_TCK")


def postgres_zombies() -> int:
    """PostgreSQL processes that have exited but are not reaped yet (their CPU is in no count)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            count += name.startswith("postgres") and stat[stat.rindex(")") + 2] == "Z"
    return count


def cpu_busy(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Fraction of the machine's CPU time (all cores) that was busy between two samples."""
    total = after[1] - before[1]
    return None if total <= 0 else round((after[0] - before[0]) / total, 3)
