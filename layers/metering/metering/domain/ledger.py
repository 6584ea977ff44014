"""The waterfall, availability and rollover rules (metering.md: Check, Record, Periods and renewal)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Breakdown:
    from_subscription: int = 0
    from_rollover: int = 0
    from_purchased: int = 0
    overflow_to_debt: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def total(self) -> int:
        return self.from_subscription + self.from_rollover + self.from_purchased + self.overflow_to_debt


ZERO = Breakdown()


def remaining(limit: int | None, used: int) -> int | None:
    """Allowance left in the period; None when unlimited."""
    return None if limit is None else max(0, limit - used)


def available(
    *, limit: int | None, used: int, rollover: int, purchased: int, pools: bool, reserved: int
) -> int | None:
    """What a check may grant: steps 1-5 of metering.md "Check". None = unlimited."""
    left = remaining(limit, used)
    if left is None:
        return None
    total = left + rollover + purchased if pools else left
    return max(0, total - reserved)


def allowed(amount: int, avail: int | None) -> bool:
    return avail is None or amount <= avail


def waterfall(
    amount: int, *, limit: int | None, used: int, rollover: int, purchased: int, pools: bool
) -> Breakdown:
    """Split a recorded amount: allowance -> positive rollover -> purchased -> debt.

    A plain counter takes everything from the period allowance: no limit is enforced on record.
    """
    if not pools:
        return Breakdown(from_subscription=amount)
    left = remaining(limit, used)
    from_subscription = amount if left is None else min(amount, left)
    rest = amount - from_subscription
    from_rollover = min(rest, max(0, rollover))
    rest -= from_rollover
    from_purchased = min(rest, max(0, purchased))
    rest -= from_purchased
    return Breakdown(from_subscription, from_rollover, from_purchased, rest)


def rollover_after_renewal(*, limit: int | None, used: int, rollover: int, cap: int) -> int:
    """New rollover balance when a period ends (metering.md "Periods and renewal").

    Only a positive, finite limit rolls over; unused allowance pays debt first, then accumulates up
    to the cap. A balance already above the cap (say, from a support grant) is never cut by renewal.
    """
    if limit is None or limit <= 0 or cap <= 0:
        return rollover
    unused = max(0, limit - used)
    return max(rollover, min(rollover + unused, cap))
