"""The pgbench reference: the minimal durable "record usage" transaction on the same server.

    BEGIN; INSERT INTO bench_log (user_id, amount) VALUES (:u, 10);
    UPDATE bench_counter SET used = used + 10 WHERE user_id = :u; COMMIT;

with :u random in 1..1000 ("many users") or always 1 ("hot user"); pgbench's default simple
protocol, so 4 round trips per transaction. Run with the same number of clients as our processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import report
from bench.servers import REFERENCE_USERS, Servers

SCRIPTS = {
    "many": f"\\set u random(1, {REFERENCE_USERS})\n",
    "hot": "\\set u 1\n",
}
BODY = (
    "BEGIN;\n"
    "INSERT INTO bench_log (user_id, amount) VALUES (:u, 10);\n"
    "UPDATE bench_counter SET used = used + 10 WHERE user_id = :u;\n"
    "COMMIT;\n"
)
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


def pgbench_path() -> str:
    found = os.environ.get("BENCH_PGBENCH") or shutil.which("pgbench") or "/usr/bin/pgbench"
    if not Path(found).exists():
        raise SystemExit("bench: pgbench not found (set BENCH_PGBENCH)")
    return found


def script_text(kind: str) -> str:
    return SCRIPTS[kind] + BODY


def parse(output: str) -> dict[str, float]:
    tps = _TPS.search(output)
    if not tps:
        raise RuntimeError(f"pgbench printed no tps:\n{output}")
    out = {"tps": float(tps.group(1))}
    if processed := _PROCESSED.search(output):
        out["transactions"] = float(processed.group(1))
    if lat := _LAT.search(output):
        out["latency_avg_ms"] = float(lat.group(1))
    if failed := _FAILED.search(output):
        out["failed"] = float(failed.group(1))
    return out


def run(servers: Servers, kind: str, clients: int, seconds: int) -> dict[str, float]:
    conn_args, env = servers.pgbench_args()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix=f"bench-{kind}-", delete=False) as f:
        f.write(script_text(kind))
        script = f.name
    try:
        args = [pgbench_path(), "-n", "-f", script, "-c", str(clients), "-j", str(min(2, clients))]
        args += ["-T", str(seconds), *conn_args]
        before, server_before = report.cpu_sample(), report.server_cpu_sample()
        done = subprocess.run(
            args, capture_output=True, text=True, env={**os.environ, **env}, timeout=seconds + 60, check=False
        )
        after = report.cpu_sample()
        _wait_for_backends_to_exit(servers)
        server_after = report.server_cpu_sample()
    finally:
        os.unlink(script)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr or done.stdout}")
    busy = report.cpu_busy(before, after)
    out = {**parse(done.stdout), "clients": clients, "seconds": seconds, "machine_cpu_busy": busy}
    if out.get("transactions"):
        out["server_cpu_ms_per_tx"] = (server_after - server_before) * 1000 / out["transactions"]
    return out


def _wait_for_backends_to_exit(servers: Servers, tries: int = 10_000) -> None:
    """pgbench's backends outlive it by a moment; their CPU counts only once they have exited and
    been reaped (the postmaster's cutime). Waits for that condition, not for a time."""
    from sqlalchemy import create_engine, text

    engine = create_engine(servers.admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with engine.connect() as conn:
            for _ in range(tries):
                left = conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")
                ).scalar()
                if not left and not report.postgres_zombies():
                    return
    finally:
        engine.dispose()
    raise RuntimeError("pgbench's backends did not exit")


def command_line(kind: str, clients: int, seconds: int) -> str:
    jobs = min(2, clients)
    where = "-h 127.0.0.1 -U postgres metering_bench"
    return f"pgbench -n -f <{kind}.sql> -c {clients} -j {jobs} -T {seconds} {where}"
