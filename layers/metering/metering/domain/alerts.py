"""Which alerts a change of a (user, usage type) crosses (api.md section 7 "Usage alerts").

Plain functions of two `Level`s, before and after one transaction's change, computed in Python
from state the caller has already read under the pair's lock: a change that crosses nothing
costs no statement. Within one set of records `used` only grows and `available` only shrinks, so
comparing the set's first and last levels finds every threshold any of its events crossed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from metering.domain.ledger import available

if TYPE_CHECKING:
    from metering.catalog import Alert


class Level(NamedTuple):
    """Where a pair stands for its alerts: the period's allowance under the effective plan (None:
    unlimited), the period counter, and what a check could grant (None: unlimited)."""

    limit: int | None
    used: int
    available: int | None


def level(
    *, limit: int | None, used: int, rollover: int, purchased: int, pools: bool, granted: int = 0
) -> Level:
    """A pair's `Level`, live grants counted (reservations are not part of the ledger: not counted)."""
    return Level(
        limit,
        used,
        available(
            limit=limit,
            used=used,
            rollover=rollover,
            purchased=purchased,
            pools=pools,
            reserved=0,
            granted=granted,
        ),
    )


def _at_or_over(alert: Alert, at: Level) -> bool:
    assert alert.at_percent is not None
    if not at.limit:  # unlimited or 0: a share of it means nothing
        return False
    return at.used * 100 >= alert.at_percent * at.limit


def crossed(alerts: Iterable[Alert], before: Level, after: Level) -> list[Alert]:
    """The alerts that `after` has reached and `before` had not."""
    found = []
    for alert in alerts:
        if alert.at_percent is not None:
            hit = _at_or_over(alert, after) and not _at_or_over(alert, before)
        else:  # available_depleted
            hit = after.available == 0 and (before.available is None or before.available > 0)
        if hit:
            found.append(alert)
    return found
