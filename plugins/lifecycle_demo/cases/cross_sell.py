"""Planted cases of the cross_sell journey (include/sql/segments/cross_sell.sql).

The demo's daily runs end at A-2d, A-1d and A (a run picks up orders of the 3 days before
it): the thank-you is due 1 day after the order and goes out with the first run at or after
that; the follow-up is due 3 days after the order. Every product has two cross_sell links:
the same tier of the partner category (clothing <-> shoes, cosmetics <-> jewellery,
furniture <-> household, sports equipment <-> vitamins).
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import DAY, HOUR, PlantedCase


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def fulfilment(ordered: int) -> tuple[str, int | None, int | None]:
        if ordered + 3 * DAY < 0:
            return "delivered", ordered + 20 * HOUR, ordered + 3 * DAY
        if ordered + 20 * HOUR < 0:
            return "shipped", ordered + 20 * HOUR, None
        return "placed", None, None

    def order(c, ordered: int, *skus: str, status: str | None = None):
        return shop.add_order(c, ordered, shop.items(*skus), (status, None, None) if status else fulfilment(ordered))

    def case(name: str, description: str, c, orders, sku: str | None = None) -> None:
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders),
                                 product_id=shop.by_sku[sku].product_id if sku else None))

    c = shop.planted_customer("cross_sell_full_sequence", "DE")
    first = order(c, -4 * DAY - 2 * HOUR, "CLO-01-T1")
    case("cross_sell_full_sequence", "a T-shirt ordered at A-4d-2h, never ordered again: thank-you with both "
         "Essential shoes (due A-3d-2h), follow-up due A-1d-2h", c, [first])

    c = shop.planted_customer("cross_sell_converts", "FR")
    first = order(c, -3 * DAY - 6 * HOUR, "COS-01-T2")
    again = order(c, -DAY - 10 * HOUR, "JEW-01-T2")
    case("cross_sell_converts", "a face cream at A-3d-6h: thank-you (due A-2d-6h) suggests the Classic necklace "
         "and earrings; the necklace ordered at A-1d-10h: converted with that order, no follow-up",
         c, [first, again], "JEW-01-T2")

    c = shop.planted_customer("cross_sell_ordered_other", "NL")
    first = order(c, -3 * DAY - 3 * HOUR, "FUR-01-T1")
    again = order(c, -DAY - 8 * HOUR, "CLO-02-T1")
    case("cross_sell_ordered_other", "a side table at A-3d-3h: thank-you (due A-2d-3h) suggests the household "
         "items; a hoodie (not suggested) ordered at A-1d-8h: exits without a conversion, no follow-up; the hoodie "
         "order gets its own thank-you (shoes) at A", c, [first, again])

    c = shop.planted_customer("cross_sell_next_order_decides", "DE")
    first = order(c, -3 * DAY - 12 * HOUR, "SPO-01-T1")
    other = order(c, -2 * DAY + 2 * HOUR, "HOU-01-T1")
    suggested = order(c, -2 * DAY + 8 * HOUR, "VIT-01-T1")
    case("cross_sell_next_order_decides", "a yoga mat at A-3d-12h (thank-you due A-2d-12h suggests the Essential "
         "vitamins), then a pan at A-2d+2h and one of the vitamins at A-2d+8h: the next order (the pan) decides, "
         "so the run at A-1d exits it without a conversion", c, [first, other, suggested], "VIT-01-T1")

    c = shop.planted_customer("cross_sell_already_bought", "GB")
    old = order(c, -60 * DAY, "SHO-01-T1")
    first = order(c, -2 * DAY - 12 * HOUR, "CLO-01-T1")
    case("cross_sell_already_bought", "sneakers bought at A-60d, a T-shirt at A-2d-12h: the thank-you (due "
         "A-1d-12h) suggests only the trail shoes, not the sneakers they already have", c, [old, first], "SHO-01-T1")

    c = shop.planted_customer("cross_sell_nothing_to_suggest", "DE")
    old = order(c, -40 * DAY, "SHO-01-T2", "SHO-02-T2")
    first = order(c, -2 * DAY, "CLO-01-T2")
    case("cross_sell_nothing_to_suggest", "both Classic shoes bought at A-40d, then a Classic T-shirt at A-2d: "
         "nothing left to suggest, never enrolled", c, [old, first])

    c = shop.planted_customer("cross_sell_top_three", "ES")
    first = order(c, -2 * DAY - 6 * HOUR, "CLO-02-T2", "COS-02-T2")
    case("cross_sell_top_three", "a hoodie and a serum at A-2d-6h: four linked products (two shoes, two "
         "jewellery), the thank-you (due A-1d-6h) shows the three most often bought with the order", c, [first])

    c = shop.planted_customer("cross_sell_cancelled", "DE")
    first = order(c, -2 * DAY, "CLO-01-T1", status="cancelled")
    case("cross_sell_cancelled", "a cancelled order at A-2d: never enrolled", c, [first])

    c = shop.planted_customer("cross_sell_no_consent", "DE", consent=None)
    first = order(c, -2 * DAY - 4 * HOUR, "SPO-02-T1")
    case("cross_sell_no_consent", "dumbbells at A-2d-4h by a customer without email consent: enrolled, the "
         "thank-you (due A-1d-4h) recorded as suppressed (no consent)", c, [first])

    c = shop.planted_customer("cross_sell_reordered_before_email", "DE")
    first = order(c, -2 * DAY - 20 * HOUR, "HOU-02-T2")
    again = order(c, -2 * DAY - 14 * HOUR, "CLO-01-T3")
    case("cross_sell_reordered_before_email", "a kettle at A-2d-20h and a T-shirt (not a suggestion) at A-2d-14h, "
         "both before the run at A-2d: the kettle order exits before its thank-you; the T-shirt order gets one "
         "(due A-1d-14h)", c, [first, again])

    c = shop.planted_customer("cross_sell_converted_before_email", "FR")
    first = order(c, -2 * DAY - 20 * HOUR, "COS-01-T3")
    again = order(c, -2 * DAY - 10 * HOUR, "JEW-01-T3")
    case("cross_sell_converted_before_email", "a face cream at A-2d-20h, then the Signature necklace it suggests at "
         "A-2d-10h, both before the run at A-2d: the first order converts at once (a later purchase does not "
         "remove a suggestion), no email for it; the necklace order gets its own thank-you",
         c, [first, again], "JEW-01-T3")
    return cases
