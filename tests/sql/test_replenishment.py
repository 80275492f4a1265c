"""replenishment.sql and replenishment_reordered.sql: a consumable line of a non-cancelled order
is due quantity x pack_units / units_per_day days after the order, minus buffer_days and the
country's median shipping lead time (default_lead_days without deliveries); selected when due
in the lookback and not reordered since (a later (ordered_at, order_id) with the product). A
later non-cancelled order of the product converts."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment


def capsules(sql) -> None:
    sql.given("products", {"product_id": 5, "product_type": "consumable", "pack_units": 100, "units_per_day": 1},
              {"product_id": 6})


def test_100_capsules_a_day_with_5_days_shipping_are_due_on_day_92(sql):
    capsules(sql)
    sql.customer(1, country="DE")
    sql.order(90, 9, AS_OF - 50 * DAY, 6, delivered_at=AS_OF - 45 * DAY, shipping_country="DE")  # 5 days to DE
    sql.order(10, 1, AS_OF - 92 * DAY, 5, 6)
    (row,) = sql.select("replenishment")
    assert (row["line_key"], row["due_at"], row["lead_time_days"]) == ("10:5", AS_OF, Decimal("5.00"))
    # a product reference with the pack's details: no card, no price (filled in at send time)
    assert row["product"] == {"product_id": 5, "sku": "SKU-5", "pack_units": 100, "units_per_day": 1}
    sql.customer(2, country="FR")  # no deliveries to FR: 3 days
    sql.order(20, 2, AS_OF - 94 * DAY, 5)
    assert sql.keys("replenishment") == {"10:5", "20:5"}


def test_not_due_reordered_or_cancelled_lines_are_not_selected(sql):
    capsules(sql)
    sql.order(10, 1, AS_OF - 93 * DAY + HOUR, 5)  # due in an hour (3 + 3 days before 100)
    sql.order(20, 2, AS_OF - 98 * DAY, 5)  # due 4 days ago: beyond the 3-day lookback
    sql.order(30, 3, AS_OF - 94 * DAY, 5)
    sql.order(31, 3, AS_OF - 94 * DAY, 5)  # same instant, larger id: a reorder of 30 ...
    sql.order(40, 4, AS_OF - 94 * DAY, 5, status="cancelled")
    sql.order(50, 5, AS_OF - 94 * DAY, 6)  # not a consumable
    assert sql.keys("replenishment") == {"31:5"}  # ... which is due itself


def test_a_later_order_of_the_product_converts(sql):
    capsules(sql)
    ordered = AS_OF - 100 * DAY
    context = {"order_id": 10, "ordered_at": ordered.isoformat(), "product_id": 5}
    sql.order(11, 1, AS_OF - DAY, 5, total=18)
    sql.order(21, 2, AS_OF - DAY, 6)  # another product
    sql.order(31, 3, AS_OF - DAY, 5, status="cancelled")
    hits = sql.holds("replenishment_reordered", *(Enrollment(f"{c}0:5", c, AS_OF - 5 * DAY, context) for c in (1, 2, 3)),
                     journey="replenishment")
    assert hits == {"10:5": (AS_OF - DAY, "11", Decimal("18.00"))}
