"""just_because.sql: customers with an account, a non-cancelled order and opted-in email
consent (all before as_of) whose day (1 January + md5(customer id) scaled onto the year) falls
in (local date at interval_start, local date at as_of] on their own calendar."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

from .conftest import DAY, HOUR


def their_day(customer_id: int, year: int) -> date:
    h = int(hashlib.md5(str(customer_id).encode()).hexdigest()[:8], 16)
    return date(year, 1, 1) + timedelta(days=h * (date(year + 1, 1, 1) - date(year, 1, 1)).days // 2**32)


def midnight_utc(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def test_selected_on_their_day_once(sql):
    day = their_day(1, 2027)
    sql.customer(1, timezone="Europe/Berlin")
    sql.order(10, 1, midnight_utc(day) - 100 * DAY, 5)
    as_of = midnight_utc(day)  # 01:00 in Berlin: their day has begun
    (row,) = sql.select("just_because", as_of=as_of)
    assert (row["surprise_key"], row["surprise_date"], row["entered_at"]) == ("1:2027", day, as_of)
    assert sql.keys("just_because", as_of=as_of - DAY) == set()
    assert sql.keys("just_because", as_of=as_of + DAY) == set()


def test_the_day_follows_the_customers_time_zone(sql):
    day = their_day(1, 2027)
    sql.customer(1, timezone="America/Los_Angeles")
    sql.order(10, 1, midnight_utc(day) - 100 * DAY, 5)
    assert sql.keys("just_because", as_of=midnight_utc(day)) == set()  # still the day before there
    assert sql.keys("just_because", as_of=midnight_utc(day) + DAY) == {"1:2027"}


def test_no_consent_no_order_or_a_cancelled_one_keeps_a_customer_out(sql):
    for customer_id, consent, status in ((1, "opted_out", "delivered"), (2, None, "delivered"),
                                         (3, "opted_in", "cancelled"), (4, "opted_in", None)):
        sql.customer(customer_id, consent=consent, timezone="UTC")
        if status:
            sql.order(customer_id * 10, customer_id, datetime(2026, 1, 1, tzinfo=UTC), 5, status=status)
    for customer_id in (1, 2, 3, 4):
        as_of = midnight_utc(their_day(customer_id, 2027))
        assert sql.keys("just_because", as_of=as_of) == set(), customer_id
    sql.order(40, 4, midnight_utc(their_day(4, 2027)) - HOUR, 5)  # an order before as_of: in
    assert sql.keys("just_because", as_of=midnight_utc(their_day(4, 2027))) == {"4:2027"}
