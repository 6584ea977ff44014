"""The waterfall, availability and rollover rules (metering.md: Check, Record, Periods and renewal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Breakdown(NamedTuple):
    from_subscription: int = 0
    from_rollover: int = 0
    from_purchased: int = 0
    overflow_to_debt: int = 0
    from_grants: int = 0
    drawn: tuple[tuple[str, int], ...] = ()  # (grant_id, amount) taken from each grant

    def as_dict(self) -> dict[str, int]:
        return {
            "from_subscription": self.from_subscription,
            "from_rollover": self.from_rollover,
            "from_grants": self.from_grants,
            "from_purchased": self.from_purchased,
            "overflow_to_debt": self.overflow_to_debt,
        }

    @property
    def total(self) -> int:
        return (
            self.from_subscription
            + self.from_rollover
            + self.from_grants
            + self.from_purchased
            + self.overflow_to_debt
        )


ZERO = Breakdown()


def remaining(limit: int | None, used: int) -> int | None:
    """Allowance left in the period; None when unlimited."""
    return None if limit is None else max(0, limit - used)


def available(
    *,
    limit: int | None,
    used: int,
    rollover: int,
    purchased: int,
    pools: bool,
    reserved: int,
    granted: int = 0,
) -> int | None:
    """What a check may grant: steps 1-5 of metering.md "Check", live grants counted beside the
    pools (api.md section 7). None = unlimited."""
    left = remaining(limit, used)
    if left is None:
        return None
    total = left + rollover + granted + purchased if pools else left
    return max(0, total - reserved)


def allowed(amount: int, avail: int | None) -> bool:
    return avail is None or amount <= avail


def waterfall(
    amount: int,
    *,
    limit: int | None,
    used: int,
    rollover: int,
    purchased: int,
    pools: bool,
    grants: Sequence[tuple[str, int]] = (),
) -> Breakdown:
    """Split a recorded amount: allowance -> positive rollover -> live grants (in the order given:
    soonest expiry first, so credit that would be lost is spent first) -> purchased -> debt.

    A plain counter takes everything from the period allowance: no limit is enforced on record.
    """
    if not pools:
        return Breakdown(from_subscription=amount)
    left = remaining(limit, used)
    from_subscription = amount if left is None else min(amount, left)
    rest = amount - from_subscription
    from_rollover = min(rest, max(0, rollover))
    rest -= from_rollover
    drawn = []
    for grant_id, credit in grants:
        if rest == 0:
            break
        take = min(rest, credit)
        if take > 0:
            drawn.append((grant_id, take))
            rest -= take
    from_grants = sum(take for _, take in drawn)
    from_purchased = min(rest, max(0, purchased))
    rest -= from_purchased
    return Breakdown(from_subscription, from_rollover, from_purchased, rest, from_grants, tuple(drawn))


def rollover_after_renewal(*, limit: int | None, used: int, rollover: int, cap: int) -> int:
    """New rollover balance when a period ends (metering.md "Periods and renewal").

    Only a positive, finite limit rolls over; unused allowance pays debt first, then accumulates up
    to the cap. A balance already above the cap (say, from a support grant) is never cut by renewal.
    """
    if limit is None or limit <= 0 or cap <= 0:
        return rollover
    unused = max(0, limit - used)
    return max(rollover, min(rollover + unused, cap))
