"""Planted cases of the seasonal_offer journey (include/sql/segments/seasonal_offer.sql).

The offers are dated by the calendar, not by the anchor: the Christmas offer goes out on
1 December and the Thanksgiving offer 7 days before US Thanksgiving, each on the customer's
own calendar day. A demo of the days before 1 December therefore sends nothing; these
customers show what happens when the daily runs reach the send days (the journey test
runs them around 1 December 2026 and 18 November 2027). Orders are placed relative to the
anchor, so "price-sensitive" and "inactive" hold at any anchor in late November.
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import DAY, HOUR, PlantedCase


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def delivered(c, ordered: int, skus: tuple[str, ...], coupon: str | None = None):
        return shop.add_order(c, ordered, shop.items(*skus), ("delivered", ordered + 20 * HOUR, ordered + 3 * DAY),
                              coupon=coupon)

    def case(name: str, description: str, c, orders=()) -> None:
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders)))

    c = shop.planted_customer("seasonal_offer_us", "US")
    orders = [delivered(c, -40 * DAY, ("CLO-01-T2",)), delivered(c, -12 * DAY, ("HOU-02-T1",))]
    case("seasonal_offer_us", "US customer, email consent, orders at A-40d and A-12d without coupons: the "
         "Thanksgiving offer (7 days before US Thanksgiving) and the Christmas offer (1 December), best sellers", c,
         orders)

    c = shop.planted_customer("seasonal_offer_non_us", "DE")
    orders = [delivered(c, -20 * DAY, ("COS-01-T1",))]
    case("seasonal_offer_non_us", "German customer, email consent: the Christmas offer only (Thanksgiving is for "
         "US customers)", c, orders)

    c = shop.planted_customer("seasonal_offer_price_sensitive", "GB")
    orders = [delivered(c, -50 * DAY, ("SPO-01-T1",), "SPRING15"), delivered(c, -30 * DAY, ("CLO-02-T1",)),
              delivered(c, -9 * DAY, ("JEW-02-T1",), "VIP20")]
    case("seasonal_offer_price_sensitive", "2 of 3 orders used a coupon (A-50d, A-9d): price-sensitive, gets the "
         "value variant of the Christmas offer (offer_value), not the regular one", c, orders)

    c = shop.planted_customer("seasonal_offer_inactive", "FR")
    orders = [delivered(c, -75 * DAY, ("FUR-01-T2",))]
    case("seasonal_offer_inactive", "last order at A-75d: inactive (no order in 60 days) but not lapsed for win-back "
         "(90 days); gets the Christmas offer like everyone with consent", c, orders)

    c = shop.planted_customer("seasonal_offer_far_timezone", "JP")
    orders = [delivered(c, -25 * DAY, ("COF-01-T2",))]
    case("seasonal_offer_far_timezone", "customer in Asia/Tokyo (UTC+9): 1 December starts at 15:00 UTC on "
         "30 November, so the daily run ending at midnight UTC on 1 December (09:00 in Tokyo) sends the Christmas "
         "offer; customers west of UTC get it from the next run", c, orders)

    c = shop.planted_customer("seasonal_offer_no_consent", "US", consent=None)
    orders = [delivered(c, -15 * DAY, ("SHO-01-T1",))]
    case("seasonal_offer_no_consent", "US customer without email consent: never selected for an offer", c, orders)
    return cases
