"""The Stripe merge rules as plain functions (metering.domain.subscriptions)."""

from metering.domain.subscriptions import order_key, resolve_user


def test_within_one_second_events_follow_the_lifecycle_then_their_ids():
    keys = [
        order_key(100, "canceled", "evt_a"),
        order_key(100, "active", "evt_z"),
        order_key(100, "incomplete", "evt_b"),
        order_key(99, "canceled", "evt_c"),
        order_key(101, "incomplete", "evt_0"),
        order_key(100, "past_due", "evt_y"),
        order_key(100, "trialing", "evt_x"),
        order_key(100, None, "evt_w"),
    ]
    assert [k.rsplit(":", 1)[1] for k in sorted(keys)] == [
        "evt_c",  # an earlier second first, whatever its stage
        "evt_b",  # incomplete
        "evt_w",  # started (no status: a failed payment), then by id
        "evt_x",
        "evt_y",
        "evt_z",
        "evt_a",  # canceled
        "evt_0",  # a later second last
    ]
    # seconds compare as numbers, not as text
    assert order_key(9, "active", "e") < order_key(10, "active", "e") < order_key(2**40, "active", "e")
    # a row migrated from before the keys (its second alone) sorts before every key of its second
    legacy = f"{100:020d}:"
    assert legacy < order_key(100, "incomplete", "evt_a") and legacy > order_key(99, "canceled", "evt_z")


def test_the_user_resolution_order():
    lookups = []

    def by_customer(user):
        def find():
            lookups.append(user)
            return user

        return find

    assert resolve_user("meta", "linked", "checkout", by_customer("customer")) == "meta"
    assert resolve_user(None, "linked", "checkout", by_customer("customer")) == "linked"
    assert resolve_user(None, None, "checkout", by_customer("customer")) == "checkout"
    assert lookups == []  # the customer is looked up only when nothing before it knows the user
    assert resolve_user(None, None, None, by_customer("customer")) == "customer"
    assert resolve_user(None, None, None, by_customer(None)) is None
    assert lookups == ["customer", None]
