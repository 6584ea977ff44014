"""Small statistics helpers (pure functions, unit-tested in tests/unit/test_bench_smoke.py)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (numpy's default).

    Exact for small samples: p50 of [1, 2, 3, 4] is 2.5, p99 of 1..100 is 99.01.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean in milliseconds of perf_counter_ns durations."""
    ms = [s / 1e6 for s in samples_ns]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }


def median_of(runs: Iterable[dict[str, float]]) -> dict[str, float]:
    """Per key, the median across repeated runs (keys missing from a run are ignored for it)."""
    runs = list(runs)
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run if k not in keys]
    out: dict[str, float] = {}
    for k in keys:
        values = [run[k] for run in runs if isinstance(run.get(k), int | float)]
        if values:
            out[k] = statistics.median(values)
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements, and the relative spread (max-min)/median."""
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "rel_spread": (max(values) - min(values)) / med if med else 0.0,
    }


def paired_ratio(ours: Sequence[float], reference: Sequence[float]) -> float:
    """Median over repeats of ours[i] / reference[i] (each pair was measured back to back)."""
    if len(ours) != len(reference) or not ours:
        raise ValueError("need the same, non-zero number of measurements on both sides")
    return statistics.median(o / r for o, r in zip(ours, reference, strict=True))


def throughput(events: int, starts: Sequence[float], ends: Sequence[float]) -> float:
    """Events per second over the wall time from the first process's start to the last one's end."""
    wall = max(ends) - min(starts)
    if wall <= 0:
        raise ValueError("non-positive wall time")
    return events / wall


def cpu_budget_ms(cores: int, reference_tps: float, target_ratio: float) -> float:
    """The CPU time per event (client and server together, all cores) at which `target_ratio` x the
    reference's rate uses every core of the machine: cores / (target x tps). A workload that needs
    more than this per event cannot reach the target here, however its work is scheduled."""
    return cores * 1000.0 / (target_ratio * reference_tps)


def cpu_ceiling(cores: int, cpu_ms_per_event: float, reference_tps: float) -> float:
    """The highest ratio to the reference that `cpu_ms_per_event` allows: every core busy, no wait."""
    return cores * 1000.0 / cpu_ms_per_event / reference_tps
