"""cart_abandonment.sql and its exit: a cart with items, last changed at least an hour before
the run and within lookback_hours, whose customer placed no order since that change."""

from __future__ import annotations

from .conftest import AS_OF, DAY, HOUR


def cart(sql, cart_id: int, customer_id: int, updated_at, *products: int, added_at=None) -> None:
    sql.given("carts", {"cart_id": cart_id, "customer_id": customer_id, "updated_at": updated_at})
    sql.given("cart_items", *({"cart_id": cart_id, "product_id": p, "added_at": added_at} for p in products))


def test_a_cart_left_for_over_an_hour_is_selected_with_its_items(sql):
    cart(sql, 1, 7, AS_OF - 2 * HOUR, 3, 4)
    (row,) = sql.select("cart_abandonment")
    assert (row["cart_id"], row["customer_id"], row["cart_updated_at"]) == (1, 7, AS_OF - 2 * HOUR)
    assert [i["product_id"] for i in row["items"]] == [3, 4]  # by name, then id
    # product references with the cart line's quantity and price: no card (filled in at send time)
    assert row["items"] == [{"product_id": 3, "quantity": 1, "unit_price": 10},
                            {"product_id": 4, "quantity": 1, "unit_price": 10}]
    assert row["cart_total"] == 20


def test_recent_old_empty_and_ordered_since_carts_are_not(sql):
    cart(sql, 1, 7, AS_OF - HOUR, 3)  # changed exactly an hour ago: not yet
    cart(sql, 2, 8, AS_OF - 49 * HOUR, 3)  # beyond the 48-hour lookback
    sql.given("carts", {"cart_id": 3, "customer_id": 9, "updated_at": AS_OF - 2 * HOUR})  # no items
    cart(sql, 4, 10, AS_OF - 3 * HOUR, 3)
    sql.order(40, 10, AS_OF - 2 * HOUR, 3)  # ordered since the change
    cart(sql, 5, 11, AS_OF - 3 * HOUR, 3)
    sql.order(50, 11, AS_OF - 2 * HOUR, 3, status="cancelled")  # a cancelled order does not count
    assert sql.keys("cart_abandonment") == {"5"}
    assert sql.keys("cart_abandonment", params={"lookback_hours": 50}) == {"2", "5"}


def test_a_cart_changed_after_as_of_is_seen_as_it_was(sql):
    cart(sql, 1, 7, AS_OF + DAY, 3, added_at=AS_OF - 3 * HOUR)
    sql.given("cart_items", {"cart_id": 1, "product_id": 4, "added_at": AS_OF + DAY})  # added later
    (row,) = sql.select("cart_abandonment")
    assert row["cart_updated_at"] == AS_OF - 3 * HOUR
    assert [i["product_id"] for i in row["items"]] == [3]
