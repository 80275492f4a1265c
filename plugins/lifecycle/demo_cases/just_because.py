"""Planted cases of the just_because journey (include/sql/segments/just_because.sql).

A customer's surprise day in year Y is 1 January + floor(h * days_in_Y / 2^32), with h the
first 32 bits of md5(customer id). The demo's daily runs end at A-2d, A-1d and A (midnight
UTC), so a customer in Berlin is reached when their day is one of those three dates, and a
customer in the Americas (where midnight UTC is the previous evening) one day later.

The day depends only on the customer id, and ids are handed out in planting order, so a case
here cannot choose its day: before each case, ids whose day misses the demo's dates are
skipped (never used by any row; `created_at` stays indexed by id). The gap costs nothing and
makes every case fire in the demo, whatever day it is run.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import date, timedelta

from lifecycle.demo_shop import DAY, PlantedCase


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


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []
    anchor = shop.anchor.date()
    east = {anchor - timedelta(days=n) for n in (2, 1, 0)}  # local dates of the demo's runs in Berlin
    west = {anchor - timedelta(days=n) for n in (3, 2, 1)}  # ... and in the Americas

    def customer(name: str, country: str = "DE", dates: set[date] = east, **kwargs):
        customer_id = _skip_ids_until(shop, dates)
        c = shop.planted_customer(name, country, **kwargs)
        assert c.customer_id == customer_id
        return c

    def case(name: str, description: str, c, orders=()) -> None:
        day = next(surprise_date(c.customer_id, y) for y in (anchor.year - 1, anchor.year)
                   if surprise_date(c.customer_id, y) in east | west)
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders), details=(("surprise_date", day),)))

    c = customer("just_because_surprise")
    order = shop.delivered_order(c, -60 * DAY, shop.items("CLO-01-T1"))
    case("just_because_surprise", "Berlin, one order (A-63d), email consent, surprise day in the demo: enrolled by "
         "the run ending on that day, email with a 15% code", c, [order])

    c = customer("just_because_americas", "US", west)
    order = shop.delivered_order(c, -100 * DAY, shop.items("COS-01-T1"))
    case("just_because_americas", "a US time zone, one order, surprise day in the demo: enrolled by the run ending "
         "the day after (midnight UTC is the evening before there)", c, [order])

    c = customer("just_because_no_consent", consent=None)
    order = shop.delivered_order(c, -60 * DAY, shop.items("CLO-01-T1"))
    case("just_because_no_consent", "Berlin, one order, surprise day in the demo, no email consent: never selected",
         c, [order])

    c = customer("just_because_opted_out", consent="opted_out")
    order = shop.delivered_order(c, -60 * DAY, shop.items("CLO-01-T1"))
    case("just_because_opted_out", "Berlin, one order, surprise day in the demo, email consent withdrawn at A-1d: "
         "never selected", c, [order])

    c = customer("just_because_no_order")
    case("just_because_no_order", "Berlin, email consent, surprise day in the demo, never ordered: never selected", c)

    c = customer("just_because_cancelled_only")
    order = shop.add_order(c, -30 * DAY, shop.items("CLO-01-T1"), ("cancelled", None, None))
    case("just_because_cancelled_only", "Berlin, email consent, surprise day in the demo, only a cancelled order: "
         "never selected", c, [order])
    return cases
