"""Regression tests of the model-based test (test_ledger_model.py): exact step sequences, replayed on
the state machine with its invariants (summary = model, `reconcile` clean) checked after every step,
plus explicit numbers so that each test says what it expects without reading the model.

- Found by hypothesis: a record naming a hold of another usage type (directly, or once the hold had
  expired) left it counting; a service bug, fixed in d0ba7fd (see the two tests' docstrings).
- Hand-written, for the interleavings the model targets: a renewal delivered before the upgrade
  snapshot of its ending period, a renewal delivered before the subscription's first snapshot, a
  failed-then-paid renewal delivered backwards, and a record settling a hold followed by a re-check.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.model.test_ledger_model import LedgerMachine, model_env  # noqa: F401  (the fixture)
from tests.support import api

pytestmark = pytest.mark.usefixtures("model_env")


class Replay:
    """Calls the machine's rules by name, then its invariants, as hypothesis does after each step."""

    def __init__(self, **attributes: Any) -> None:
        self.machine = LedgerMachine()
        for name, value in attributes.items():
            setattr(self.machine, name, value)
        self.machine.assert_invariants()

    def __getattr__(self, name: str) -> Any:
        rule = getattr(self.machine, name)

        def step(**arguments: Any) -> None:
            rule(**arguments)
            self.machine.assert_invariants()

        return step

    def pending(self) -> list[str]:
        return [f.label() for f in self.machine.pending]


def summary(user: str) -> dict[str, Any]:
    status, body = api.read("summary", user)
    assert status == 200, body
    return body


def test_record_naming_a_hold_of_another_usage_type_releases_it():
    """SERVICE BUG found by the model test, fixed in d0ba7fd.

    metering.md "Record" 5: a record that names a reservation releases it. A record of one usage type
    naming a hold of ANOTHER usage type leaves the hold counting: the hold is no longer live (release
    answers 404), yet summary and check still subtract it, for the 60 s a settled hold is kept.

    Cause: `services/record.py::_settle_reservations` calls `reservations.settle(user, id, version)`
    with the version of the RECORD's (user, usage type) balances row; `_SETTLE_LUA` marks the hold
    settled at that version whatever the hold's own usage type is, and the counting rule (`counts` in
    `_PARSE_LUA`: settled > db_version) compares it with the version of the HOLD's usage type, an
    unrelated counter (here 0: server_kokoro has no balances row yet, premium_voice is at 1).

    Fix (metering/reservations.py, services/record.py): `settle` is given the record's usage type;
    `_SETTLE_LUA` drops (HDEL) a hold of another type instead of marking it settled.
    """
    state = Replay()
    state.check(amount=1, hold="r0", usage_type="server_kokoro", user="u2")
    state.record(amount=1, hold="r0", usage_type="premium_voice", user="u2")
    # the same, spelled out
    assert api.release("u2", "r0")[0] == 404
    assert summary("u2")["usage_types"]["server_kokoro"]["reserved"] == 0
    assert api.check("u2", "server_kokoro", 1000)[1]["allowed"] is True


def test_record_naming_an_expired_hold_of_another_usage_type_does_not_revive_it():
    """SERVICE BUG found by the model test's soak, fixed in d0ba7fd. Same cause as above, reached
    through an expired hold: `_SETTLE_LUA` does not look at the hold's deadline, so settling an
    expired hold (still in the hash until a check of that user sweeps it) rewrites it with a fresh
    60 s keep; with the cross-type version comparison it then counts again (here 6,152 units of
    server_kokoro reserved by a hold that had expired). Fixed with the above: `_SETTLE_LUA` also
    drops, never settles, a hold whose deadline has passed.

    Shrunk example (the steps that matter): u2 on basic (server_kokoro unlimited) holds r0, the hold
    expires, a premium_voice record names r0.
    """
    state = Replay()
    state.start(u1=None, u2="basic")
    state.deliver_next()
    state.check(amount=6152, hold="r0", usage_type="server_kokoro", user="u2")
    state.expire(i=0)
    state.record(amount=1, hold="r0", usage_type="premium_voice", user="u2")
    assert summary("u2")["usage_types"]["server_kokoro"]["reserved"] == 0


