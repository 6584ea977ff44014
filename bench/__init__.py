"""Benchmarks of the metering service beside a pgbench reference measured in the same run.

Run with `python -m bench` (`make bench`); `--quick` for a short run. See docs/performance.md.
A program, not a test: it prints a table and writes bench/results/latest.json.
"""
