"""product_recommendations.sql and product_recommendations_ordered_pick.sql: customers who
viewed or bought in the last activity_days get up to max_products products never bought,
ranked by orders bought together with what they viewed or bought (ties: lower id); one
enrollment per customer and ISO week. An order with a pick after entry converts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from .conftest import DAY, HOUR, Enrollment

AS_OF = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday: ISO week 2026-W48


def test_picks_ranked_by_orders_together_never_bought(sql):
    for order_id, products in ((90, (1, 2, 3)), (91, (1, 3)), (92, (1, 4))):
        sql.order(order_id, 9, AS_OF - 40 * DAY, *products)  # 9 is not active in the last 30 days
    sql.given("page_views", {"view_id": 1, "customer_id": 1, "product_id": 1, "viewed_at": AS_OF - DAY})
    sql.order(10, 2, AS_OF - 5 * DAY, 1, 4)  # bought 4: never picked for 2
    rows = {r["customer_id"]: r for r in sql.select("product_recommendations", as_of=AS_OF)}
    assert set(rows) == {1, 2}
    assert rows[1]["week_key"] == "1:2026-W48"
    assert [p["product_id"] for p in rows[1]["products"]] == [3, 4, 2]  # 3 and 4 tie at 2 orders: lower id first
    assert [p["product_id"] for p in rows[2]["products"]] == [3, 2]


def test_inactive_customers_those_without_pairs_and_the_week_enrolled_get_nothing(sql):
    sql.order(90, 9, AS_OF - 40 * DAY, 1, 2)
    sql.given("page_views", {"view_id": 1, "customer_id": 1, "product_id": 1, "viewed_at": AS_OF - 31 * DAY},
              {"view_id": 2, "customer_id": 2, "product_id": 5, "viewed_at": AS_OF - DAY},  # 5: bought with nothing
              {"view_id": 3, "customer_id": 3, "product_id": 1, "viewed_at": AS_OF - DAY})
    sql.enroll("product_recommendations", Enrollment("3:2026-W48", 3, AS_OF - HOUR))
    assert sql.keys("product_recommendations", as_of=AS_OF) == set()


def test_an_order_with_a_pick_converts(sql):
    picked = {"products": [{"product_id": 3}, {"product_id": 4}]}
    sql.order(10, 1, AS_OF + DAY, 4, total=30)
    sql.order(20, 2, AS_OF + DAY, 5)  # no pick in it
    sql.order(30, 3, AS_OF + DAY, 3, status="cancelled")
    sql.order(40, 4, AS_OF, 3)  # at entry: not after it
    hits = sql.holds("product_recommendations_ordered_pick",
                     *(Enrollment(f"{c}:w", c, AS_OF, picked) for c in (1, 2, 3, 4)),
                     as_of=AS_OF + 2 * DAY, journey="product_recommendations")
    assert hits == {"1:w": (AS_OF + DAY, "10", Decimal("30.00"))}
