"""Reservations in Redis: check-and-reserve is one atomic Lua script.

All of a user's live reservations sit in one hash (`reservation id -> usage type, amount, expiry`),
because a release names only the user and the reservation id. The script drops expired entries,
sums the other live holds of the usage type, compares the request with what the database said is
available, and only then writes the hold: two concurrent checks can never both be granted more
than was available between them. Expiry uses Redis' own clock, so containers' clocks don't matter.

Redis is an accelerator, never a dependency of correctness: when it is unreachable the check
answers from the database alone and says so (`reservations_counted: false`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from metering.config import get_settings
from metering.observability import Metric, count, logger

if TYPE_CHECKING:
    import redis

# A hold is stored as "usage_type|amount|expires_ms|settled_version". A record that names a hold
# does not delete it: after committing it marks the hold settled with the balances version that
# includes its usage and keeps it for SETTLED_KEEP_MS. A check passes the version its database read
# included: a settled hold still counts for a check whose read predates the record's commit, and no
# longer counts for one that already sees the usage. So no check ever counts the same units twice or
# not at all, however a record and a check interleave.
_PARSE_LUA = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Amounts are decimal strings added and compared digit by digit: Lua's numbers are doubles, exact
-- only to 2^53, and amounts go to 2^63 - 1 (api.md: 64-bit). Every string is a non-negative integer
-- without leading zeros (as Python's str(int) writes it).
local function add(a, b)
  local digits, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry + (i > 0 and a:byte(i) - 48 or 0) + (j > 0 and b:byte(j) - 48 or 0)
    table.insert(digits, 1, d % 10)
    carry, i, j = math.floor(d / 10), i - 1, j - 1
  end
  local sum = table.concat(digits):gsub('^0+', '')
  if sum == '' then return '0' end
  return sum
end
local function at_most(a, b)
  if #a ~= #b then return #a < #b end
  return a <= b
end
local function parse(value)
  local rtype, ramount, rexp, settled = string.match(value, '^(.*)|(%d+)|(%d+)|(%d*)$')
  return rtype, ramount, tonumber(rexp), tonumber(settled)
end
-- The one counting rule: an unsettled hold counts (unless it is the one being re-made); a settled
-- hold counts only for a database read that does not include its record yet.
local function counts(id, settled, rid, db_version)
  if settled == nil then return id ~= rid end
  return settled > db_version
end
"""

# KEYS[1]: the user's reservation hash.
# ARGV: usage_type, reservation_id ('' = none), amount, ttl_ms, available ('' = unlimited; '-' when
# debt exceeds the allowance), db_version, deadline_ms (the client has given up after it: a script
# that runs later, e.g. in a Redis that was paused, must not leave a hold nobody knows).
# Returns {allowed 0/1, reserved by others (a decimal string), expires_at_ms or 0}.
_CHECK_LUA = (
    _PARSE_LUA
    + """
local now = now_ms()
local usage_type, rid = ARGV[1], ARGV[2]
local amount, ttl, db_version = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
local entries = redis.call('HGETALL', KEYS[1])
local reserved, latest = '0', 0
for i = 1, #entries, 2 do
  local id = entries[i]
  local rtype, ramount, rexp, settled = parse(entries[i + 1])
  if rexp <= now then
    redis.call('HDEL', KEYS[1], id)
  else
    if rexp > latest then latest = rexp end
    if rtype == usage_type and counts(id, settled, rid, db_version) then reserved = add(reserved, ramount) end
  end
end
-- allowed iff amount <= max(0, available - reserved), exactly
local allowed = 1
if ARGV[5] ~= '' and amount ~= '0' then
  if ARGV[5] == '-' or not at_most(add(reserved, amount), ARGV[5]) then allowed = 0 end
end
local expires = 0
if allowed == 1 and rid ~= '' and now <= tonumber(ARGV[7]) then
  expires = now + ttl
  redis.call('HSET', KEYS[1], rid, usage_type .. '|' .. ARGV[3] .. '|' .. expires .. '|')
  if expires > latest then latest = expires end
end
if latest > 0 then redis.call('PEXPIREAT', KEYS[1], latest) end
return {allowed, reserved, expires}
"""
)

# KEYS[1]: the user's reservation hash; ARGV[1]: reservation id. Returns 1 if a live hold was removed.
_RELEASE_LUA = (
    _PARSE_LUA
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local _, _, rexp, settled = parse(value)
if settled ~= nil then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if rexp <= now_ms() then return 0 end
return 1
"""
)

# KEYS[1]: the user's reservation hash; ARGV: reservation id, balances version, keep_ms, usage type
# of the record.
_SETTLE_LUA = (
    _PARSE_LUA
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local rtype, ramount, rexp, settled = parse(value)
if settled ~= nil then return 0 end
local now = now_ms()
if rexp <= now or rtype ~= ARGV[4] then
  -- expired, or held for another usage type than the record's: nothing recorded can be counted
  -- twice against it, so it simply goes (and an expired hold is never revived)
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local keep = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], rtype .. '|' .. ramount .. '|' .. keep .. '|' .. ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIREAT', KEYS[1], keep) end
return 1
"""
)

