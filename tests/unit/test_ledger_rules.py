"""The waterfall, availability and rollover rules of metering.md, as plain functions."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.ledger import Breakdown, allowed, available, rollover_after_renewal, waterfall


def test_worked_example_of_metering_md():
    # limit 5,000; used 4,900; rollover 50; purchased 100; record 300
    split = waterfall(300, limit=5000, used=4900, rollover=50, purchased=100, pools=True)
    assert split == Breakdown(
        from_subscription=100, from_rollover=50, from_purchased=100, overflow_to_debt=50
    )


@pytest.mark.parametrize(
    ("amount", "limit", "used", "rollover", "purchased", "expected"),
    [
        pytest.param(10, 100, 0, 0, 0, (10, 0, 0, 0), id="allowance only"),
        pytest.param(30, 100, 80, 50, 0, (20, 10, 0, 0), id="spill into rollover"),
        pytest.param(30, 100, 100, 10, 50, (0, 10, 20, 0), id="rollover then purchased"),
        pytest.param(30, 100, 100, -40, 50, (0, 0, 30, 0), id="negative rollover skipped"),
        pytest.param(30, 100, 100, 0, 10, (0, 0, 10, 20), id="purchased then debt"),
        pytest.param(30, 100, 100, -40, 0, (0, 0, 0, 30), id="debt accumulates"),
        pytest.param(30, None, 10**9, 0, 0, (30, 0, 0, 0), id="unlimited takes everything"),
        pytest.param(30, 0, 0, 0, 30, (0, 0, 30, 0), id="zero limit spends purchased"),
    ],
)
def test_waterfall_branches(amount, limit, used, rollover, purchased, expected):
    split = waterfall(amount, limit=limit, used=used, rollover=rollover, purchased=purchased, pools=True)
    assert (
        split.from_subscription,
        split.from_rollover,
        split.from_purchased,
        split.overflow_to_debt,
    ) == expected


def test_plain_counter_takes_whole_amount_even_over_limit():
    split = waterfall(500, limit=100, used=100, rollover=999, purchased=999, pools=False)
    assert split == Breakdown(from_subscription=500)


@given(
    amount=st.integers(1, 10**12),
    limit=st.one_of(st.none(), st.integers(0, 10**12)),
    used=st.integers(0, 10**12),
    rollover=st.integers(-(10**12), 10**12),
    purchased=st.integers(0, 10**12),
)
def test_waterfall_conserves_amount_and_never_overdraws(amount, limit, used, rollover, purchased):
    split = waterfall(amount, limit=limit, used=used, rollover=rollover, purchased=purchased, pools=True)
    assert split.total == amount
    assert (
        min(split.from_subscription, split.from_rollover, split.from_purchased, split.overflow_to_debt) >= 0
    )
    assert split.from_rollover <= max(0, rollover)
    assert split.from_purchased <= purchased
    if limit is not None:
        assert used + split.from_subscription <= max(used, limit)
    # whatever was available is exactly what did not go to debt
    avail = available(limit=limit, used=used, rollover=rollover, purchased=purchased, pools=True, reserved=0)
    if avail is not None:
        assert split.overflow_to_debt == max(0, amount - avail) or rollover < 0


def test_available_subtracts_debt_and_reservations_and_clamps():
    assert available(limit=100, used=30, rollover=-50, purchased=10, pools=True, reserved=0) == 30
    assert available(limit=100, used=30, rollover=-50, purchased=10, pools=True, reserved=25) == 5
    assert available(limit=100, used=30, rollover=-500, purchased=10, pools=True, reserved=0) == 0
    assert available(limit=100, used=130, rollover=0, purchased=0, pools=False, reserved=0) == 0
    assert available(limit=100, used=30, rollover=50, purchased=10, pools=False, reserved=0) == 70
    assert available(limit=None, used=30, rollover=0, purchased=0, pools=True, reserved=10**9) is None


def test_equality_is_allowed():
    assert allowed(70, 70)
    assert not allowed(71, 70)
    assert allowed(10**18, None)


@pytest.mark.parametrize(
    ("limit", "used", "rollover", "cap", "expected"),
    [
        pytest.param(1000, 400, 0, 5000, 600, id="unused accumulates"),
        pytest.param(1000, 400, -250, 5000, 350, id="unused pays debt first"),
        pytest.param(1000, 400, -900, 5000, -300, id="debt larger than unused"),
        pytest.param(1000, 0, 4500, 5000, 5000, id="capped"),
        pytest.param(1000, 1500, 100, 5000, 100, id="overused period adds nothing"),
        pytest.param(0, 0, 100, 5000, 100, id="zero limit never rolls"),
        pytest.param(None, 0, 100, 5000, 100, id="unlimited never rolls"),
        pytest.param(1000, 0, 100, 0, 100, id="no cap means no rollover"),
        pytest.param(1000, 0, 7000, 5000, 7000, id="renewal never cuts a balance already above the cap"),
    ],
)
def test_rollover_after_renewal(limit, used, rollover, cap, expected):
    assert rollover_after_renewal(limit=limit, used=used, rollover=rollover, cap=cap) == expected


def test_grants_are_spent_after_rollover_soonest_expiry_first_then_purchased():
    # api.md section 7: allowance -> positive rollover -> live grants (as given: soonest first) -> purchased
    split = waterfall(
        400, limit=100, used=0, rollover=50, purchased=1000, pools=True, grants=[("soon", 30), ("later", 200)]
    )
    assert split == Breakdown(
        from_subscription=100,
        from_rollover=50,
        from_purchased=20,
        overflow_to_debt=0,
        from_grants=230,
        drawn=(("soon", 30), ("later", 200)),
    )
    assert split.total == 400
    # a grant that is not needed is not touched
    assert (
        waterfall(120, limit=100, used=0, rollover=50, purchased=0, pools=True, grants=[("g", 9)]).drawn == ()
    )
    # a plain counter ignores grants
    assert (
        waterfall(5, limit=1, used=0, rollover=0, purchased=0, pools=False, grants=[("g", 9)]).from_grants
        == 0
    )


@given(
    amount=st.integers(1, 10**6),
    limit=st.none() | st.integers(0, 10**6),
    used=st.integers(0, 10**6),
    rollover=st.integers(-(10**6), 10**6),
    purchased=st.integers(0, 10**6),
    grants=st.lists(st.integers(1, 10**5), max_size=4),
)
def test_the_split_with_grants_always_adds_up_and_never_overdraws_a_grant(
    amount, limit, used, rollover, purchased, grants
):
    credit = [(f"g{i}", g) for i, g in enumerate(grants)]
    split = waterfall(
        amount, limit=limit, used=used, rollover=rollover, purchased=purchased, pools=True, grants=credit
    )
    assert split.total == amount
    assert split.from_grants == sum(taken for _, taken in split.drawn)
    assert all(0 < taken <= dict(credit)[gid] for gid, taken in split.drawn)
    # a later grant is drawn only once every earlier one is empty
    drawn = dict(split.drawn)
    for i, (gid, _) in enumerate(credit[1:], 1):
        if gid in drawn:
            assert all(drawn.get(g) == c for g, c in credit[:i])
    assert available(
        limit=limit,
        used=used,
        rollover=rollover,
        purchased=purchased,
        pools=True,
        reserved=0,
        granted=sum(grants),
    ) == (None if limit is None else max(0, max(0, limit - used) + rollover + sum(grants) + purchased))
