"""Soak (issue 7, "Load"): several thousand mixed operations from several warm containers at once,
with redeliveries across containers and a share of bad inputs, must end with the exact balances
computed from the workload, one log row per distinct event id, `reconcile` clean, and no 500.

The workload is generated from a fixed seed. Final balances are only order-independent when usage
beyond the allowance never races an adjustment (where a unit comes from, rollover or purchased,
then depends on which came first), so the users are in two groups:
- "granted" users (plan plus) get adjustments and expiring grants during the soak, and their
  usage (a share of it with `occurred_at`, late events of the current period) stays within the
  allowance: pools change by the adjustments alone, and every grant keeps all its credit;
- "overflow" users (basic or free) have their pools set before the soak and none during it; their
  usage runs through allowance, rollover, purchased and into debt.
Negative purchased adjustments are used only where they are always refused (a user who never has
purchased credit), so no adjustment is refused or not depending on order.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import api
from tests.support.containers import run_containers
from tests.support.lambda_events import call, http_event
from tests.support.state import assert_reconciled, iso, query, subscribe, use_test_catalog

pytestmark = pytest.mark.xdist_group("reliability")

SEED = 20261124
NOW = datetime.now(UTC)
CONTAINERS = 4
OPS_PER_CONTAINER = 1000
TIME_LIMIT_S = 150

PV, OCR, KOKORO = "premium_voice", "ocr_tokens", "server_kokoro"
LIMITS = {  # tests/fixtures/catalog.yaml; None = unlimited
    "plus": {PV: 20000, OCR: None, KOKORO: None},
    "basic": {PV: 5000, OCR: 100000, KOKORO: None},
    "free": {PV: 0, OCR: 100, KOKORO: 1000},
}
POOLED = {PV, OCR}
GRANTED = {"a0": "plus", "a1": "plus", "a2": "plus"}
OVERFLOW = {"b0": "basic", "b1": "basic", "f0": "free", "f1": "free"}
NO_CREDIT = "n0"  # never has purchased credit: a negative purchased adjustment is always refused
PLANS = {**GRANTED, **OVERFLOW, NO_CREDIT: "free"}


# --- the workload ----------------------------------------------------------------------------------------


def record_event(body: dict[str, Any]) -> dict[str, Any]:
    return http_event("POST", "/v1/usage", body)


def adjust_event(user: str, body: dict[str, Any]) -> dict[str, Any]:
    return http_event(
        "POST",
        f"/v1/users/{user}/adjustments",
        body,
        route="/v1/users/{user_id}/adjustments",
        path_parameters={"user_id": user},
    )


def grant_event(user: str, body: dict[str, Any]) -> dict[str, Any]:
    return http_event(
        "POST",
        f"/v1/users/{user}/grants",
        body,
        route="/v1/users/{user_id}/grants",
        path_parameters={"user_id": user},
    )


def check_event(body: dict[str, Any]) -> dict[str, Any]:
    return http_event("POST", "/v1/check", body)


def release_event(user: str, reservation_id: str) -> dict[str, Any]:
    return http_event(
        "DELETE",
        f"/v1/users/{user}/reservations/{reservation_id}",
        route="/v1/users/{user_id}/reservations/{reservation_id}",
        path_parameters={"user_id": user, "reservation_id": reservation_id},
    )


@dataclass
class Op:
    """One or more invocations run in a row by one container, and what each must answer."""

    steps: list[tuple[str, dict[str, Any]]]
    expect: tuple[Any, ...]


@dataclass
class Workload:
    pre_events: list[dict[str, Any]] = field(default_factory=list)  # recorded before the soak
    pre_adjustments: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # every valid soak event by id
    adjustments: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # id -> (user, body)
    grants: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # id -> (user, body)
    per_container: list[list[Op]] = field(default_factory=lambda: [[] for _ in range(CONTAINERS)])


def _bad_records(
    rng: random.Random, pre: list[dict[str, Any]]
) -> list[tuple[dict[str, Any] | str, int, str]]:
    """(request body or raw text, status, code) of record requests that are always refused."""
    ok = {"event_id": f"bad-{rng.randrange(10**9)}", "user_id": "a0", "usage_type": PV, "amount": 5}
    conflict = rng.choice(pre)
    return [
        ({k: v for k, v in ok.items() if k != "amount"}, 400, "validation_error"),
        ({**ok, "amount": -rng.randint(1, 1000)}, 400, "validation_error"),
        ({**ok, "amount": 0}, 400, "validation_error"),
        ({**ok, "amount": "12"}, 400, "validation_error"),
        ({**ok, "amount": 1.5}, 400, "validation_error"),
        ({**ok, "amount": 2**63}, 400, "validation_error"),
        ({**ok, "usage_type": "no_such_type"}, 400, "unknown_usage_type"),
        ({**ok, "details": {"blob": "x" * 9000}}, 413, "payload_too_large"),
        ({**ok, "ammount": 5}, 400, "validation_error"),
        ({**ok, "event_id": ""}, 400, "validation_error"),
        ({**ok, "user_id": "u" * 256}, 400, "validation_error"),
        ({**conflict, "amount": conflict["amount"] + 1}, 409, "event_id_conflict"),
        ('{"event_id": "x", "user_id": ', 400, "validation_error"),
    ]


def generate() -> Workload:
    rng = random.Random(SEED)
    w = Workload()

    # before the soak: overflow users' pools, the events and adjustments that conflicts will target
    for user in OVERFLOW:
        for usage_type in POOLED:
            for pool in ("rollover", "purchased"):
                delta = rng.randint(0, 3000)
                if delta:
                    w.pre_adjustments.append(
                        (
                            user,
                            {
                                "adjustment_id": f"pre-{user}-{usage_type}-{pool}",
                                "usage_type": usage_type,
                                "pool": pool,
                                "delta": delta,
                                "reason": "soak set-up",
                            },
                        )
                    )
    for user in PLANS:
        w.pre_events.append(
            {"event_id": f"pre-{user}", "user_id": user, "usage_type": KOKORO, "amount": rng.randint(1, 50)}
        )
    for user in GRANTED:
        w.pre_adjustments.append(
            (
                user,
                {
                    "adjustment_id": f"pre-adj-{user}",
                    "usage_type": PV,
                    "pool": "rollover",
                    "delta": 7,
                    "reason": "soak set-up",
                },
            )
        )

    # valid events, each delivered 1-3 times by different containers
    deliveries: list[tuple[int, str]] = []  # (container, event id)
    pv_budget = dict.fromkeys(GRANTED, LIMITS["plus"][PV])
    for i in range(1700):
        user = rng.choice([*GRANTED, *OVERFLOW])
        usage_type = rng.choice([PV, PV, OCR, KOKORO])
        if user in GRANTED and usage_type == PV:
            amount = rng.randint(1, 40)
            if amount > pv_budget[user]:
                continue
            pv_budget[user] -= amount  # granted users never go beyond their allowance
        else:
            amount = rng.randint(1, {PV: 220, OCR: 60, KOKORO: 400}[usage_type])
        body: dict[str, Any] = {
            "event_id": f"ev-{i}",
            "user_id": user,
            "usage_type": usage_type,
            "amount": amount,
        }
        if rng.random() < 0.3:
            body["reference_id"] = f"doc-{rng.randint(1, 20)}"
            body["details"] = {
                "voice_slug": rng.choice(["heart", "echo"]),
                "model_slug": "m1",
                "duration_ms": rng.randint(1, 9000),
                "page_idx": rng.randint(1, 30),
            }
        if user in GRANTED and rng.random() < 0.3:  # a late event of the current period
            body["occurred_at"] = iso(NOW - timedelta(seconds=rng.randint(0, 3600)))
        w.events[body["event_id"]] = body
        copies = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
        for container in rng.sample(range(CONTAINERS), copies):
            deliveries.append((container, body["event_id"]))

    # adjustments of granted users, 1-3 deliveries each
    adj_deliveries: list[tuple[int, str]] = []
    for i in range(120):
        user = rng.choice(list(GRANTED))
        pool = rng.choice(["rollover", "purchased"])
        delta = rng.randint(1, 500) if pool == "purchased" else rng.choice([-1, 1]) * rng.randint(1, 400)
        adj_id = f"adj-{i}"
        w.adjustments[adj_id] = (
            user,
            {
                "adjustment_id": adj_id,
                "usage_type": rng.choice([PV, OCR]),
                "pool": pool,
                "delta": delta,
                "reason": "soak grant",
            },
        )
        for container in rng.sample(range(CONTAINERS), rng.choices([1, 2, 3], weights=[5, 3, 2])[0]):
            adj_deliveries.append((container, adj_id))

    # expiring grants of granted users (whose usage stays within the allowance: never drawn)
    grant_deliveries: list[tuple[int, str]] = []
    for i in range(60):
        user = rng.choice(list(GRANTED))
        grant_id = f"grant-{i}"
        expires = NOW + timedelta(days=rng.randint(1, 60), seconds=i)
        body = {
            "grant_id": grant_id,
            "usage_type": rng.choice([PV, OCR]),
            "amount": rng.randint(1, 500),
            "expires_at": iso(expires),
            "reason": "soak promotion",
        }
        w.grants[grant_id] = (user, body)
        for container in rng.sample(range(CONTAINERS), rng.choices([1, 2, 3], weights=[5, 3, 2])[0]):
            grant_deliveries.append((container, grant_id))

    ops = w.per_container
    rng.shuffle(deliveries)
    batch_pool: list[list[str]] = [[] for _ in range(CONTAINERS)]
    for container, event_id in deliveries:
        if rng.random() < 0.25:  # a quarter of the deliveries go through the batch route
            batch_pool[container].append(event_id)
        else:
            ops[container].append(Op([("record", record_event(w.events[event_id]))], ("record", event_id)))
    for container in range(CONTAINERS):
        pool = batch_pool[container]
        while pool:
            size = rng.randint(3, 15)
            chosen, pool[:] = pool[:size], pool[size:]
            items: list[Any] = []
            expect: list[tuple[str, str]] = []
            for event_id in chosen:
                items.append(w.events[event_id])
                expect.append(("valid", event_id))
                if rng.random() < 0.2:  # the same event twice in one batch
                    items.append(w.events[event_id])
                    expect.append(("valid", event_id))
            for _ in range(rng.randint(0, 2)):
                body, _, code = rng.choice(
                    [b for b in _bad_records(rng, w.pre_events) if isinstance(b[0], dict)]
                )
                items.append(body)
                expect.append(("bad", code))
            order = list(range(len(items)))
            rng.shuffle(order)
            ops[container].append(
                Op(
                    [
                        (
                            "record",
                            http_event("POST", "/v1/usage/batch", {"events": [items[k] for k in order]}),
                        )
                    ],
                    ("batch", [expect[k] for k in order]),
                )
            )
    for container, adj_id in adj_deliveries:
        user, body = w.adjustments[adj_id]
        ops[container].append(Op([("record", adjust_event(user, body))], ("adjust", adj_id)))
    for container, grant_id in grant_deliveries:
        user, body = w.grants[grant_id]
        ops[container].append(Op([("record", grant_event(user, body))], ("grant", grant_id)))

    # checks, reservations (released, or settled by a record), bad inputs
    serial = 0
    for container in range(CONTAINERS):
        while len(ops[container]) < OPS_PER_CONTAINER:
            serial += 1
            roll = rng.random()
            user = rng.choice([*GRANTED, *OVERFLOW])
            usage_type = rng.choice([PV, OCR, KOKORO])
            amount = rng.randint(0, 3000)
            if roll < 0.35:
                ops[container].append(
                    Op(
                        [
                            (
                                "check",
                                check_event({"user_id": user, "usage_type": usage_type, "amount": amount}),
                            )
                        ],
                        ("check",),
                    )
                )
            elif roll < 0.55:
                rid = f"hold-{serial}"
                settle = rng.random() < 0.5
                if settle and user in GRANTED and usage_type == PV:
                    usage_type = KOKORO  # granted users' premium voice stays within the allowance
                check = check_event(
                    {
                        "user_id": user,
                        "usage_type": usage_type,
                        "amount": amount,
                        "reservation": {"id": rid, "ttl_seconds": 300},
                    }
                )
                if settle:
                    body = {
                        "event_id": f"held-{serial}",
                        "user_id": user,
                        "usage_type": usage_type,
                        "amount": rng.randint(1, 200),
                        "reservation_id": rid,
                    }
                    w.events[body["event_id"]] = body
                    ops[container].append(
                        Op([("check", check), ("record", record_event(body))], ("settle", body["event_id"]))
                    )
                else:
                    ops[container].append(
                        Op([("check", check), ("check", release_event(user, rid))], ("release",))
                    )
            elif roll < 0.8:
                body, status, code = rng.choice(_bad_records(rng, w.pre_events))
                event = (
                    record_event(body)
                    if isinstance(body, dict)
                    else http_event("POST", "/v1/usage", raw_body=body)
                )
                ops[container].append(Op([("record", event)], ("bad", status, code)))
            else:
                ops[container].append(rng.choice(_bad_others(rng, w)))
        rng.shuffle(ops[container])
    return w


def _bad_others(rng: random.Random, w: Workload) -> list[Op]:
    adj = {
        "adjustment_id": f"bad-adj-{rng.randrange(10**9)}",
        "usage_type": PV,
        "pool": "purchased",
        "delta": 5,
        "reason": "x",
    }
    pre_user, pre_adj = next(
        (u, b) for u, b in w.pre_adjustments if b["adjustment_id"].startswith("pre-adj-")
    )
    return [
        Op(
            [("check", check_event({"user_id": "a0", "usage_type": "nope", "amount": 1}))],
            ("bad", 400, "unknown_usage_type"),
        ),
        Op(
            [("check", check_event({"user_id": "a0", "usage_type": PV, "amount": -1}))],
            ("bad", 400, "validation_error"),
        ),
        Op(
            [
                (
                    "check",
                    check_event(
                        {
                            "user_id": "a0",
                            "usage_type": PV,
                            "amount": 1,
                            "reservation": {"id": "r", "ttl_seconds": 0},
                        }
                    ),
                )
            ],
            ("bad", 400, "validation_error"),
        ),
        Op([("record", adjust_event("a0", {**adj, "pool": "gold"}))], ("bad", 400, "validation_error")),
        Op([("record", adjust_event("a0", {**adj, "delta": 0}))], ("bad", 400, "validation_error")),
        Op(
            [("record", adjust_event("a0", {**adj, "usage_type": KOKORO}))],
            ("bad", 400, "pools_not_supported"),
        ),
        Op(
            [("record", adjust_event("a0", {**adj, "usage_type": "nope"}))],
            ("bad", 400, "unknown_usage_type"),
        ),
        Op(
            [("record", adjust_event(NO_CREDIT, {**adj, "delta": -rng.randint(1, 50)}))],
            ("bad", 409, "insufficient_balance"),
        ),
        Op(
            [("record", adjust_event(pre_user, {**pre_adj, "delta": pre_adj["delta"] + 1}))],
            ("bad", 409, "adjustment_id_conflict"),
        ),
    ]


def run_ops(ops: list[Op]) -> tuple[list[list[tuple[int, Any]]], float]:
    """In a warm container: every op's invocations in order; (status, body) of each, and the time."""
    started = time.monotonic()
    results = [[call(handler, event) for handler, event in op.steps] for op in ops]
    return results, time.monotonic() - started


