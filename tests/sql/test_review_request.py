"""review_request.sql and the review conditions: a delivered order whose request came due (10
days after delivery, 21 with a hard good) in the last lookback_days, with no review yet; a
review of the order before as_of exits by its rating."""

from __future__ import annotations

from .conftest import AS_OF, DAY, HOUR, Enrollment


def delivered(sql, order_id: int, customer_id: int, at, *products: int, **columns) -> None:
    sql.order(order_id, customer_id, at - 2 * DAY, *products, delivered_at=at, **columns)


def test_soft_goods_after_10_days_hard_goods_after_21(sql):
    sql.given("products", {"product_id": 1, "product_type": "soft"}, {"product_id": 2, "product_type": "hard"},
              {"product_id": 3, "product_type": "consumable"})
    delivered(sql, 10, 1, AS_OF - 10 * DAY, 1)
    delivered(sql, 11, 1, AS_OF - 10 * DAY, 1, 2)  # a hard good: waits 21 days
    delivered(sql, 12, 2, AS_OF - 21 * DAY, 2, 3)
    delivered(sql, 13, 3, AS_OF - 11 * DAY + HOUR, 3)
    rows = {r["order_id"]: r for r in sql.select("review_request")}
    assert set(rows) == {10, 12, 13}
    assert rows[12]["request_due_at"] == AS_OF
    assert [i["product_id"] for i in rows[12]["items"]] == [2, 3]


def test_not_yet_due_too_late_reviewed_or_cancelled_orders_are_not(sql):
    sql.given("products", {"product_id": 1, "product_type": "soft"})
    delivered(sql, 10, 1, AS_OF - 10 * DAY + HOUR, 1)  # due in an hour
    delivered(sql, 11, 1, AS_OF - 13 * DAY, 1)  # due 3 days ago: beyond the lookback
    delivered(sql, 12, 2, AS_OF - 12 * DAY, 1)
    sql.given("reviews", {"review_id": 1, "order_id": 12, "customer_id": 2, "product_id": 1, "created_at": AS_OF - DAY})
    delivered(sql, 13, 3, AS_OF - 12 * DAY, 1, status="cancelled")
    delivered(sql, 14, 4, AS_OF - 12 * DAY, 1)
    sql.given("reviews", {"review_id": 2, "order_id": 14, "customer_id": 4, "product_id": 1, "created_at": AS_OF})
    assert sql.keys("review_request") == {"14"}  # a review at as_of is not before it


def reviewed(sql, entered, *ratings: tuple[int, int, object]) -> list[Enrollment]:
    """Orders of customer 1 with a review each (order id, rating, reviewed at), and their enrollments."""
    for order_id, rating, at in ratings:
        sql.order(order_id, 1, entered - 20 * DAY, 1)
        sql.given("reviews", {"review_id": order_id, "order_id": order_id, "customer_id": 1, "rating": rating,
                              "created_at": at})
    return [Enrollment(str(o), 1, entered, {"order_id": o}) for o, _, _ in ratings]


def test_a_low_rating_before_as_of_exits_for_service_recovery(sql):
    entered = AS_OF - 3 * DAY
    enrollments = reviewed(sql, entered, (10, 1, entered + DAY), (11, 3, entered + DAY), (12, 5, entered + DAY),
                           (13, 1, AS_OF))  # reviewed at as_of: not before it
    enrollments.append(Enrollment("14", 1, entered, {"order_id": 14}))  # no review
    assert sql.holds("left_negative_review", *enrollments, journey="review_request") == {"10": (entered + DAY, None, None)}


def test_positive_and_any_review(sql):
    entered = AS_OF - 3 * DAY
    enrollments = reviewed(sql, entered, (10, 2, entered + DAY), (11, 3, entered + DAY), (12, 4, entered + DAY))
    enrollments.append(Enrollment("13", 1, entered, {"order_id": 13}))  # no review
    assert set(sql.holds("left_positive_review", *enrollments, journey="review_request")) == {"12"}
    assert set(sql.holds("left_any_review", *enrollments, journey="review_request")) == {"10", "11"}  # 12 exited
