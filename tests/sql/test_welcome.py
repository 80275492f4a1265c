"""welcome.sql and its conditions: a customer whose welcome clock, greatest(account created,
double opt-in confirmed) of an opted-in email consent, falls in the interval, the confirmation
within confirm_within_days of the sign-up, no non-cancelled order before as_of and no earlier
welcome; welcomed customers are selected again when their next step comes due.
welcome_first_order: the first non-cancelled order since the clock; welcome_first_order_used_code:
that order, when it used the enrollment's code while valid."""

from __future__ import annotations

from decimal import Decimal

from .conftest import AS_OF, DAY, HOUR, Enrollment

MINUTE = HOUR / 60


def newcomer(sql, customer_id: int, created_at, confirmed_at, status: str = "opted_in") -> None:
    sql.given("customers", {"customer_id": customer_id, "created_at": created_at})
    sql.given("consents", {"customer_id": customer_id, "status": status, "double_opt_in_at": confirmed_at})


def test_the_later_of_sign_up_and_confirmation_in_the_interval(sql):
    newcomer(sql, 1, AS_OF - 30 * MINUTE, AS_OF - 40 * MINUTE)  # confirmed first (imported consent)
    newcomer(sql, 2, AS_OF - 6 * DAY, AS_OF - 10 * MINUTE)  # confirmed 6 days after signing up
    sql.order(90, 9, AS_OF - DAY, 5, 6)
    rows = {r["customer_id"]: r for r in sql.select("welcome")}
    assert set(rows) == {1, 2}
    assert (rows[1]["welcome_at"], rows[2]["welcome_at"]) == (AS_OF - 30 * MINUTE, AS_OF - 10 * MINUTE)
    assert rows[1]["bestsellers"] == [{"product_id": 5, "units_sold": 1}, {"product_id": 6, "units_sold": 1}]


def test_unconfirmed_opted_out_late_confirmed_ordered_or_welcomed_are_not(sql):
    newcomer(sql, 1, AS_OF - 30 * MINUTE, None)  # confirmation pending
    newcomer(sql, 2, AS_OF - 30 * MINUTE, AS_OF - 30 * MINUTE, status="opted_out")
    newcomer(sql, 3, AS_OF - 7 * DAY - 20 * MINUTE, AS_OF - 10 * MINUTE)  # over 7 days after signing up
    newcomer(sql, 4, AS_OF - 30 * MINUTE, AS_OF - 20 * MINUTE)
    sql.order(40, 4, AS_OF - 25 * MINUTE, 5)  # ordered before the welcome
    newcomer(sql, 5, AS_OF - 2 * HOUR, AS_OF - 2 * HOUR)  # the last interval's
    newcomer(sql, 6, AS_OF - 30 * MINUTE, AS_OF - 30 * MINUTE)
    sql.enroll("welcome", Enrollment("6", 6, AS_OF - 400 * DAY))  # welcomed once, ever
    assert sql.keys("welcome") == set()


def test_the_first_order_since_the_welcome_and_whether_it_used_the_code(sql):
    welcomed = AS_OF - 5 * DAY
    ids = sql.enroll("welcome", *(Enrollment(str(c), c, welcomed) for c in (1, 2, 3, 4)))
    sql.given("lifecycle.coupons", *({"code": f"WE{c}", "journey": "welcome", "enrollment_id": ids[str(c)],
                                      "step": "email_1", "customer_id": str(c), "percent_off": 10,
                                      "valid_from": welcomed, "valid_until": welcomed + 14 * DAY} for c in (1, 2, 3, 4)))
    sql.order(10, 1, welcomed + DAY, 5, coupon_code="WE1", total=9)
    sql.order(20, 2, welcomed + DAY, 5, total=10)  # the first order without the code ...
    sql.order(21, 2, welcomed + 2 * DAY, 5, coupon_code="WE2")  # ... a later one with it does not count
    sql.order(30, 3, welcomed + HOUR, 5, status="cancelled", coupon_code="WE3")
    sql.order(31, 3, welcomed + DAY, 5, total=11)
    assert sql.holds("welcome_first_order_used_code", journey="welcome") == {"1": (welcomed + DAY, "10", Decimal("9.00"))}
    assert sql.holds("welcome_first_order", journey="welcome") == {
        "2": (welcomed + DAY, "20", Decimal("10.00")), "3": (welcomed + DAY, "31", Decimal("11.00"))}
