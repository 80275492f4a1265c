"""upsell.sql and its conditions: a known customer's cart, changed wait_minutes or more before
as_of (due within lookback_hours) and not followed by an order, with a line that has an upsell
link to a higher tier costing more (same product family first, then the smallest step up); one
item per cart, the one added last; never an item whose upgrade is in the cart.
upsell_ordered_upgrade: an order with the upgrade since entry; upsell_upgrade_in_cart: the
upgrade is in the cart by as_of; upsell_item_removed: the item left the cart and the upgrade
did not take its place."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, HOUR, Enrollment

MINUTE = HOUR / 60
CHANGED = AS_OF - 30 * MINUTE


def catalogue(sql) -> None:
    sql.given("products", {"product_id": 1, "sku": "CAP-T1", "tier": 1, "price": 10},
              {"product_id": 2, "sku": "CAP-T2", "tier": 2, "price": 18},  # the bigger pack
              {"product_id": 3, "sku": "OTHER-T2", "tier": 2, "price": 12},  # cheaper, another family
              {"product_id": 4, "sku": "MUG-T1", "tier": 1, "price": 8},
              {"product_id": 5, "sku": "MUG-T2", "tier": 2, "price": 9})
    sql.given("product_links", {"product_id": 1, "linked_product_id": 2, "kind": "upsell"},
              {"product_id": 1, "linked_product_id": 3, "kind": "upsell"},
              {"product_id": 4, "linked_product_id": 5, "kind": "upsell"})


def cart(sql, cart_id: int, customer_id: int, *lines: tuple[int, object], updated_at=CHANGED) -> None:
    sql.given("carts", {"cart_id": cart_id, "customer_id": customer_id, "updated_at": updated_at})
    sql.given("cart_items", *({"cart_id": cart_id, "product_id": p, "unit_price": 10 if p == 1 else 8,
                               "added_at": at} for p, at in lines))


def test_the_item_added_last_gets_the_same_familys_upgrade(sql):
    catalogue(sql)
    cart(sql, 10, 1, (1, CHANGED), (4, CHANGED - MINUTE))
    (row,) = sql.select("upsell")
    assert (row["item_key"], row["upgrade_product_id"], row["upsell_due_at"]) == ("10:1", 2, CHANGED + 10 * MINUTE)
    assert "price_difference" not in row  # the templates work it out from the day's prices
    # product references: the item with its cart price and quantity, the upgrade with no price
    assert row["item"] == {"product_id": 1, "sku": "CAP-T1", "price": 10, "quantity": 1}
    assert row["upgrade"] == {"product_id": 2, "sku": "CAP-T2"}


def test_too_recent_ordered_since_upgrade_in_cart_or_no_upgrade_is_not_upsold(sql):
    catalogue(sql)
    cart(sql, 10, 1, (1, None), updated_at=AS_OF - 9 * MINUTE)  # due in a minute
    cart(sql, 20, 2, (1, None))
    sql.order(20, 2, CHANGED + MINUTE, 4)  # ordered since the change
    cart(sql, 30, 3, (1, None), (2, None))  # the upgrade is in the cart already
    sql.given("products", {"product_id": 6, "sku": "SOLO-T1"})
    cart(sql, 40, 4, (6, None))  # no upsell link
    cart(sql, 50, 5, (1, None), updated_at=AS_OF - 6 * HOUR - 10 * MINUTE)  # due 6 hours ago: beyond the lookback
    assert sql.keys("upsell") == set()


def test_ordering_the_upgrade_converts(sql):
    context = {"cart_id": 10, "product_id": 1, "upgrade_product_id": 2}
    sql.order(11, 1, CHANGED + MINUTE, 2, total=18)
    sql.order(21, 2, CHANGED + MINUTE, 1)  # the item, not the upgrade
    sql.order(31, 3, CHANGED + MINUTE, 2, status="cancelled")
    hits = sql.holds("upsell_ordered_upgrade", *(Enrollment(f"{c}0:1", c, CHANGED, context) for c in (1, 2, 3)),
                     journey="upsell")
    assert hits == {"10:1": (CHANGED + MINUTE, "11", Decimal("18.00"))}


def enrollments(*customers: int) -> list[Enrollment]:
    return [Enrollment(f"{c}0:1", c, CHANGED, {"cart_id": c * 10, "product_id": 1, "upgrade_product_id": 2})
            for c in customers]


def test_the_upgrade_in_the_cart(sql):
    catalogue(sql)
    cart(sql, 10, 1, (1, None), (2, CHANGED + MINUTE))  # took the upgrade too
    cart(sql, 20, 2, (1, None), (2, AS_OF))  # ... at as_of: not yet
    cart(sql, 30, 3, (1, None))
    cart(sql, 40, 4, (2, CHANGED + MINUTE))  # swapped the item for the upgrade
    assert set(sql.holds("upsell_upgrade_in_cart", *enrollments(1, 2, 3, 4), journey="upsell")) == {"10:1", "40:1"}


def test_the_item_taken_out_unless_swapped_for_the_upgrade(sql):
    catalogue(sql)
    cart(sql, 10, 1, (1, None))  # still there
    cart(sql, 20, 2, (4, None), updated_at=CHANGED + MINUTE)  # taken out
    cart(sql, 30, 3, (2, CHANGED + MINUTE))  # swapped: stays in the journey
    hits = sql.holds("upsell_item_removed", *enrollments(1, 2, 3), journey="upsell")
    assert hits == {"20:1": (CHANGED + MINUTE, None, None)}
