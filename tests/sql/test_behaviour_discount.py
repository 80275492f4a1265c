"""behaviour_discount.sql and behaviour_discount_redeemed.sql: a known customer's view that
makes min_views views of one product within window_days (both ends included), in the lookback,
with no order in no_order_days before it (or since), the product never ordered, and no
enrollment for the product within cooldown_days; the earliest such view is the clock. An order
that uses the product code while it is valid and contains the product converts."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment

VIEW = AS_OF - 5 * HOUR  # the 4th view


def views(sql, customer_id: int, product_id: int, *at, first_id: int = 1) -> None:
    sql.given("page_views", *({"view_id": first_id + i, "customer_id": customer_id, "product_id": product_id,
                               "viewed_at": t} for i, t in enumerate(at)))


def test_the_fourth_view_in_seven_days_is_the_clock(sql):
    views(sql, 1, 5, VIEW - 7 * DAY, VIEW - 2 * DAY, VIEW - DAY, VIEW, VIEW + HOUR)  # exactly 7 days: counts
    (row,) = sql.select("behaviour_discount")
    assert (row["behaviour_key"], row["behaviour_clock"], row["view_count"]) == ("1:5:2026-11-19", VIEW, 4)
    assert row["first_viewed_at"] == VIEW - 7 * DAY


def test_too_few_views_an_order_or_the_product_bought_keep_a_customer_out(sql):
    views(sql, 1, 5, VIEW - 7 * DAY - HOUR, VIEW - 2 * DAY, VIEW - DAY, VIEW)  # the first is 7 days + 1h before
    views(sql, 2, 5, VIEW - 3 * DAY, VIEW - 2 * DAY, VIEW - DAY, VIEW, first_id=10)
    sql.order(20, 2, VIEW - 29 * DAY, 6)  # an order in the 30 days before the clock
    views(sql, 3, 5, VIEW - 3 * DAY, VIEW - 2 * DAY, VIEW - DAY, VIEW, first_id=30)
    sql.order(30, 3, VIEW - 200 * DAY, 5)  # bought the product long ago
    views(sql, 4, 5, VIEW - 3 * DAY, VIEW - 2 * DAY, VIEW - DAY, VIEW, first_id=40)
    sql.order(40, 4, VIEW - 10 * DAY, 5, status="cancelled")  # cancelled: does not count
    views(sql, 5, 5, AS_OF - 28 * HOUR - 3 * DAY, AS_OF - 28 * HOUR - DAY, AS_OF - 28 * HOUR - HOUR,
          AS_OF - 25 * HOUR, first_id=50)  # qualified before the 24h lookback
    assert sql.keys("behaviour_discount") == {"4:5:2026-11-19"}


def test_cooldown_one_enrollment_per_customer_and_product_in_30_days(sql):
    views(sql, 1, 5, VIEW - 3 * DAY, VIEW - 2 * DAY, VIEW - DAY, VIEW)
    views(sql, 1, 6, VIEW - 3 * DAY, VIEW - 2 * DAY, VIEW - DAY, VIEW, first_id=10)
    sql.enroll("behaviour_discount", Enrollment("1:5:2026-10-21", 1, VIEW - 30 * DAY + HOUR, {"product_id": 5}),
               Enrollment("1:6:2026-10-20", 1, VIEW - 30 * DAY, {"product_id": 6}))
    assert sql.keys("behaviour_discount") == {"1:6:2026-11-19"}  # 30 days after the last: again


def test_redeemed_only_with_the_product_while_valid(sql):
    entered = AS_OF - 3 * DAY
    ids = sql.enroll("behaviour_discount", *(Enrollment(f"{c}:5", c, entered, {"product_id": 5}) for c in (1, 2, 3, 4)))
    sql.given("lifecycle.coupons", *({"code": f"BHV{c}", "journey": "behaviour_discount", "enrollment_id": ids[f"{c}:5"],
                                      "step": "offer", "customer_id": str(c), "percent_off": 10, "valid_from": entered,
                                      "valid_until": entered + 7 * DAY, "product_id": "5"} for c in (1, 2, 3, 4)))
    sql.order(10, 1, entered + DAY, 5, 6, coupon_code="BHV1", total=19)
    sql.order(20, 2, entered + DAY, 6, coupon_code="BHV2")  # without the product
    sql.order(30, 3, entered + DAY, 5, coupon_code="BHV3", status="cancelled")
    sql.order(40, 4, entered - HOUR, 5, coupon_code="BHV4")  # before the code was valid
    hits = sql.holds("behaviour_discount_redeemed", journey="behaviour_discount")
    assert hits == {"1:5": (entered + DAY, "10", Decimal("19.00"))}
