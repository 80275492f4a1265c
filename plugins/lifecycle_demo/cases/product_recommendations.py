"""Planted cases of the product_recommendations journey (include/sql/segments/product_recommendations.sql).

The journey is weekly (Mondays 00:00 UTC). The cases below are laid out for weekly runs whose
as_of is A-11d, A-4d and A+3d, plus a mid-week run at A-2d (in the tests, A = Friday
2026-11-20: the Mondays 9, 16 and 23 November and Wednesday 18 November, which shares ISO
week 47 with the 16th). Note that `lifecycle demo` (3 days by default) runs a weekly journey
only when it simulates at least 7 days.

Two planted customers buy the Signature Stud Earrings (JEW-02-T3) together with the
Signature Vitamin C Serum (COS-02-T3) in 10 orders over the 90 days before A-11d, so for
anyone who viewed or bought the earrings the serum scores at least 10: far above what the
random shop's orders give any pair (a few), so it is among the picks unless it was bought.
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import DAY, HOUR, PlantedCase

EARRINGS = "JEW-02-T3"  # the seed product of the cases
SERUM = "COS-02-T3"  # bought together with it in the planted bundle orders


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []
    earrings, serum = shop.by_sku[EARRINGS], shop.by_sku[SERUM]

    def delivered(ordered: int) -> tuple[str, int | None, int | None]:
        if ordered + 3 * DAY < 0:
            return "delivered", ordered + 20 * HOUR, ordered + 3 * DAY
        return "placed", None, None

    def case(name: str, description: str, c, orders=(), sku: str = EARRINGS) -> None:
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders), product_id=shop.by_sku[sku].product_id,
                                 details=(("seed_sku", EARRINGS), ("paired_sku", SERUM))))

    for n, first in ((1, -85 * DAY), (2, -78 * DAY)):
        name = f"product_recommendations_bundle_buyer_{n}"
        c = shop.planted_customer(name, "FR")
        orders = [shop.add_order(c, first + i * 15 * DAY, shop.items(EARRINGS, SERUM), delivered(first + i * 15 * DAY))
                  for i in range(5)]
        case(name, f"5 orders of earrings + serum (A{first // DAY}d, then every 15 days): with the other bundle buyer, "
             "10 orders that make the serum the earrings' strongest 'bought together' product; picks never show "
             "either (bought)", c, orders, SERUM)

    c = shop.planted_customer("product_recommendations_viewer", "DE")
    shop.add_session(c.customer_id, c.anonymous_id, -3 * DAY, [earrings])
    case("product_recommendations_viewer", "viewed the earrings at A-3d, never ordered: not in the run at A-4d (the "
         "view is after its as_of), picked (serum first or near it) by the mid-week run at A-2d (week 47) and again "
         "at A+3d (week 48)", c)

    c = shop.planted_customer("product_recommendations_bought_pick", "GB")
    old = shop.add_order(c, -200 * DAY, shop.items(SERUM), delivered(-200 * DAY))
    shop.add_session(c.customer_id, c.anonymous_id, -5 * DAY, [earrings])
    case("product_recommendations_bought_pick", "viewed the earrings at A-5d; bought the serum at A-200d: the serum "
         "is never picked for them (ever bought), the other top products are; one enrollment for week 47 although "
         "the runs at A-4d and A-2d both select them", c, [old], SERUM)

    c = shop.planted_customer("product_recommendations_inactive", "NL")
    old = shop.add_order(c, -50 * DAY, shop.items(EARRINGS), delivered(-50 * DAY))
    shop.add_session(c.customer_id, c.anonymous_id, -45 * DAY, [serum])
    case("product_recommendations_inactive", "last order A-50d, last view A-45d: nothing in the 30 days before any "
         "run, never picked for", c, [old])

    c = shop.planted_customer("product_recommendations_cancelled_only", "ES")
    cancelled = shop.add_order(c, -6 * DAY, shop.items(EARRINGS), ("cancelled", None, None))
    case("product_recommendations_cancelled_only", "one cancelled order of the earrings at A-6d, no views: a "
         "cancelled order is not a purchase, never picked for", c, [cancelled])

    c = shop.planted_customer("product_recommendations_no_consent", "DE", consent=None)
    shop.add_session(c.customer_id, c.anonymous_id, -5 * DAY, [earrings])
    case("product_recommendations_no_consent", "viewed the earrings at A-5d, no email consent: enrolled by the run at "
         "A-4d, the email recorded as suppressed (no consent)", c)

    c = shop.planted_customer("product_recommendations_converts", "DE")
    shop.add_session(c.customer_id, c.anonymous_id, -6 * DAY, [earrings])
    order = shop.add_order(c, -DAY, shop.items(SERUM), delivered(-DAY))
    case("product_recommendations_converts", "viewed the earrings at A-6d: picks (with the serum) from the run at "
         "A-4d; ordered the serum at A-1d: converted with that order by the run at A+3d, whose new picks leave the "
         "serum out", c, [order], SERUM)

    c = shop.planted_customer("product_recommendations_ordered_other", "DE")
    shop.add_session(c.customer_id, c.anonymous_id, -6 * DAY, [earrings])
    order = shop.add_order(c, -DAY, shop.items(EARRINGS), delivered(-DAY))
    case("product_recommendations_ordered_other", "viewed the earrings at A-6d: picks from the run at A-4d; ordered "
         "the earrings themselves at A-1d (the product they looked at, so not a pick): no conversion, the "
         "week-47 enrollment completes at A+3d", c, [order])
    return cases