def test_record_settles_its_hold_then_a_recheck_under_the_same_id_holds_again():
    state = Replay()
    state.start(u1="basic", u2=None)
    state.deliver(i=0)  # customer.subscription.created: basic, premium_voice 5,000
    state.check(amount=3000, hold="r0", usage_type="premium_voice", user="u1")
    state.check(amount=2001, hold=None, usage_type="premium_voice", user="u1")  # denied: 2,000 left
    state.record(amount=3000, hold="r0", usage_type="premium_voice", user="u1")  # settles r0
    assert summary("u1")["usage_types"]["premium_voice"]["reserved"] == 0
    state.check_boundary(over=0, hold="r0", usage_type="premium_voice", user="u1")  # 2,000 under r0
    assert summary("u1")["usage_types"]["premium_voice"] == {
        "limit": 5000,
        "used": 3000,
        "rollover": 0,
        "purchased": 0,
        "granted": 0,
        "reserved": 2000,
        "available": 0,
    }
    state.release(hold="r0", user="u1")  # 204: the re-made hold is live
    state.release(hold="r0", user="u1")  # 404
    assert summary("u1")["usage_types"]["premium_voice"]["available"] == 2000


def test_renewal_delivered_before_the_upgrade_snapshot_of_its_ending_period():
    """The cycle invoice (rolling over under Basic) arrives before the snapshot that upgraded the
    ending period to Plus: the rollover is re-priced as if the events had arrived in order."""
    state = Replay()
    state.start(u1="basic", u2=None)
    state.deliver(i=0)  # created: P0 on basic
    state.record(amount=1000, hold=None, usage_type="premium_voice", user="u1")
    state.stripe_change_plan(user="u1", plan="plus")  # upgrade of P0 (queued)
    state.stripe_renew(user="u1", order="snapshot_first", also_succeeded=False)
    assert state.pending() == [
        f"customer.subscription.updated#{state.machine.pending[0].id}",
        f"customer.subscription.updated#{state.machine.pending[1].id}",
        f"invoice.paid#{state.machine.pending[2].id}",
    ]
    state.deliver(i=2)  # the renewal first: P0 rolls over under basic
    assert {t: n["rollover"] for t, n in summary("u1")["usage_types"].items()} == {
        "premium_voice": 4000,
        "ocr_tokens": 100000,
        "server_kokoro": 0,
    }
    state.deliver(i=1)  # the snapshot of P1
    state.deliver(i=0)  # the late upgrade of P0 (stale): re-priced under plus
    body = summary("u1")
    assert (body["plan"]["id"], body["usage_types"]["premium_voice"]["limit"]) == ("plus", 20000)
    # plus: 19,000 unused, capped at 6,000; ocr_tokens unlimited on plus: nothing rolls over
    assert {t: n["rollover"] for t, n in body["usage_types"].items()} == {
        "premium_voice": 6000,
        "ocr_tokens": 0,
        "server_kokoro": 0,
    }
    state.redeliver(i=0)  # duplicates change nothing
    state.redeliver(i=1)


def test_renewal_delivered_before_the_first_snapshot_of_the_subscription():
    """A cycle invoice before any snapshot: the renewal applies (its ending period guessed from the
    invoice line's plan), but only a snapshot makes the subscription the user's current one."""
    state = Replay()
    state.start(u1="basic", u2=None)
    state.stripe_renew(user="u1", order="invoice_first", also_succeeded=True)
    state.deliver(i=1)  # invoice.paid before customer.subscription.created
    body = summary("u1")
    assert (body["plan"]["id"], body["subscription"]) == ("free", None)
    assert body["usage_types"]["premium_voice"]["rollover"] == 5000
    assert body["usage_types"]["premium_voice"]["available"] == 5000  # free limit 0 + rollover
    state.deliver(i=0)  # created: P0 on basic, confirms the guess
    state.deliver(i=1)  # invoice.payment_succeeded of the same invoice: no second rollover
    state.deliver(i=0)  # the snapshot of P1
    state.record(amount=5500, hold=None, usage_type="premium_voice", user="u1")
    body = summary("u1")["usage_types"]["premium_voice"]
    assert (body["used"], body["rollover"], body["available"]) == (5000, 4500, 4500)


def test_failed_then_paid_renewal_delivered_backwards():
    state = Replay()
    state.start(u1="plus", u2="basic")
    state.deliver(i=0)
    state.deliver(i=0)
    state.record(amount=1000, hold=None, usage_type="premium_voice", user="u1")
    state.stripe_renew(user="u1", order="failed_first", also_succeeded=True)
    for index in (4, 3, 2, 1, 0):  # payment_succeeded, active, paid, past_due (stale), failed (stale)
        state.deliver(i=index)
    body = summary("u1")
    assert (body["subscription"]["status"], body["plan"]["id"]) == ("active", "plus")
    assert body["usage_types"]["premium_voice"]["rollover"] == 6000
    assert body["usage_types"]["premium_voice"]["used"] == 0
