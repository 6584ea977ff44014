"""`metering reconcile [--user ID]`: verify the journal invariants of metering.md.

1. every balance (rollover, purchased) equals the sum of its journal entries;
2. every period counter equals the sum of its journal entries, and the sum of the
   `from_subscription` parts of the usage logged in that period;
3. every grant's remaining equals the sum of its journal entries;
4. every journal row's `balance_after` is its pool's previous one plus its delta, and each pair's
   rows are numbered 1..n without a gap (the ledger history's positions).
Each check is a full outer join, so a journal without its balance row (or the reverse) is drift too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from metering.db import ledger
from metering.db.engine import run_read


@dataclass(frozen=True, slots=True)
class Drift:
    user_id: str
    usage_type: str
    what: str
    stored: int
    expected: dict[str, int]

    def __str__(self) -> str:
        sums = ", ".join(f"{name} {value}" for name, value in self.expected.items())
        return f"{self.user_id} / {self.usage_type} / {self.what}: stored {self.stored}, but {sums}"


@dataclass(frozen=True, slots=True)
class Report:
    user_id: str | None
    drifts: list[Drift] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.drifts

    def __str__(self) -> str:
        scope = f"user {self.user_id}" if self.user_id else "all users"
        if self.clean:
            return f"reconcile ({scope}): clean"
        lines = [f"reconcile ({scope}): {len(self.drifts)} drift(s)"]
        lines += [f"  {d}" for d in self.drifts]
        return "\n".join(lines)


def reconcile(user_id: str | None = None) -> Report:
    found = run_read(lambda conn: ledger.drifts(conn, user_id))
    drifts: list[Drift] = []
    for r in found.balances:
        for pool in ("rollover", "purchased"):
            stored, journal = getattr(r, pool), getattr(r, f"journal_{pool}")
            if stored != journal:
                drifts.append(Drift(r.user_id, r.usage_type, pool, stored, {"journal sum": journal}))
    for r in found.counters:
        drifts.append(
            Drift(
                r.user_id,
                r.usage_type,
                f"used in period {r.period_start.isoformat()}",
                r.used,
                {"journal sum": r.journal_used, "from_subscription sum": r.events_used},
            )
        )
    for r in found.grants:
        drifts.append(
            Drift(
                r.user_id,
                r.usage_type,
                f"grant {r.grant_id}",
                r.remaining,
                {"journal sum": r.journal_remaining},
            )
        )
    for r in found.history:
        drifts.append(Drift(r.user_id, r.usage_type, r.what, r.stored, {"expected": r.expected}))
    return Report(user_id, drifts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="check one user only")


def run(args: argparse.Namespace) -> int:
    report = reconcile(args.user)
    print(report)
    return 0 if report.clean else 1
