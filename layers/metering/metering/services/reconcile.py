"""`metering reconcile [--user ID]`: verify the journal invariants of metering.md.

1. every balance (rollover, purchased) equals the sum of its journal entries;
2. every period counter equals the sum of its journal entries, and the sum of the
   `from_subscription` parts of the usage logged in that period.
Each check is a full outer join, so a journal without its balance row (or the reverse) is drift too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from sqlalchemy import text

from metering.db.engine import run_read

_BALANCES_SQL = text(
    """
    WITH j AS (
        SELECT user_id, usage_type,
               sum(delta) FILTER (WHERE account = 'rollover') AS rollover,
               sum(delta) FILTER (WHERE account = 'purchased') AS purchased
        FROM journal
        WHERE account IN ('rollover', 'purchased') AND (CAST(:u AS text) IS NULL OR user_id = :u)
        GROUP BY user_id, usage_type
    )
    SELECT coalesce(b.user_id, j.user_id) AS user_id,
           coalesce(b.usage_type, j.usage_type) AS usage_type,
           coalesce(b.rollover, 0) AS rollover, coalesce(j.rollover, 0) AS journal_rollover,
           coalesce(b.purchased, 0) AS purchased, coalesce(j.purchased, 0) AS journal_purchased
    FROM (SELECT * FROM balances WHERE CAST(:u AS text) IS NULL OR user_id = :u) b
    FULL JOIN j ON j.user_id = b.user_id AND j.usage_type = b.usage_type
    WHERE coalesce(b.rollover, 0) <> coalesce(j.rollover, 0)
       OR coalesce(b.purchased, 0) <> coalesce(j.purchased, 0)
    ORDER BY 1, 2
    """
)

_COUNTERS_SQL = text(
    """
    WITH scope AS (
        SELECT period_id, user_id, period_start FROM periods
        WHERE CAST(:u AS text) IS NULL OR user_id = :u
    ), c AS (
        SELECT pu.period_id, pu.usage_type, pu.used FROM period_usage pu JOIN scope USING (period_id)
    ), j AS (
        SELECT period_id, usage_type, sum(delta) AS used FROM journal JOIN scope USING (period_id)
        WHERE account = 'used' GROUP BY period_id, usage_type
    ), e AS (
        SELECT period_id, usage_type, sum(from_subscription) AS used
        FROM usage_events JOIN scope USING (period_id) GROUP BY period_id, usage_type
    ), k AS (
        SELECT period_id, usage_type FROM c UNION SELECT period_id, usage_type FROM j
        UNION SELECT period_id, usage_type FROM e
    )
    SELECT s.user_id, s.period_start, k.usage_type,
           coalesce(c.used, 0) AS used, coalesce(j.used, 0) AS journal_used,
           coalesce(e.used, 0) AS events_used
    FROM k JOIN scope s USING (period_id)
    LEFT JOIN c USING (period_id, usage_type)
    LEFT JOIN j USING (period_id, usage_type)
    LEFT JOIN e USING (period_id, usage_type)
    WHERE coalesce(c.used, 0) <> coalesce(j.used, 0) OR coalesce(c.used, 0) <> coalesce(e.used, 0)
    ORDER BY 1, 2, 3
    """
)


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
    balances, counters = run_read(
        lambda conn: (
            conn.execute(_BALANCES_SQL, {"u": user_id}).all(),
            conn.execute(_COUNTERS_SQL, {"u": user_id}).all(),
        )
    )
    drifts: list[Drift] = []
    for r in balances:
        for pool in ("rollover", "purchased"):
            stored, journal = getattr(r, pool), getattr(r, f"journal_{pool}")
            if stored != journal:
                drifts.append(Drift(r.user_id, r.usage_type, pool, stored, {"journal sum": journal}))
    for r in counters:
        drifts.append(
            Drift(
                r.user_id,
                r.usage_type,
                f"used in period {r.period_start.isoformat()}",
                r.used,
                {"journal sum": r.journal_used, "from_subscription sum": r.events_used},
            )
        )
    return Report(user_id, drifts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="check one user only")


def run(args: argparse.Namespace) -> int:
    report = reconcile(args.user)
    print(report)
    return 0 if report.clean else 1
