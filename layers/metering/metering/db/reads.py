"""The read models' SQL: the usage log aggregated for the breakdown, the lifetime aggregates for
stats, and the current subscription (for the breakdown's default window). The summary reads the
same pair states as the check (`metering.db.ledger.pair_states`)."""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from metering.db.ledger import subscription_state
from metering.db.sql import Statement, first, rows
from metering.domain.periods import SubscriptionState

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from metering.catalog import UsageType

_CURRENT_SUBSCRIPTION = Statement("SELECT * FROM metering.current_subscriptions WHERE user_id = :user_id")


def current_subscription(conn: Connection, user_id: str) -> SubscriptionState | None:
    row = first(conn, _CURRENT_SUBSCRIPTION, {"user_id": user_id})
    return None if row is None else subscription_state(row)


# --- breakdown: one aggregate per usage type over the window, by the catalog's fields --------------------

_DETAILS_KEY = re.compile(r"[A-Za-z0-9_\-]+")  # the catalog's field rule (FIELD_PATTERN)


def _field_sql(field: str) -> tuple[str, str]:
    """(jsonb expression, text expression) of a catalog field in a usage_events row. The text form
    is what `->>` gives, as `domain.grouping.label_of` renders labels. Field names were checked
    against the catalog's pattern at load; they are checked again here because they become SQL."""
    if field == "reference_id":
        return "to_jsonb(reference_id)", "reference_id"
    key = field.removeprefix("details.")
    if not field.startswith("details.") or not _DETAILS_KEY.fullmatch(key):
        raise ValueError(f"not a catalog field: {field!r}")
    return f"(details -> '{key}')", f"(details ->> '{key}')"


def _literal(field: str) -> str:
    _field_sql(field)  # the same check: only catalog field names become SQL literals
    return f"'{field}'"


def _usage_type_select(index: int, kind: UsageType) -> str:
    spec = kind.breakdown
    keys = ", ".join(_field_sql(f)[0] for f in spec.group_by)
    if spec.label is None:
        label = "CAST(NULL AS text)"
    else:
        label_text = f"nullif({_field_sql(spec.label)[1]}, '')"  # an empty label is no label
        label = (
            f"(array_agg({label_text} ORDER BY recorded_at DESC, event_id DESC)"
            f" FILTER (WHERE {label_text} IS NOT NULL))[1]"
        )
    distinct = ", ".join(
        f"{_literal(f)}, count(DISTINCT nullif({_field_sql(f)[0]}, 'null'::jsonb))" for f in spec.distinct
    )
    measures = ", ".join(
        f"{_literal(f)}, coalesce(sum(CAST({_field_sql(f)[1]} AS numeric))"
        f" FILTER (WHERE jsonb_typeof({_field_sql(f)[0]}) = 'number'), 0)"
        for f in spec.measures
    )
    return f"""
    SELECT CAST(:t{index} AS text) AS usage_type, jsonb_build_array({keys}) AS key,
           sum(amount) AS total, count(*) AS events, {label} AS label,
           jsonb_build_object({distinct}) AS distinct_counts, jsonb_build_object({measures}) AS measures
    FROM usage_events
    WHERE user_id = :user_id AND usage_type = :t{index} AND recorded_at >= :start AND recorded_at < :end
    GROUP BY 2"""


@lru_cache(maxsize=32)
def breakdown_statement(kinds: tuple[UsageType, ...]) -> Statement:
    """The breakdown of these usage types: a UNION ALL of one aggregate per usage type, each a range
    scan of the index (user_id, usage_type, recorded_at). Its parameters: :user_id, :start, :end,
    and :t0, :t1, ... (the usage types, `breakdown_params`). Made once per catalog's set of types."""
    parts = [_usage_type_select(i, kind) for i, kind in enumerate(kinds)]
    return Statement("\n    UNION ALL".join(parts) + "\n    ORDER BY usage_type, total DESC, key")


def breakdown_params(
    kinds: tuple[UsageType, ...], user_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    return {"user_id": user_id, "start": start, "end": end, **{f"t{i}": k.id for i, k in enumerate(kinds)}}


def breakdown(
    conn: Connection, kinds: tuple[UsageType, ...], user_id: str, start: datetime, end: datetime
) -> list[Any]:
    """Rows (usage_type, key, total, events, label, distinct_counts, measures), largest total first."""
    return rows(conn, breakdown_statement(kinds), breakdown_params(kinds, user_id, start, end))


# --- stats: the maintained lifetime aggregates ------------------------------------------------------------

_STATS = Statement(
    """
    SELECT usage_type, key, label, total, events, measures
    FROM lifetime_stats
    WHERE user_id = :user_id
    ORDER BY usage_type, total DESC, key
    """
)


def lifetime_stats(conn: Connection, user_id: str) -> list[Any]:
    return rows(conn, _STATS, {"user_id": user_id})


# --- ledger history: the journal of a user, each pair's rows by their position ----------------------------

_LEDGER = Statement(
    """
    SELECT j.entry_id, j.created_at, j.usage_type, j.account, j.delta, j.balance_after, j.reason, j.ref,
           j.seq
    FROM balances b
    LEFT JOIN unnest(CAST(:types AS text[]), CAST(:before AS bigint[])) AS c (usage_type, before)
        ON c.usage_type = b.usage_type
    CROSS JOIN LATERAL (
        SELECT * FROM journal x
        WHERE x.user_id = b.user_id AND x.usage_type = b.usage_type
          AND x.seq < coalesce(c.before, b.seq + 1)
        ORDER BY x.seq DESC LIMIT :limit
    ) j
    WHERE b.user_id = :user_id
      AND (CAST(:usage_type AS text) IS NULL OR b.usage_type = :usage_type)
      AND (NOT :paged OR c.usage_type IS NOT NULL)
    """
)


def ledger_rows(
    conn: Connection, user_id: str, usage_type: str | None, before: dict[str, int] | None, limit: int
) -> list[Any]:
    """Up to `limit` journal rows of each of the user's (usage type) pairs, newest position first,
    below each pair's position in `before` (a cursor; None: from the newest). With a cursor, only
    its pairs: a pair that appeared since holds only rows newer than the first page."""
    return rows(
        conn,
        _LEDGER,
        {
            "user_id": user_id,
            "usage_type": usage_type,
            "types": list(before or ()),
            "before": list((before or {}).values()),
            "paged": before is not None,
            "limit": limit,
        },
    )
