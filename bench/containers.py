"""Warm Lambda containers: N spawned processes that import the record function once, then serve
jobs. For each job every process builds its events, warms up (untimed), waits at a shared barrier,
invokes the handler for its fixed share of events, and reports its start and end times
(time.perf_counter is CLOCK_MONOTONIC, comparable across processes). Throughput is all events over
the wall time from the first start to the last end."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import random
import threading
import time
import traceback
import uuid
from typing import Any

from bench import events, handlers, report
from bench.stats import throughput

_CTX = mp.get_context("spawn")


def _build(job: dict[str, Any], index: int) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], int]:
    """(handler attribute, warm-up events, timed events, events recorded by the timed ones)."""
    kind, run, share = job["kind"], job["run"], job["share"][index]
    rng = random.Random(f"{run}-{index}")
    users = events.many_users(job["users"])
    prefix = f"{kind}-{run}-{index}"
    if kind in ("many", "hot"):

        def user() -> str:
            return events.HOT_USER if kind == "hot" else rng.choice(users)

        warm = [events.record_event(f"{prefix}-w{i}", user()) for i in range(job["warmup"])]
        timed = [events.record_event(f"{prefix}-{i}", user()) for i in range(share)]
        return "lambda_handler", warm, timed, share
    size = job["batch"]
    if kind == "http_batch":
        warm = [events.batch_event(events.batch_bodies(f"{prefix}-w", 20, users, 10, rng))]
        timed = [
            events.batch_event(events.batch_bodies(f"{prefix}-{b}", size, users, job["batch_users"], rng))
            for b in range(share)
        ]
        return "lambda_handler", warm, timed, share * size
    if kind == "sqs":

        def messages(tag: str) -> dict[str, Any]:
            return events.sqs_event([events.usage_body(f"{tag}-{k}", rng.choice(users)) for k in range(size)])

        warm = [messages(f"{prefix}-w")]
        timed = [messages(f"{prefix}-{b}") for b in range(share)]
        return "queue_handler", warm, timed, share * size
    raise ValueError(kind)


def _verify(kind: str, results: list[dict[str, Any]]) -> int:
    """Number of events that were not recorded."""
    bad = 0
    for result in results:
        if kind in ("many", "hot"):
            bad += result.get("statusCode") != 201
        elif kind == "http_batch":
            if result.get("statusCode") != 200:
                bad += 500
                continue
            body = json.loads(result["body"])
            bad += sum(r["status"] != "recorded" for r in body["results"])
        else:
            bad += len(result.get("batchItemFailures") or [])
    return bad


def _container(index: int, env: dict[str, str], jobs: Any, results: Any, barrier: Any) -> None:
    handlers.silence_process_stdout()
    handlers.apply_env(env)
    try:
        handlers.load("record")  # cold start happens here, before any barrier
        from metering_dev.context import make_context
    except BaseException:
        results.put((index, "error", traceback.format_exc()))
        return
    results.put((index, "ready", None))
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            attribute, warm, timed, count = _build(job, index)
            handler = handlers.handler("record", attribute)
            for event in warm:
                handler(event, make_context("record"))
            contexts = [make_context("record") for _ in timed]
            barrier.wait(timeout=300)
            cpu0, start = time.process_time(), time.perf_counter()
            out = [handler(event, ctx) for event, ctx in zip(timed, contexts, strict=True)]
            end, cpu1 = time.perf_counter(), time.process_time()
            done = {"start": start, "end": end, "cpu_s": cpu1 - cpu0, "events": count}
            results.put((index, "done", {**done, "failed": _verify(job["kind"], out)}))
        except BaseException:
            with contextlib.suppress(Exception):
                barrier.abort()
            results.put((index, "error", traceback.format_exc()))


class Pool:
    """N warm containers; `run(job)` returns events/s of one job across all of them."""

    def __init__(self, size: int, env: dict[str, str], timeout: float = 600) -> None:
        self.size = size
        self.timeout = timeout
        self.barrier = _CTX.Barrier(size + 1)  # the parent waits too, to sample the machine's CPU
        self.results = _CTX.Queue()
        self.queues = [_CTX.Queue() for _ in range(size)]
        self.procs = [
            _CTX.Process(
                target=_container, args=(i, env, self.queues[i], self.results, self.barrier), daemon=True
            )
            for i in range(size)
        ]
        for p in self.procs:
            p.start()
        self._collect("ready")

    def _collect(self, expected: str) -> list[Any]:
        out: dict[int, Any] = {}
        while len(out) < self.size:
            index, status, value = self.results.get(timeout=self.timeout)
            if status == "error":
                self.close()
                raise RuntimeError(f"container {index} failed:\n{value}")
            assert status == expected, (status, expected)
            out[index] = value
        return [out[i] for i in range(self.size)]

    def run(
        self, kind: str, total: int, *, users: int, warmup: int = 20, batch: int = 1, batch_users: int = 50
    ) -> dict[str, Any]:
        """`total` units (events, or batches for batch kinds) split as evenly as possible."""
        if self.barrier.broken:
            self.barrier.reset()
        share = [total // self.size + (i < total % self.size) for i in range(self.size)]
        job = {
            "kind": kind,
            "run": uuid.uuid4().hex[:8],
            "share": share,
            "users": users,
            "warmup": warmup,
            "batch": batch,
            "batch_users": batch_users,
        }
        for q in self.queues:
            q.put(job)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(timeout=self.timeout)  # broken: a container failed; _collect raises it
        before, server_before = report.cpu_sample(), report.server_cpu_sample()
        done = self._collect("done")
        after, server_after = report.cpu_sample(), report.server_cpu_sample()
        count = sum(d["events"] for d in done)
        failed = sum(d["failed"] for d in done)
        if failed:
            raise RuntimeError(f"{kind}: {failed} of {count} events were not recorded")
        starts, ends = [d["start"] for d in done], [d["end"] for d in done]
        return {
            "events_per_s": throughput(count, starts, ends),
            "events": count,
            "wall_s": max(ends) - min(starts),
            "start_skew_ms": (max(starts) - min(starts)) * 1000,
            "client_cpu_ms_per_event": sum(d["cpu_s"] for d in done) * 1000 / count,
            "machine_cpu_busy": report.cpu_busy(before, after),
            "server_cpu_ms_per_event": (server_after - server_before) * 1000 / count,
        }

    def close(self) -> None:
        for q in self.queues:
            with contextlib.suppress(Exception):
                q.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
