"""win_back.sql and chose_to_stay.sql: customers whose last non-cancelled order (the latest
(ordered_at, order_id)) is at least lapsed_days old; the clock is the day the days ran out, or
the interval start for those who lapsed earlier. A "stay" choice since entry exits them."""

from __future__ import annotations

from .conftest import AS_OF, DAY, HOUR, Enrollment


def test_a_customer_whose_last_order_is_90_days_old_lapses(sql):
    sql.order(10, 1, AS_OF - 90 * DAY - 12 * HOUR, 5)  # the 90 days ran out in this run's interval
    sql.order(20, 2, AS_OF - 200 * DAY, 5)  # lapsed long ago: the clock starts with this interval
    rows = {r["lapse_key"]: r for r in sql.select("win_back")}
    assert set(rows) == {"1:10", "2:20"}
    assert rows["1:10"]["lapsed_at"] == AS_OF - 12 * HOUR
    assert rows["2:20"]["lapsed_at"] == AS_OF - DAY
    assert rows["2:20"]["days_since_last_order"] == 200


def test_a_recent_order_or_none_keeps_a_customer_out(sql):
    sql.order(10, 1, AS_OF - 200 * DAY, 5)
    sql.order(11, 1, AS_OF - 89 * DAY, 5)  # ordered again since
    sql.order(20, 2, AS_OF - 200 * DAY, 5, status="cancelled")  # only a cancelled order
    sql.customer(3)  # never ordered
    assert sql.keys("win_back") == set()


def test_the_last_of_two_orders_at_one_instant_is_the_larger_id(sql):
    sql.order(12, 1, AS_OF - 100 * DAY, 5)
    sql.order(11, 1, AS_OF - 100 * DAY, 5)
    sql.order(13, 1, AS_OF - 100 * DAY, 5, status="cancelled")
    (row,) = sql.select("win_back")
    assert (row["lapse_key"], row["orders_count"]) == ("1:12", 2)


def test_chose_to_stay_since_entry_holds(sql):
    entered = AS_OF - 10 * DAY
    sql.given("lifecycle.preference_choices",
              {"customer_id": "1", "channel": "email", "choice": "stay", "source": "test", "chosen_at": entered + DAY},
              {"customer_id": "2", "channel": "email", "choice": "stay", "source": "test", "chosen_at": entered - HOUR},
              {"customer_id": "3", "channel": "sms", "choice": "stay", "source": "test", "chosen_at": entered + DAY},
              {"customer_id": "4", "channel": "email", "choice": "stay", "source": "test", "chosen_at": AS_OF})
    hits = sql.holds("chose_to_stay", *(Enrollment(f"{c}:1", c, entered) for c in (1, 2, 3, 4)))
    assert hits == {"1:1": (entered + DAY, None, None)}  # before entry, other channel, at as_of: no


def test_an_enrolled_lapse_keeps_the_clock_and_days_it_entered_with(sql):
    """A lapsed customer is selected every day until they order: the row must not change with the
    run's date, or every enrollment's context is rewritten every day."""
    sql.order(20, 2, AS_OF - 200 * DAY, 5)
    entered = AS_OF - 4 * DAY
    sql.enroll("win_back", Enrollment("2:20", 2, entered, enrolled_at=entered + DAY))
    (row,) = sql.select("win_back")
    assert (row["lapsed_at"], row["days_since_last_order"]) == (entered, 197)  # as of its enrolling run
    (later,) = sql.select("win_back", as_of=AS_OF + 3 * DAY)
    assert later == row
