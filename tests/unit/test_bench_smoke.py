"""The benchmark's statistics and parsing helpers (bench/ is a program; nothing here is timed)."""

import pytest

from bench import reference, stats
from bench.report import table


def test_percentile_interpolates_between_closest_ranks():
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert stats.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert stats.percentile([7], 99) == 7
    assert stats.percentile([3, 1, 2], 0) == 1
    assert stats.percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_latency_summary_is_in_milliseconds():
    summary = stats.latency_summary([1_000_000, 2_000_000, 3_000_000])
    assert summary["p50_ms"] == 2.0
    assert summary["max_ms"] == 3.0
    assert summary["mean_ms"] == 2.0
    assert summary["n"] == 3


def test_median_of_runs_and_spread():
    runs = [{"p50_ms": 1.0, "p99_ms": 5.0}, {"p50_ms": 3.0, "p99_ms": 4.0}, {"p50_ms": 2.0}]
    assert stats.median_of(runs) == {"p50_ms": 2.0, "p99_ms": 4.5}
    assert stats.spread([10.0, 12.0, 8.0]) == {"median": 10.0, "min": 8.0, "max": 12.0, "rel_spread": 0.4}


def test_paired_ratio_and_throughput():
    assert stats.paired_ratio([100, 300, 200], [1000, 1000, 1000]) == 0.2
    with pytest.raises(ValueError):
        stats.paired_ratio([1], [1, 2])
    # 300 events from the first start (t=1) to the last end (t=4): 100 events/s
    assert stats.throughput(300, [1.0, 1.5], [3.0, 4.0]) == 100.0


def test_pgbench_output_is_parsed():
    output = (
        "number of transactions actually processed: 9812\n"
        "number of failed transactions: 0 (0.000%)\n"
        "latency average = 1.632 ms\n"
        "initial connection time = 5.123 ms\n"
        "tps = 2450.918127 (without initial connection time)\n"
    )
    assert reference.parse(output) == {
        "tps": 2450.918127,
        "transactions": 9812.0,
        "latency_avg_ms": 1.632,
        "failed": 0.0,
    }
    with pytest.raises(RuntimeError):
        reference.parse("connection refused")
    assert "BEGIN;" in reference.script_text("hot") and "\\set u 1" in reference.script_text("hot")


def test_table_renders_every_row():
    rows = [
        {
            "figure": "check: p99",
            "ours": 4.2,
            "unit": "ms",
            "reference": None,
            "ratio": None,
            "target": "≤ 5 ms",
            "met": True,
        },
        {
            "figure": "records",
            "ours": 900.0,
            "unit": "ev/s",
            "reference": 2000.0,
            "ratio": 0.45,
            "target": "≥ 0.5x",
            "met": False,
        },
    ]
    text = table(rows)
    assert "4.20 ms" in text and "0.45x" in text and "NO" in text and "yes" in text


def test_cpu_budget_and_ceiling():
    # 0.5x a 4,000 tps reference is 2,000 events/s: 2 cores give 1 ms of CPU per event
    assert stats.cpu_budget_ms(2, 4000.0, 0.5) == 1.0
    assert stats.cpu_budget_ms(2, 4000.0, 2.0) == 0.25
    # 2 ms per event on 2 cores: at most 1,000 events/s, a quarter of the reference
    assert stats.cpu_ceiling(2, 2.0, 4000.0) == 0.25


def test_cpu_account_gives_medians_over_the_paired_repeats():
    from bench.cli import cpu_account, cpu_line, target_ratio

    ours = [
        {"client_cpu_ms_per_event": 0.8, "server_cpu_ms_per_event": 0.7},
        {"client_cpu_ms_per_event": 1.0, "server_cpu_ms_per_event": 0.6},
        {"client_cpu_ms_per_event": 0.9, "server_cpu_ms_per_event": None},  # no server sample
    ]
    account = cpu_account(ours, [4000.0, 2000.0, 3000.0], 0.5, 2)
    assert account["budget_ms_per_event"] == pytest.approx(4 / 3)  # the middle reference: 3,000 tps
    assert account["client_ms_per_event"] == 0.9
    assert account["server_ms_per_event"] == 0.7  # upper median of the two known
    assert account["total_ms_per_event"] == pytest.approx(1.6)  # upper median of 1.5 and 1.6
    # repeat 1: 2000 / 1.5 / 4000 = 0.33x; repeat 2: 2000 / 1.6 / 2000 = 0.625x
    assert account["ceiling_ratio"] == pytest.approx(0.625)
    assert account["ceiling_ratio_server_only"] == pytest.approx(2000 / 0.6 / 2000)
    assert target_ratio("HTTP batch of 500") == 2.0 and target_ratio("single, hot user") == 0.5
    line = cpu_line({"target_ratio": 0.5, "cpu": account})
    assert "0.5x needs ≤ 1.33 ms/event on 2 cores" in line and "at most 0.62x" in line


def test_the_bench_catalog_has_alerts_its_timed_records_never_cross():
    """Issue 19's bench figure rests on this: every timed record evaluates alerts on its type, and
    none crosses them (free plan allowance 0: percentages skipped, available stays 0)."""
    from bench import events, handlers
    from metering.catalog.model import load_catalog

    catalog = load_catalog(handlers.bench_catalog())
    assert [a.id for a in catalog.alerts_for(events.RECORD_TYPE)] == ["voice_80", "voice_100", "voice_out"]
    assert catalog.free_plan.limits[events.RECORD_TYPE] == 0
    assert [a.id for a in catalog.alerts_for(events.CHECK_TYPE)] == ["kokoro_80"]
    assert handlers.bench_catalog().parent != handlers.ROOT / "tests"  # never written into the repo


def test_alert_rows_compare_each_record_with_the_same_record_without_alerts():
    from bench.cli import build_rows

    def ops(pg: int) -> dict:
        return {"pg": {"min": pg, "max": pg, "mean": pg}, "redis": {"min": 0, "max": 0, "mean": 0}}

    rt = {
        "record (new event)": ops(2),
        "record (first event of a new user)": ops(3),
        "record crossing an alert (first event of a new user)": ops(4),
    }
    rows = {r["figure"]: r for r in build_rows({"round_trips": rt}, [])}
    assert rows["record, alerts configured, none crossed: DB round trips"]["met"] is True
    crossing = rows["record crossing an alert: DB round trips"]
    assert crossing["ours"] == 4 and crossing["met"] is False
