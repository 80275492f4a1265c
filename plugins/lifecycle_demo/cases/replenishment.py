"""Planted cases of the replenishment journey (include/sql/segments/replenishment.sql).

A consumable order line is due for a reminder at
    ordered_at + quantity x pack_units / units_per_day days - 3 days - shipping lead time,
where the lead time is the median order-to-delivery time of past orders to the customer's
country. The demo shop's random orders take 2-3 days to Germany (median about 2.5 days) and
5-8 days to the US (about 6.5), so the cases below sit half a day or more away from the
daily runs at midnight: their outcome does not depend on the seed or the shop's size.
The demo's daily runs end at A-2d, A-1d and A.
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import DAY, HOUR, PlantedCase

DE_LEAD = 2 * DAY + 12 * HOUR  # the planted German orders take as long as the random ones, on average


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def fulfilment(ordered: int, lead: int = DE_LEAD) -> tuple[str, int | None, int | None]:
        """Delivered after `lead` if that is before the anchor, else still on its way."""
        if ordered + lead < 0:
            return "delivered", ordered + 20 * HOUR, ordered + lead
        return "shipped", ordered + 20 * HOUR, None

    def case(name: str, description: str, customer, orders, sku: str) -> None:
        cases.append(PlantedCase(name, description, customer.customer_id, customer.email,
                                 order_ids=tuple(o.order_id for o in orders),
                                 product_id=shop.by_sku[sku].product_id))

    # 90 tablets at 1 a day: due 90 - 3 - ~2.5 days after the order.
    c = shop.planted_customer("replenishment_due", "DE")
    ordered = -85 * DAY
    order = shop.add_order(c, ordered, shop.items("VIT-01-T2"), fulfilment(ordered))
    case("replenishment_due", "90 tablets (1 a day) ordered A-85d, Germany: due about A-12h (90 - 3 - 2.5 days), "
         "reminded by the run ending A", c, [order], "VIT-01-T2")

    # Two consumables in one order, both lasting 30 days (2 packs of 15 days, 1 pack of 30), and a T-shirt.
    c = shop.planted_customer("replenishment_two_lines", "DE")
    ordered = -26 * DAY
    items = [(shop.by_sku["VIT-01-T1"], 1), (shop.by_sku["VIT-02-T1"], 2), (shop.by_sku["CLO-01-T1"], 1)]
    order = shop.add_order(c, ordered, items, fulfilment(ordered))
    case("replenishment_two_lines", "one order at A-26d: 30 tablets (1 a day) and 2 x 30 capsules (2 a day), both due "
         "about A-1d-12h, two reminders by the run ending A-1d; the T-shirt in it is not a consumable",
         c, [order], "VIT-02-T1")

    c = shop.planted_customer("replenishment_reordered_before_due", "DE")
    first = shop.add_order(c, -26 * DAY, shop.items("VIT-01-T1"), fulfilment(-26 * DAY))
    again = shop.add_order(c, -6 * DAY, shop.items("VIT-01-T1"), fulfilment(-6 * DAY))
    case("replenishment_reordered_before_due", "30 tablets ordered A-26d (due about A-1d-12h), ordered again at A-6d: "
         "never reminded (the new order is due weeks later)", c, [first, again], "VIT-01-T1")

    c = shop.planted_customer("replenishment_reorder_cancelled", "DE")
    first = shop.add_order(c, -26 * DAY, shop.items("VIT-01-T1"), fulfilment(-26 * DAY))
    again = shop.add_order(c, -6 * DAY, shop.items("VIT-01-T1"), ("cancelled", None, None))
    case("replenishment_reorder_cancelled", "like replenishment_reordered_before_due, but the reorder was cancelled: "
         "reminded by the run ending A-1d", c, [first, again], "VIT-01-T1")

    # 24 dog food portions at 1 a day: due 24 - 3 - ~2.5 days after the order.
    c = shop.planted_customer("replenishment_reordered_after_reminder", "DE")
    first = shop.add_order(c, -21 * DAY, shop.items("PET-01-T2"), fulfilment(-21 * DAY))
    again = shop.add_order(c, -DAY - 6 * HOUR, [(shop.by_sku["PET-01-T2"], 2)], ("placed", None, None))
    case("replenishment_reordered_after_reminder", "24 dog food portions ordered A-21d: due about A-2d-12h, reminded by "
         "the run ending A-2d; ordered again at A-1d-6h: converts (that order's total) in the run ending A-1d",
         c, [first, again], "PET-01-T2")

    c = shop.planted_customer("replenishment_no_consent", "DE", consent=None)
    order = shop.add_order(c, -26 * DAY, shop.items("VIT-01-T1"), fulfilment(-26 * DAY))
    case("replenishment_no_consent", "30 tablets ordered A-26d by a customer without email consent: enrolled at "
         "A-1d, reminder recorded suppressed (no consent)", c, [order], "VIT-01-T1")

    # 10 espresso capsules at 2 a day last 5 days: less than 3 days + shipping.
    c = shop.planted_customer("replenishment_runs_out_before_delivery", "DE")
    order = shop.add_order(c, -12 * HOUR, shop.items("COF-01-T1"), ("placed", None, None))
    case("replenishment_runs_out_before_delivery", "10 capsules (2 a day) ordered A-12h: the reminder would be due "
         "before the order itself (5 - 3 - 2.5 days), so it is never sent", c, [order], "COF-01-T1")

    c = shop.planted_customer("replenishment_cancelled_order", "DE")
    order = shop.add_order(c, -26 * DAY, shop.items("VIT-01-T1"), ("cancelled", None, None))
    case("replenishment_cancelled_order", "30 tablets ordered A-26d, order cancelled: never reminded",
         c, [order], "VIT-01-T1")

    # The same product bought on the same day: US shipping takes longer, so the reminder comes earlier.
    c = shop.planted_customer("replenishment_far_country", "US")
    order = shop.add_order(c, -21 * DAY, shop.items("VIT-01-T1"), fulfilment(-21 * DAY, 6 * DAY + 12 * HOUR))
    case("replenishment_far_country", "30 tablets ordered A-21d, shipped to the US (about 6.5 days): due about A-12h "
         "(30 - 3 - 6.5 days), reminded by the run ending A", c, [order], "VIT-01-T1")
    c = shop.planted_customer("replenishment_near_country", "DE")
    order = shop.add_order(c, -21 * DAY, shop.items("VIT-01-T1"), fulfilment(-21 * DAY))
    case("replenishment_near_country", "the same order as replenishment_far_country, shipped to Germany (about 2.5 "
         "days): due about A+3d-12h, not yet reminded", c, [order], "VIT-01-T1")
    return cases
