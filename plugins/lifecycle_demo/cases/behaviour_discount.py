"""Planted cases of the behaviour_discount journey (include/sql/segments/behaviour_discount.sql).

A known customer's view that makes it 4 views of the same product within 7 days (the view
7 days earlier counts) is the moment; if the customer placed no order (cancelled ones aside)
from 30 days before it until the run and never ordered the product, the first hourly run
after it sends a 10% code for that product, valid 7 days. At most one per customer and
product per 30 days. Every moment below sits 17 minutes past an hour, inside the demo's
window [A-3d, A), so the run ending at the next full hour picks it; nothing depends on the
seed or the shop's size. `details` carries the time of the qualifying view ("clock") for the
cases that enter.
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import DAY, HOUR, MINUTE, PlantedCase

PAST = 17 * MINUTE  # moments sit this far past an hour: the next hourly run is unambiguous


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def view(c, sku: str, *times: int) -> None:
        """One page view of `sku` at each time (a session each; seconds on page do not matter)."""
        p = shop.by_sku[sku]
        for t in times:
            shop.out.add("page_views", next(shop.ids["view"]), c.customer_id, c.anonymous_id,
                         f"s-bd-{c.customer_id}-{t}", p.product_id, p.category, shop.ts(t), 45)

    def case(name: str, description: str, c, sku: str, clock: int | None = None, orders=(), **more) -> None:
        details = (() if clock is None else (("clock", clock),)) + tuple(more.items())
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders),
                                 product_id=shop.by_sku[sku].product_id, details=details))

    def delivered(ordered: int) -> tuple[str, int, int]:
        return "delivered", ordered + 20 * HOUR, ordered + 3 * DAY

    c = shop.planted_customer("behaviour_discount_four_views", "DE")
    clock = -40 * HOUR + PAST
    view(c, "SHO-02-T2", -6 * DAY + 3 * HOUR, -4 * DAY + 10 * HOUR, -3 * DAY + 20 * HOUR, clock)
    case("behaviour_discount_four_views", "Classic Trail Running Shoes viewed exactly 4 times in 5 days, the 4th at "
         "A-40h+17m; never ordered anything: a 10% code for the shoes by the run ending A-39h", c, "SHO-02-T2", clock)

    c = shop.planted_customer("behaviour_discount_three_views", "DE")
    view(c, "FUR-02-T2", -5 * DAY, -3 * DAY, -30 * HOUR + PAST)
    case("behaviour_discount_three_views", "Classic Lounge Chair viewed 3 times in 4 days (the last at A-30h+17m): "
         "never selected", c, "FUR-02-T2")

    c = shop.planted_customer("behaviour_discount_spread_out", "DE")
    view(c, "JEW-01-T2", -9 * DAY + PAST, -5 * DAY, -3 * DAY, -40 * HOUR + PAST)
    case("behaviour_discount_spread_out", "Classic Sterling Silver Necklace viewed 4 times in 7 days and 8 hours "
         "(A-9d .. A-40h): never 4 within 7 days, never selected", c, "JEW-01-T2")

    c = shop.planted_customer("behaviour_discount_exactly_seven_days", "DE")
    clock = -DAY + PAST
    view(c, "SPO-02-T2", clock - 7 * DAY, -6 * DAY, -3 * DAY, clock)
    case("behaviour_discount_exactly_seven_days", "Classic Adjustable Dumbbells viewed 4 times, the first exactly 7 "
         "days before the 4th (A-1d+17m): within 7 days, a code by the run ending A-1d+1h", c, "SPO-02-T2", clock)

    c = shop.planted_customer("behaviour_discount_recent_order", "DE")
    other = shop.add_order(c, -25 * DAY, shop.items("CLO-01-T1"), delivered(-25 * DAY))
    view(c, "CLO-02-T2", -5 * DAY, -4 * DAY, -3 * DAY, -50 * HOUR + PAST)
    case("behaviour_discount_recent_order", "Classic Merino Hoodie viewed 4 times (the 4th at A-50h+17m), but a "
         "T-shirt ordered at A-25d (within 30 days): never selected", c, "CLO-02-T2", orders=[other])

    c = shop.planted_customer("behaviour_discount_order_31_days_ago", "DE")
    clock = -50 * HOUR + PAST
    other = shop.add_order(c, clock - 31 * DAY, shop.items("CLO-01-T1"), delivered(clock - 31 * DAY))
    view(c, "COS-02-T2", -5 * DAY, -4 * DAY, -3 * DAY, clock)
    case("behaviour_discount_order_31_days_ago", "Classic Vitamin C Serum viewed 4 times (the 4th at A-50h+17m); the "
         "last order (a T-shirt) was 31 days before that: a code for the serum by the run ending A-49h",
         c, "COS-02-T2", clock, orders=[other])

    c = shop.planted_customer("behaviour_discount_bought_product_before", "DE")
    bought = shop.add_order(c, -200 * DAY, shop.items("HOU-01-T2"), delivered(-200 * DAY))
    view(c, "HOU-01-T2", -5 * DAY, -4 * DAY, -3 * DAY, -30 * HOUR + PAST)
    case("behaviour_discount_bought_product_before", "Classic Cast Iron Pan viewed 4 times (the 4th at A-30h+17m), "
         "but bought at A-200d: never selected (never ordered that product)", c, "HOU-01-T2", orders=[bought])

    c = shop.planted_customer("behaviour_discount_cancelled_purchase", "DE")
    clock = -30 * HOUR + PAST
    cancelled = shop.add_order(c, -10 * DAY, shop.items("HOU-02-T2"), ("cancelled", None, None))
    view(c, "HOU-02-T2", -5 * DAY, -4 * DAY, -3 * DAY, clock)
    case("behaviour_discount_cancelled_purchase", "Classic Electric Kettle ordered at A-10d but the order was "
         "cancelled; viewed 4 times, the 4th at A-30h+17m: a cancelled order is no order, a code by the run ending "
         "A-29h", c, "HOU-02-T2", clock, orders=[cancelled])

    c = shop.planted_customer("behaviour_discount_ordered_after_views", "DE")
    view(c, "SHO-01-T2", -5 * DAY, -4 * DAY, -3 * DAY, -22 * HOUR + 10 * MINUTE)
    order = shop.add_order(c, -22 * HOUR + 40 * MINUTE, shop.items("CLO-01-T2"), ("placed", None, None))
    case("behaviour_discount_ordered_after_views", "Classic Everyday Sneakers viewed for the 4th time at A-22h+10m, "
         "then a T-shirt ordered at A-22h+40m, before the next run: never selected", c, "SHO-01-T2", orders=[order])

    c = shop.planted_customer("behaviour_discount_cooldown", "DE")
    clock = -48 * HOUR + PAST
    view(c, "FUR-01-T2", clock - 4 * HOUR, clock - 3 * HOUR, clock - 2 * HOUR, clock, -25 * HOUR + PAST)
    case("behaviour_discount_cooldown", "Classic Oak Side Table: 4 views by A-48h+17m (a code by the run ending "
         "A-47h), a 5th at A-25h+17m: still 4+ in 7 days, but one code per customer and product in 30 days",
         c, "FUR-01-T2", clock)

    c = shop.planted_customer("behaviour_discount_two_products", "DE")
    first, second = -45 * HOUR + PAST, -44 * HOUR + PAST
    view(c, "JEW-02-T2", -4 * DAY, -3 * DAY, -2 * DAY - 2 * HOUR, first)
    view(c, "COS-01-T2", -4 * DAY + HOUR, -3 * DAY + HOUR, -2 * DAY - HOUR, second)
    case("behaviour_discount_two_products", "Classic Stud Earrings (4th view A-45h+17m) and Classic Hydrating Face "
         "Cream (4th view A-44h+17m), each viewed 4 times: two codes, one per product", c, "JEW-02-T2", first,
         second_product=shop.by_sku["COS-01-T2"].product_id, second_clock=second)

    c = shop.planted_customer("behaviour_discount_no_consent", "DE", consent=None)
    clock = -36 * HOUR + PAST
    view(c, "SPO-01-T2", -5 * DAY, -4 * DAY, -3 * DAY, clock)
    case("behaviour_discount_no_consent", "Classic Yoga Mat viewed 4 times (the 4th at A-36h+17m) by a customer "
         "without email consent: enrolled with a code, the email recorded suppressed (no consent)",
         c, "SPO-01-T2", clock)
    return cases
