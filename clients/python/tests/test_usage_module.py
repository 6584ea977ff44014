"""`metering_client.usage`, the drop-in for a product's usage module, against the dev server: the
blocking functions and their `*_async` twins run the same cases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from metering_client import Breakdown, CheckResult, MeteringClient, Summary, UsageLimitExceeded, usage

NAMES = ("check_usage_limit", "record_usage", "get_usage_summary")


@pytest.fixture
def functions(kind: str, drive, dev_server) -> Iterator[object]:
    """The module's three functions, blocking or async, configured for the dev server."""
    usage.configure(dev_server.url)
    suffix = "" if kind == "sync" else "_async"
    yield drive(SimpleNamespace(**{name: getattr(usage, name + suffix) for name in NAMES}))
    usage.configure()


def test_check_usage_limit_raises_with_type_requested_and_available(functions, user) -> None:
    with pytest.raises(UsageLimitExceeded) as raised:
        functions.check_usage_limit(user, "premium_voice", 120)
    assert (raised.value.usage_type, raised.value.requested, raised.value.available) == (
        "premium_voice",
        120,
        0,
    )


def test_the_product_flow_check_hold_record_summary(functions, user) -> None:
    usage.client().adjust(user, f"{user}-credit", "ocr_tokens", "purchased", 1000, "test credit")
    allowed = functions.check_usage_limit(user, "ocr_tokens", 600, reservation_id="doc-1")
    assert isinstance(allowed, CheckResult) and allowed.reservation is not None
    # the hold counts: a second job of 600 does not fit next to it
    with pytest.raises(UsageLimitExceeded) as raised:
        functions.check_usage_limit(user, "ocr_tokens", 600)
    assert raised.value.available == 400
    breakdown = functions.record_usage(user, "ocr_tokens", 600, reservation_id="doc-1", reference_id="doc-1")
    assert isinstance(breakdown, Breakdown)
    assert (breakdown.from_purchased, breakdown.overflow_to_debt) == (600, 0)
    summary = functions.get_usage_summary(user)
    assert isinstance(summary, Summary)
    ocr = summary.usage_types["ocr_tokens"]
    assert (ocr.purchased, ocr.reserved, ocr.available) == (400, 0, 400)  # the record settled the hold


def test_the_service_comes_from_the_environment(monkeypatch, dev_server, user) -> None:
    usage.configure()
    monkeypatch.setenv("METERING_URL", dev_server.url)
    monkeypatch.delenv("METERING_AWS_REGION", raising=False)
    try:
        assert usage.get_usage_summary(user).user_id == user
        assert isinstance(usage.client(), MeteringClient) and usage.client().base_url == dev_server.url
        assert usage.client().aws_region is None
    finally:
        usage.configure()


def test_no_service_configured_says_how_to_configure_one(monkeypatch, user) -> None:
    usage.configure()
    monkeypatch.delenv("METERING_URL", raising=False)
    with pytest.raises(RuntimeError, match="METERING_URL"):
        usage.get_usage_summary(user)


def test_each_event_loop_gets_its_own_async_client(dev_server, user) -> None:
    usage.configure(dev_server.url)
    try:
        for _ in range(2):  # a second loop would fail on the first loop's connections
            assert asyncio.run(usage.get_usage_summary_async(user)).user_id == user
    finally:
        usage.configure()
