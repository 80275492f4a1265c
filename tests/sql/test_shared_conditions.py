"""Conditions about an order since entry: purchased_since_entry, ordered_since_browse,
welcome_first_order, seasonal_offer_ordered_in_window (header rules, one case each way)."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment

ENTERED = AS_OF - 5 * DAY


def test_purchased_since_entry_the_first_order_after_entry_converts(sql):
    sql.customer(1)
    sql.order(11, 1, ENTERED + DAY, 5, total=30)
    sql.order(10, 1, ENTERED + DAY, 5, total=20)  # same instant: the smaller id came first
    sql.order(12, 1, ENTERED + 2 * DAY, 5, total=40)
    hits = sql.holds("purchased_since_entry", Enrollment("e1", 1, ENTERED))
    assert hits == {"e1": (ENTERED + DAY, "10", Decimal("20.00"))}


def test_purchased_since_entry_ignores_orders_before_entry_cancelled_or_at_as_of(sql):
    sql.customer(1)
    sql.order(10, 1, ENTERED, 5)  # at entry: not after it
    sql.order(11, 1, ENTERED + DAY, 5, status="cancelled")
    sql.order(12, 1, AS_OF, 5)  # at as_of: not before it
    sql.customer(2)
    sql.order(20, 2, ENTERED + HOUR, 5)  # someone else's order
    assert sql.holds("purchased_since_entry", Enrollment("e1", 1, ENTERED)) == {}