# --- the expected end state ------------------------------------------------------------------------------


def expected_balances(w: Workload) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(user, usage type) -> (used, rollover, purchased), by the waterfall over each pair's totals."""
    usage: Counter[tuple[str, str]] = Counter()
    for e in [*w.pre_events, *w.events.values()]:
        usage[(e["user_id"], e["usage_type"])] += e["amount"]
    pools: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for user, body in [*w.pre_adjustments, *w.adjustments.values()]:
        pools[(user, body["usage_type"])][0 if body["pool"] == "rollover" else 1] += body["delta"]

    expected = {}
    for key in set(usage) | set(pools):
        user, usage_type = key
        total, (rollover, purchased) = usage[key], pools[key]
        limit = LIMITS[PLANS[user]][usage_type]
        if usage_type not in POOLED or limit is None:
            expected[key] = (total, rollover, purchased)
            continue
        used = min(limit, total)
        beyond = total - used
        if user in GRANTED:
            assert beyond == 0, "the generator keeps granted users within their allowance"
        from_rollover = min(beyond, max(0, rollover))
        from_purchased = min(beyond - from_rollover, purchased)
        debt = beyond - from_rollover - from_purchased
        expected[key] = (used, rollover - from_rollover - debt, purchased - from_purchased)
    return expected


