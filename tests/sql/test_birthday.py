"""birthday.sql, birthday_ask.sql and the conditions birthday uses (redeemed_coupon,
opened_or_clicked_first_email are in test_shared_conditions.py).

birthday: a customer (account before as_of) whose local date at as_of plus days_ahead is this
year's celebration (29 February -> 28 February in non-leap years); the key's year is the
celebration's. birthday_ask: no birthday on file, first non-cancelled order + ask_after_days
(or whole years after it, in UTC) in (interval_start, as_of]."""

from __future__ import annotations

from datetime import UTC, date, datetime

from .conftest import DAY, HOUR

AS_OF = datetime(2027, 2, 21, tzinfo=UTC)  # 7 days before 28 February 2027 (UTC)


def test_a_birthday_seven_days_ahead_on_the_customers_calendar(sql):
    sql.customer(1, birthday=date(1990, 2, 28), timezone="UTC")
    sql.customer(2, birthday=date(1992, 2, 29), timezone="Europe/London")  # non-leap year: the 28th
    sql.customer(3, birthday=date(1990, 3, 1), timezone="Pacific/Kiritimati")  # UTC+14: 22 Feb from 10:00 UTC
    sql.customer(4, birthday=date(1990, 2, 28), timezone="Not/A_Zone")  # unknown zone: UTC
    rows = {r["birthday_key"]: r for r in sql.select("birthday", as_of=AS_OF)}
    assert set(rows) == {"1:2027", "2:2027", "4:2027"}
    assert rows["1:2027"]["entered_at"] == AS_OF and rows["4:2027"]["timezone"] == "UTC"
    assert "3:2027" in sql.keys("birthday", as_of=AS_OF + 10 * HOUR)


def test_another_day_no_birthday_or_a_later_account_is_not_selected(sql):
    sql.customer(1, birthday=date(1990, 2, 27), timezone="UTC")
    sql.customer(2, birthday=None)
    sql.customer(3, birthday=date(1990, 2, 28), timezone="UTC", created_at=AS_OF)  # account at as_of
    sql.customer(4, birthday=date(1990, 2, 28), timezone="America/Los_Angeles")  # still 20 Feb there
    assert sql.keys("birthday", as_of=AS_OF) == set()


def test_the_key_year_is_the_celebrations(sql):
    sql.customer(1, birthday=date(1990, 1, 2), timezone="UTC")
    assert sql.keys("birthday", as_of=datetime(2026, 12, 26, tzinfo=UTC)) == {"1:2027"}


def test_ask_three_days_after_the_first_order_then_yearly(sql):
    first = datetime(2026, 2, 10, 15, tzinfo=UTC)
    sql.order(10, 1, first, 5)
    sql.order(11, 1, first + DAY, 5)
    sql.order(20, 2, first - HOUR, 5, status="cancelled")  # cancelled: the first order is the next one
    sql.order(21, 2, first, 5)
    rows = {r["ask_key"]: r for r in sql.select("birthday_ask", as_of=datetime(2026, 2, 14, tzinfo=UTC))}
    assert set(rows) == {"1:0", "2:0"}
    assert (rows["1:0"]["ask_due_at"], rows["1:0"]["orders_count"]) == (first + 3 * DAY, 2)
    assert sql.keys("birthday_ask", as_of=datetime(2027, 2, 14, tzinfo=UTC)) == {"1:1", "2:1"}


def test_no_ask_for_a_known_birthday_a_day_off_or_a_cancelled_order(sql):
    first = datetime(2026, 2, 10, 15, tzinfo=UTC)
    sql.customer(1, birthday=date(1990, 5, 1))
    sql.order(10, 1, first, 5)
    sql.order(20, 2, first + DAY, 5)  # due a day later
    sql.order(30, 3, first, 5, status="cancelled")
    assert sql.keys("birthday_ask", as_of=datetime(2026, 2, 14, tzinfo=UTC)) == set()
