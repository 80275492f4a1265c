"""Planted cases of the just_because journey (include/sql/segments/just_because.sql).

A customer's surprise day in year Y is 1 January + floor(h * days_in_Y / 2^32), with h the
first 32 bits of md5(customer id): it depends on the id alone, and planted ids must not depend
on the anchor (`demo_shop.planted_cases()` gives readers of a shop the same ids). So these
cases cannot follow the demo's window; they sit on fixed days instead: before each case, ids
whose day (on 2026's calendar) misses CASE_DAYS are skipped (never used by any row;
`created_at` stays indexed by id). The cases fire when the daily runs reach 18-20 November
(in Berlin: the runs ending 18-20 November at midnight UTC; in the Americas, where midnight UTC
is the previous evening, the case is a day earlier and fires on the next run), every year;
tests/journeys/test_just_because.py runs those days. In a demo on other dates the journey
fires for the random customers whose day it is (about 1 in 365 of those with an order and
email consent, per day).
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import date, timedelta

from lifecycle_demo.demo_shop import DAY, PlantedCase


def surprise_date(customer_id: int, year: int) -> date:
    h = int(hashlib.md5(str(customer_id).encode()).hexdigest()[:8], 16)
    days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
    return date(year, 1, 1) + timedelta(days=h * days // 2**32)


def _skip_ids_until(shop, dates: set[date]) -> int:
    """Advance the shop's customer ids to the next one whose surprise day is in `dates`; return it."""
    counter = shop.ids["customer"]
    for customer_id in counter:
        if any(surprise_date(customer_id, d.year) == d for d in dates):
            shop.ids["customer"] = itertools.chain([customer_id], counter)  # the next add_customer takes it
            return customer_id
        shop.created_at.append(0)  # an id no row uses: keep created_at[customer_id] aligned
    raise AssertionError("unreachable: the id counter is endless")


CASE_DAYS = {date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)}  # Berlin: runs ending on these days
AMERICAS_DAYS = {date(2026, 11, 17), date(2026, 11, 18), date(2026, 11, 19)}  # the Americas: runs a day later


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []
    east, west = CASE_DAYS, AMERICAS_DAYS

    def customer(name: str, country: str = "DE", dates: set[date] = east, **kwargs):
        customer_id = _skip_ids_until(shop, dates)
        c = shop.planted_customer(name, country, **kwargs)
        assert c.customer_id == customer_id
        return c

    def case(name: str, description: str, c, orders=()) -> None:
        day = surprise_date(c.customer_id, 2026)
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders), details=(("surprise_date", day),)))

    c = customer("just_because_surprise")
    order = shop.delivered_order(c, -60 * DAY, shop.items("CLO-01-T1"))
    case("just_because_surprise", "Berlin, one order (A-63d), email consent, surprise day 18-20 November: enrolled "
         "by the run ending on that day, email with a 15% code", c, [order])

    c = customer("just_because_americas", "US", west)
    order = shop.delivered_order(c, -100 * DAY, shop.items("COS-01-T1"))
    case("just_because_americas", "a US time zone, one order, surprise day 17-19 November: enrolled by the run ending "
         "the day after (midnight UTC is the evening before there)", c, [order])

    c = customer("just_because_no_consent", consent=None)
    order = shop.delivered_order(c, -60 * DAY, shop.items("CLO-01-T1"))
    case("just_because_no_consent", "Berlin, one order, surprise day 18-20 November, no email consent: never selected",
         c, [order])

    c = customer("just_because_opted_out", consent="opted_out")
    order = shop.delivered_order(c, -60 * DAY, shop.items("CLO-01-T1"))
    case("just_because_opted_out", "Berlin, one order, surprise day 18-20 November, email consent withdrawn at A-1d: "
         "never selected", c, [order])

    c = customer("just_because_no_order")
    case("just_because_no_order", "Berlin, email consent, surprise day 18-20 November, never ordered: never selected", c)

    c = customer("just_because_cancelled_only")
    order = shop.add_order(c, -30 * DAY, shop.items("CLO-01-T1"), ("cancelled", None, None))
    case("just_because_cancelled_only", "Berlin, email consent, surprise day 18-20 November, only a cancelled order: "
         "never selected", c, [order])
    return cases
