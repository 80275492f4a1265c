"""cross_sell.sql and cross_sell_ordered_suggestion.sql: a non-cancelled order in the lookback
with cross_sell links of its products not bought by then; suggestions ranked by orders bought
together with the order's products (ties to the lower product id), at most max_products. The
next non-cancelled order converts when it holds a suggestion."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment


def links(sql, product_id: int, *linked: int) -> None:
    sql.given("products", *({"product_id": p} for p in (product_id, *linked)))
    sql.given("product_links", *({"product_id": product_id, "linked_product_id": p} for p in linked))


def test_an_order_gets_the_linked_products_most_bought_together_first(sql):
    links(sql, 1, 2, 3, 4, 5)
    sql.order(90, 9, AS_OF - 10 * DAY, 1, 4)  # 4 bought with 1 once
    sql.order(91, 8, AS_OF - 9 * DAY, 1, 5)
    sql.order(92, 8, AS_OF - 8 * DAY, 1, 5)  # 5 twice
    sql.order(10, 7, AS_OF - DAY, 1)
    rows = {r["order_id"]: r for r in sql.select("cross_sell")}
    assert [p["product_id"] for p in rows[10]["suggested"]] == [5, 4, 2]  # then the lower id of 2 and 3
    # the suggestions as product references with their scores (no card, no price) ...
    assert rows[10]["suggested"] == [{"product_id": 5, "score": 2}, {"product_id": 4, "score": 1},
                                     {"product_id": 2, "score": 0}]
    # ... what was bought as whole cards, like an order confirmation
    assert [(i["product_id"], i["name"], i["quantity"]) for i in rows[10]["items"]] == [(1, "Product 1", 1)]


def test_already_bought_or_nothing_to_suggest_or_cancelled_is_not_selected(sql):
    links(sql, 1, 2)
    sql.given("products", {"product_id": 3})
    sql.order(10, 7, AS_OF - 5 * DAY, 2)  # 7 bought the only suggestion before
    sql.order(11, 7, AS_OF - DAY, 1)
    sql.order(20, 8, AS_OF - DAY, 3)  # no links
    sql.order(30, 9, AS_OF - DAY, 1, status="cancelled")
    sql.order(40, 6, AS_OF - 3 * DAY - HOUR, 1)  # older than the 3-day lookback
    sql.order(50, 5, AS_OF - DAY, 1)
    sql.enroll("cross_sell", Enrollment("50", 5, AS_OF - DAY))  # enrolled already: keeps its suggestions
    assert sql.keys("cross_sell") == set()
    sql.order(60, 4, AS_OF - DAY, 1)
    assert sql.keys("cross_sell") == {"60"}


def test_the_next_order_converts_only_when_it_holds_a_suggestion(sql):
    ordered = AS_OF - 5 * DAY
    suggested = {"order_id": 10, "suggested": [{"product_id": 5}, {"product_id": 6}]}
    sql.order(11, 1, ordered + DAY, 6, 7, total=25)
    sql.order(21, 2, ordered + DAY, 7)  # next order without a suggestion ...
    sql.order(22, 2, ordered + 2 * DAY, 5)  # ... a later one with one does not count
    sql.order(31, 3, ordered + HOUR, 5, status="cancelled")
    sql.order(32, 3, ordered + DAY, 5, total=15)  # the next non-cancelled order
    hits = sql.holds("cross_sell_ordered_suggestion", *(Enrollment(f"{c}0", c, ordered, suggested) for c in (1, 2, 3)),
                     journey="cross_sell")
    assert hits == {"10": (ordered + DAY, "11", Decimal("25.00")), "30": (ordered + DAY, "32", Decimal("15.00"))}
