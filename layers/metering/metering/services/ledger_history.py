"""Ledger history (api.md section 7): a user's journal, newest first, paged by an opaque cursor.

Each (user, usage type) pair numbers its journal rows in the order their transactions held the
pair's lock (`journal.seq`, migration 0005), so a row that commits later always has a higher
number than every row visible before it. The cursor holds, per pair, the number below which the
next page continues: rows written after the first page sit above every position and never show
up in later pages, and no row is skipped or repeated. A page merges the pairs' rows, each pair
in its own order, taking next the pair whose next row is the most recent.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from typing import Any

from metering.api.read_models import LedgerEntryOut, LedgerResponse
from metering.db import reads
from metering.db.engine import run_read
from metering.errors import BadInput
from metering.services.context import meter

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
CURSOR_VERSION = 1


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value.strip())
    except ValueError:
        raise BadInput(f"limit: must be a whole number from 1 to {MAX_LIMIT} (got {value[:20]!r})") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadInput(f"limit: must be from 1 to {MAX_LIMIT} (got {limit})")
    return limit


def encode_cursor(usage_type: str | None, before: dict[str, int]) -> str:
    raw = json.dumps({"v": CURSOR_VERSION, "t": usage_type, "p": before}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, usage_type: str | None) -> dict[str, int]:
    bad = BadInput("cursor: not a cursor this service returned (pass next_cursor as it was given)")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION or not isinstance(data.get("p"), dict):
        raise bad
    positions = data["p"]
    if not all(isinstance(k, str) and type(v) is int and v >= 1 for k, v in positions.items()):
        raise bad
    if data.get("t") != usage_type:
        raise BadInput("cursor: was returned for another usage_type filter; keep the same usage_type")
    return positions


def ledger(
    user_id: str, *, usage_type: str | None = None, limit: str | None = None, cursor: str | None = None
) -> LedgerResponse:
    size = parse_limit(limit)
    if usage_type is not None:
        meter(usage_type)  # 400 unknown_usage_type
    before = decode_cursor(cursor, usage_type) if cursor is not None else None
    found = run_read(lambda conn: reads.ledger_rows(conn, user_id, usage_type, before, size))
    page, positions = _merge(found, size)
    if before is not None:
        positions = {**before, **positions}
    exhausted = len(page) < size or all(p == 1 for p in positions.values())
    return LedgerResponse(
        entries=[_entry(row) for row in page],
        next_cursor=None if exhausted else encode_cursor(usage_type, positions),
    )


def _merge(found: list[Any], size: int) -> tuple[list[Any], dict[str, int]]:
    """The `size` most recent rows, each pair's rows in their own (descending) order, and the
    position each pair continues from."""
    streams: dict[str, list[Any]] = {}
    for row in sorted(found, key=lambda r: r.seq, reverse=True):
        streams.setdefault(row.usage_type, []).append(row)
    heads = [(-s[0].created_at.timestamp(), name, 0) for name, s in streams.items()]
    heapq.heapify(heads)
    page: list[Any] = []
    positions = {name: s[0].seq + 1 for name, s in streams.items()}  # a pair not taken from yet
    while heads and len(page) < size:
        _, name, i = heapq.heappop(heads)
        row = streams[name][i]
        page.append(row)
        positions[name] = row.seq
        if i + 1 < len(streams[name]):
            heapq.heappush(heads, (-streams[name][i + 1].created_at.timestamp(), name, i + 1))
    return page, positions


def _entry(row: Any) -> LedgerEntryOut:
    return LedgerEntryOut(
        id=str(row.entry_id),
        at=row.created_at,
        usage_type=row.usage_type,
        pool=row.account,
        delta=row.delta,
        balance_after=row.balance_after,
        reason=row.reason,
        ref=row.ref,
    )
