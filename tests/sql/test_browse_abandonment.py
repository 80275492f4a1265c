"""browse_abandonment.sql and its exits: a known customer's session with a product looked at
closely (min_seconds in total or min_views views) and neither carted nor ordered at or after
its first view; the clock is the session's last view + wait_hours, within the lookback; one
enrollment per customer in cooldown_days. ordered_since_browse: a non-cancelled order at or
after enrolled_at; carted_since_browse: a cart changed at or after enrolled_at."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, HOUR, Enrollment

MINUTE = HOUR / 60
LAST = AS_OF - 3 * HOUR  # the session's last view: clock at AS_OF - 1h


def view(sql, view_id: int, customer_id: int, product_id: int, at, seconds: int = 10, session: str = "s1") -> None:
    sql.given("page_views", {"view_id": view_id, "customer_id": customer_id, "product_id": product_id,
                             "viewed_at": at, "seconds_on_page": seconds, "session_id": session})


def test_a_long_look_or_two_views_enter_with_the_products_left(sql):
    view(sql, 1, 1, 5, LAST - 10 * MINUTE, seconds=60)  # 60 seconds on product 5
    view(sql, 2, 1, 6, LAST, seconds=5)  # a glance at 6 (last, but not looked at closely)
    view(sql, 3, 2, 7, LAST - MINUTE, session="s2")
    view(sql, 4, 2, 7, LAST, session="s2")  # two views of 7
    rows = {r["session_key"]: r for r in sql.select("browse_abandonment")}
    assert set(rows) == {"1:s1", "2:s2"}
    assert rows["1:s1"]["browse_clock"] == LAST + 2 * HOUR
    assert [p["product_id"] for p in rows["1:s1"]["viewed"]] == [6, 5]  # most recent first
    assert rows["1:s1"]["viewed"] == [{"product_id": 6}, {"product_id": 5}]  # references: no card, no price
    assert rows["1:s1"]["url"].endswith("/p/SKU-6")  # the last viewed product's page


def test_a_glance_a_carted_or_ordered_product_or_a_session_too_recent_does_not(sql):
    view(sql, 1, 1, 5, LAST, seconds=59)  # 59 seconds, one view
    view(sql, 2, 2, 5, LAST, seconds=90, session="s2")
    sql.given("carts", {"cart_id": 1, "customer_id": 2, "updated_at": LAST})  # carted in the same second
    sql.given("cart_items", {"cart_id": 1, "product_id": 5})
    view(sql, 3, 3, 5, LAST, seconds=90, session="s3")
    sql.order(30, 3, LAST + HOUR, 5)
    view(sql, 4, 4, 5, AS_OF - 2 * HOUR + MINUTE, seconds=90, session="s4")  # clock after as_of
    view(sql, 5, 5, 5, LAST, seconds=90, session="s5")
    sql.order(50, 5, LAST + HOUR, 5, status="cancelled")  # a cancelled order does not count
    assert sql.keys("browse_abandonment") == {"5:s5"}


def test_one_enrollment_per_customer_in_seven_days(sql):
    view(sql, 1, 1, 5, LAST, seconds=90)
    view(sql, 2, 1, 5, LAST - HOUR, seconds=90, session="s0")  # an earlier session: picked
    assert sql.keys("browse_abandonment") == {"1:s0"}
    sql.enroll("browse_abandonment", Enrollment("1:old", 1, LAST - 5 * 24 * HOUR))
    assert sql.keys("browse_abandonment") == set()


def test_an_order_since_entry_converts_a_cart_change_exits(sql):
    enrolled = AS_OF - 5 * HOUR
    sql.order(10, 1, enrolled, 5, total=12)  # at enrolled_at: counts
    sql.order(20, 2, enrolled - MINUTE, 5)  # before entry: the segment saw it
    sql.given("carts", {"cart_id": 3, "customer_id": 3, "created_at": enrolled - HOUR, "updated_at": enrolled + HOUR},
              {"cart_id": 4, "customer_id": 4, "updated_at": enrolled - MINUTE})
    enrollments = [Enrollment(f"{c}:s", c, enrolled - HOUR, enrolled_at=enrolled) for c in (1, 2, 3, 4)]
    assert sql.holds("ordered_since_browse", *enrollments, journey="browse_abandonment") == {
        "1:s": (enrolled, "10", Decimal("12.00"))}
    assert sql.holds("carted_since_browse", journey="browse_abandonment") == {"3:s": (enrolled + HOUR, None, None)}