# --- the test ------------------------------------------------------------------------------------------


def test_soak_of_mixed_operations_from_several_containers_ends_exact_and_reconciled(clean):
    use_test_catalog()
    w = generate()
    for user, plan in PLANS.items():
        if plan != "free":
            subscribe(user, plan)
    for user, body in w.pre_adjustments:
        assert (
            api.adjust(
                user, body["adjustment_id"], body["usage_type"], body["pool"], body["delta"], body["reason"]
            )[0]
            == 201
        )
    for e in w.pre_events:
        assert api.record(e["event_id"], e["user_id"], e["usage_type"], e["amount"])[0] == 201

    started = time.monotonic()
    outcome = run_containers(run_ops, [(ops,) for ops in w.per_container], timeout=TIME_LIMIT_S)
    wall = time.monotonic() - started

    invocations = 0
    status_counts: Counter[int] = Counter()
    applied: Counter[str] = Counter()
    breakdowns: dict[str, list[dict[str, int]]] = defaultdict(list)
    adjusted: Counter[str] = Counter()
    granted: Counter[str] = Counter()
    problems: list[str] = []

    def expect(condition: bool, what: str) -> None:
        if not condition and len(problems) < 30:
            problems.append(what)

    for ops, (results, _) in zip(w.per_container, outcome, strict=True):
        for op, answers in zip(ops, results, strict=True):
            invocations += len(answers)
            for status, _ in answers:
                status_counts[status] += 1
            kind = op.expect[0]
            status, body = answers[0]
            where = f"{op.expect!r}: {status} {body}"
            if kind == "record":
                expect(status in (200, 201), where)
                if status in (200, 201):
                    expect(body["duplicate"] is (status == 200), where)
                    applied[op.expect[1]] += status == 201
                    breakdowns[op.expect[1]].append(body["breakdown"])
            elif kind == "batch":
                expect(status == 200, where)
                for item, result in zip(op.expect[1], body["results"] if status == 200 else [], strict=True):
                    if item[0] == "valid":
                        expect(
                            result["event_id"] == item[1] and result["status"] in ("recorded", "duplicate"),
                            f"{item}: {result}",
                        )
                        applied[item[1]] += result["status"] == "recorded"
                        breakdowns[item[1]].append(result["breakdown"])
                    else:
                        expect(
                            result["status"] == "rejected" and result["error"]["code"] == item[1],
                            f"{item}: {result}",
                        )
            elif kind == "adjust":
                expect(status in (200, 201), where)
                adjusted[op.expect[1]] += status == 201
            elif kind == "grant":
                expect(status in (200, 201), where)
                granted[op.expect[1]] += status == 201
            elif kind == "bad":
                expect((status, body["error"]["code"]) == op.expect[1:], where)
            else:  # a check, alone or followed by a release or a record that settles its hold
                expect(status == 200 and body["reservations_counted"] is True, where)
                if status == 200:
                    fits = body["available"] is None or body["requested"] <= body["available"]
                    expect(body["allowed"] is fits, where)
                    held = body["reservation"] is not None
                    if kind in ("release", "settle"):
                        expect(held is body["allowed"], where)
                if kind == "release" and status == 200:
                    expect(
                        answers[1] == ((204, None) if held else (404, answers[1][1])),
                        f"release after {where}: {answers[1]}",
                    )
                    if not held:
                        expect(answers[1][1]["error"]["code"] == "not_found", f"{answers[1]}")
                if kind == "settle":
                    expect(answers[1][0] == 201, f"settling record: {answers[1]}")
                    applied[op.expect[1]] += answers[1][0] == 201

    assert not problems, "\n".join(problems)
    assert not [s for s in status_counts if s >= 500], f"5xx answers: {status_counts}"
    # each valid event applied exactly once, every redelivery answered with the original breakdown
    assert applied == Counter(dict.fromkeys(w.events, 1)), "events not applied exactly once"
    assert all(len({json.dumps(b, sort_keys=True) for b in bs}) == 1 for bs in breakdowns.values())
    assert adjusted == Counter(dict.fromkeys(w.adjustments, 1)), "adjustments not applied exactly once"
    assert granted == Counter(dict.fromkeys(w.grants, 1)), "grants not applied exactly once"
    assert {r.grant_id: (r.amount, r.remaining) for r in query("SELECT * FROM grants")} == {
        grant_id: (body["amount"], body["amount"]) for grant_id, (_, body) in w.grants.items()
    }

    # the database: one row per distinct event, the exact balances, a clean journal
    assert query("SELECT count(*) FROM usage_events")[0][0] == len(w.events) + len(w.pre_events)
    expected = expected_balances(w)
    used = {
        (r.user_id, r.usage_type): r.used
        for r in query(
            "SELECT p.user_id, u.usage_type, sum(u.used) AS used FROM period_usage u JOIN periods p USING (period_id) "
            "GROUP BY 1, 2"
        )
    }
    balances = {
        (r.user_id, r.usage_type): (r.rollover, r.purchased)
        for r in query("SELECT user_id, usage_type, rollover, purchased FROM balances")
    }
    actual = {key: (used.get(key, 0), *balances.get(key, (0, 0))) for key in expected}
    assert actual == expected
    assert set(balances) <= set(expected)
    totals = {
        (r.user_id, r.usage_type): (r.total, r.events)
        for r in query(
            "SELECT user_id, usage_type, sum(total) AS total, sum(events) AS events FROM lifetime_stats GROUP BY 1, 2"
        )
    }
    by_pair: Counter[tuple[str, str]] = Counter()
    counts: Counter[tuple[str, str]] = Counter()
    for e in [*w.pre_events, *w.events.values()]:
        by_pair[(e["user_id"], e["usage_type"])] += e["amount"]
        counts[(e["user_id"], e["usage_type"])] += 1
    assert totals == {k: (by_pair[k], counts[k]) for k in by_pair}
    assert_reconciled()

    durations = [seconds for _, seconds in outcome]
    print(
        f"\nsoak: {invocations} invocations from {CONTAINERS} containers ({len(w.events)} distinct events, "
        f"{sum(len(o) for o in w.per_container)} ops), statuses {dict(sorted(status_counts.items()))}, "
        f"wall {wall:.1f} s, per container {', '.join(f'{d:.1f}' for d in durations)} s"
    )
    assert wall < TIME_LIMIT_S
