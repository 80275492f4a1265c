"""Segments and conditions on a shop whose ids are text (README, "Text ids"): keys are the shop's
ids as they are; in a segment's ORDER BY text ids compare as text ('#10' before '#9'); in the
conversion pick of an exit, ids made of digits compare as numbers ('9' before '10')."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment

CART = "00000000-0000-4000-8000-00000000000a"


def test_a_cart_with_a_uuid_is_selected_under_its_own_id(text_sql):
    text_sql.given("carts", {"cart_id": CART, "customer_id": "C-7", "updated_at": AS_OF - 2 * HOUR})
    text_sql.given("cart_items", {"cart_id": CART, "product_id": "sku-0000000a"})
    (row,) = text_sql.select("cart_abandonment")
    assert (row["cart_id"], row["customer_id"], row["items"][0]["product_id"]) == (CART, "C-7", "sku-0000000a")


def test_the_last_of_two_orders_at_one_instant_is_the_larger_id_as_text(text_sql):
    text_sql.order("#10", "C-1", AS_OF - 100 * DAY, "p1")
    text_sql.order("#9", "C-1", AS_OF - 100 * DAY, "p1")
    assert text_sql.keys("win_back") == {"C-1:#9"}  # '#9' sorts after '#10'


def test_the_conversion_pick_compares_digit_ids_as_numbers(text_sql):
    entered = AS_OF - 5 * DAY
    text_sql.order("10", "C-1", entered + DAY, "p1", total=10)
    text_sql.order("9", "C-1", entered + DAY, "p1", total=9)  # same instant: '9' came first
    hits = text_sql.holds("purchased_since_entry", Enrollment("e1", "C-1", entered))
    assert hits == {"e1": (entered + DAY, "9", Decimal("9.00"))}


def test_conditions_match_text_ids_in_the_context(text_sql):
    entered = AS_OF - 3 * DAY
    text_sql.order("#1001", "C-1", entered - 20 * DAY, "p1")
    text_sql.given("reviews", {"review_id": "r1", "order_id": "#1001", "customer_id": "C-1", "product_id": "p1",
                               "rating": 3, "created_at": entered + DAY})
    enrollments = [Enrollment(o, "C-1", entered, {"order_id": o}) for o in ("#1001", "#1002")]
    assert set(text_sql.holds("left_any_review", *enrollments, journey="review_request")) == {"#1001"}
    text_sql.order("#2001", "C-2", entered + DAY, "sku-0000000b", total=18)
    upgrade = Enrollment("x:sku-0000000a", "C-2", entered, {"upgrade_product_id": "sku-0000000b"})
    other = Enrollment("y:sku-0000000a", "C-2", entered, {"upgrade_product_id": "sku-0000000c"})
    assert text_sql.holds("upsell_ordered_upgrade", upgrade, other, journey="upsell") == {
        "x:sku-0000000a": (entered + DAY, "#2001", Decimal("18.00"))}