# KEYS[1]: the user's reservation hash; ARGV: usage_type, db_version pairs (the versions one database
# read saw). Read-only. Returns {usage_type, reserved, ...} for the live holds that count.
_SUMS_LUA = (
    _PARSE_LUA
    + """
local now = now_ms()
local versions = {}
for i = 1, #ARGV, 2 do versions[ARGV[i]] = tonumber(ARGV[i + 1]) end
local sums = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local rtype, ramount, rexp, settled = parse(entries[i + 1])
  if rexp > now and counts(entries[i], settled, '', versions[rtype] or 0) then
    sums[rtype] = add(sums[rtype] or '0', ramount)
  end
end
local out = {}
for rtype, total in pairs(sums) do
  out[#out + 1] = rtype
  out[#out + 1] = total
end
return out
"""
)

SETTLED_KEEP_MS = 60_000
# A check script that reaches Redis later than the client's timeout plus this margin (Redis was
# paused, or a failover replayed it) writes no hold: the caller has long been told none was made.
# The margin is wide so that a busy machine's scheduling delays never cost a granted hold; a
# Redis that wakes within it may still place a hold nobody knows about, which only makes checks
# stricter until its TTL.
LATE_SCRIPT_MARGIN_S = 2.0  # far longer than any check takes between its database read and Redis


class ReservationsUnavailable(Exception):
    """Redis is not configured or not reachable."""


class Hold(NamedTuple):
    allowed: bool
    reserved: int
    expires_at: datetime | None


def key(user_id: str) -> str:
    # length-prefixed so that no user id can collide with another's key
    return f"metering:resv:{len(user_id)}:{user_id}"


@lru_cache(maxsize=1)
def _client() -> tuple[redis.Redis, Any, Any, Any, Any] | None:
    url = get_settings().redis_url
    if not url:
        return None
    import redis

    timeout = get_settings().redis_timeout_s
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30
    )
    return (
        client,
        client.register_script(_CHECK_LUA),
        client.register_script(_RELEASE_LUA),
        client.register_script(_SETTLE_LUA),
        client.register_script(_SUMS_LUA),
    )


def reset_client() -> None:
    """Close the cached client's pooled connections and forget it (tests; `metering.snapstart`)."""
    if _client.cache_info().currsize:
        cached = _client()
        if cached is not None:
            cached[0].close()
    _client.cache_clear()


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError, OSError)


def _run(script: int, user_id: str, *args: Any) -> Any:
    """Run one of the scripts on the user's hash: one Redis round trip (EVALSHA). Any Redis
    failure becomes ReservationsUnavailable and is counted."""
    client = _client()
    if client is None:
        raise ReservationsUnavailable("REDIS_URL is not set")
    run: Any = client[script]
    try:
        return run(keys=[key(user_id)], args=list(args))
    except _redis_errors() as error:
        count(Metric.RESERVATIONS_UNAVAILABLE)
        logger.warning("reservations unavailable", extra={"error": str(error)})
        raise ReservationsUnavailable(str(error)) from error


_CHECK, _RELEASE, _SETTLE, _SUMS = 1, 2, 3, 4


def check_and_hold(
    user_id: str,
    usage_type: str,
    *,
    amount: int,
    available: int | None,
    db_version: int,
    reservation_id: str | None,
    ttl_seconds: int,
) -> Hold:
    """Count the other live holds and, when `amount` fits, place (or replace) this one.

    `available` and `db_version` come from one read of the database (before holds)."""
    allowed, reserved, expires = _run(
        _CHECK,
        user_id,
        usage_type,
        reservation_id or "",
        str(amount),
        ttl_seconds * 1000,
        "" if available is None else str(available) if available >= 0 else "-",
        db_version,
        int((time.time() + get_settings().redis_timeout_s + LATE_SCRIPT_MARGIN_S) * 1000),
    )
    expires_at = datetime.fromtimestamp(int(expires) / 1000, tz=UTC) if int(expires) else None
    return Hold(allowed=bool(allowed), reserved=int(reserved), expires_at=expires_at)


def release(user_id: str, reservation_id: str) -> bool:
    """Remove a hold; True when it was live."""
    return bool(_run(_RELEASE, user_id, reservation_id))


def settle(user_id: str, reservation_id: str, usage_type: str, version: int) -> None:
    """After a record of `usage_type` committed: mark its hold settled by that usage type's
    balances `version` (see above); a hold of another usage type, or an expired one, is dropped.

    Best effort: a hold left unsettled only makes checks stricter until its TTL, and the usage
    itself is already safely recorded."""
    try:
        _run(_SETTLE, user_id, reservation_id, version, SETTLED_KEEP_MS, usage_type)
    except ReservationsUnavailable as error:
        logger.warning(
            "could not settle reservation", extra={"reservation_id": reservation_id, "error": str(error)}
        )


def reserved_by_type(user_id: str, db_versions: Mapping[str, int]) -> dict[str, int]:
    """The user's holds per usage type, counted as a check whose database read saw `db_versions`
    (usage type -> balances version, 0 without a row) counts them. One round trip, no writes."""
    flat = _run(_SUMS, user_id, *(x for pair in db_versions.items() for x in pair))
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
