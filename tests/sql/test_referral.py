"""referral.sql and its conditions: customers with a non-cancelled order in the last
active_days, at least min_orders such orders in all, no review below min_rating and no other
enrollment within cooldown_days either side. referral_made_since_entry: a referral at or after
entry, before as_of; referral_converted_since_entry: such a referral whose friend's order (not
cancelled) was placed before as_of."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment


def test_two_orders_the_last_within_30_days_qualify(sql):
    sql.order(10, 1, AS_OF - 100 * DAY, 5)
    sql.order(11, 1, AS_OF - 30 * DAY, 5)  # exactly 30 days: in
    sql.given("reviews", {"review_id": 1, "order_id": 10, "customer_id": 1, "rating": 4, "created_at": AS_OF - 90 * DAY})
    (row,) = sql.select("referral")
    assert (row["referral_key"], row["orders_count"], row["entered_at"]) == ("1:2026-11-20", 2, AS_OF)


def test_one_order_old_orders_a_low_rating_or_a_recent_enrollment_keep_a_customer_out(sql):
    sql.order(10, 1, AS_OF - DAY, 5)
    sql.order(11, 1, AS_OF - 2 * DAY, 5, status="cancelled")  # one order that counts
    sql.order(20, 2, AS_OF - 100 * DAY, 5)
    sql.order(21, 2, AS_OF - 31 * DAY, 5)  # the last is 31 days old
    sql.order(30, 3, AS_OF - 100 * DAY, 5)
    sql.order(31, 3, AS_OF - DAY, 5)
    sql.given("reviews", {"review_id": 1, "order_id": 30, "customer_id": 3, "rating": 3, "created_at": AS_OF - 90 * DAY})
    sql.order(40, 4, AS_OF - 100 * DAY, 5)
    sql.order(41, 4, AS_OF - DAY, 5)
    sql.enroll("referral", Enrollment("4:2026-05-25", 4, AS_OF - 179 * DAY))
    sql.order(50, 5, AS_OF - 100 * DAY, 5)
    sql.order(51, 5, AS_OF - DAY, 5)
    sql.enroll("referral", Enrollment("5:2026-05-24", 5, AS_OF - 180 * DAY))  # 180 days ago: may again
    assert sql.keys("referral") == {"5:2026-11-20"}


def test_referral_made_since_entry(sql):
    entered = AS_OF - 5 * DAY
    sql.given("referrals", {"referral_id": 1, "referrer_customer_id": 1, "created_at": entered},  # at entry: counts
              {"referral_id": 2, "referrer_customer_id": 2, "created_at": entered - HOUR},
              {"referral_id": 3, "referrer_customer_id": 3, "created_at": AS_OF})
    hits = sql.holds("referral_made_since_entry", *(Enrollment(f"{c}:x", c, entered) for c in (1, 2, 3)),
                     journey="referral")
    assert hits == {"1:x": (entered, None, None)}


def test_referral_converted_since_entry_credits_the_friends_order(sql):
    entered = AS_OF - 5 * DAY
    sql.order(90, 9, entered + DAY, 5, total=55)
    sql.order(91, 9, entered + DAY, 5, status="cancelled")
    sql.order(92, 9, AS_OF, 5)
    sql.given("referrals",
              {"referral_id": 1, "referrer_customer_id": 1, "created_at": entered + HOUR, "converted_order_id": 90},
              {"referral_id": 2, "referrer_customer_id": 2, "created_at": entered + HOUR, "converted_order_id": 91},
              {"referral_id": 3, "referrer_customer_id": 3, "created_at": entered + HOUR, "converted_order_id": 92},
              {"referral_id": 4, "referrer_customer_id": 4, "created_at": entered - HOUR, "converted_order_id": 90},
              {"referral_id": 5, "referrer_customer_id": 5, "created_at": entered + HOUR})  # not converted
    hits = sql.holds("referral_converted_since_entry", *(Enrollment(f"{c}:x", c, entered) for c in (1, 2, 3, 4, 5)),
                     journey="referral")
    assert hits == {"1:x": (entered + DAY, "90", Decimal("55.00"))}
