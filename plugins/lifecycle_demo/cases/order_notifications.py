"""Planted cases of the order_notifications journey (include/sql/segments/order_notifications.sql).

Transactional: an order confirmation by the first hourly run after the order, a shipping
notice by the first run after shipped_at, whatever the customer's email consent; a cancelled
order gets neither. Events sit at minutes past the hour, so the run that sends each notice is
the one ending at the next full hour (e.g. ordered at A-4h40m: the run ending A-4h). The
demo's hourly runs cover [A-3d, A); each run looks back 24 hours.

Cases that need the engine's own tables (an unsubscribe, a hard bounce) or a second invalid
address (the shop holds one, cart_invalid_email's) cannot live in the demo shop:
tests/journeys/test_order_notifications.py plants them itself.
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import DAY, HOUR, MINUTE, PlantedCase


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def case(name: str, description: str, customer, orders, **details) -> None:
        cases.append(PlantedCase(name, description, customer.customer_id, customer.email,
                                 order_ids=tuple(o.order_id for o in orders),
                                 details=tuple(sorted(details.items()))))

    c = shop.planted_customer("order_notifications_placed", "GB")
    order = shop.add_order(c, -4 * HOUR - 40 * MINUTE, shop.items("CLO-01-T2", "SHO-01-T1"), ("placed", None, None))
    case("order_notifications_placed", "ordered A-4h40m, not shipped yet: confirmation by the run ending A-4h, "
         "no shipping notice", c, [order])

    c = shop.planted_customer("order_notifications_shipped", "DE")
    ordered, shipped = -35 * HOUR - 40 * MINUTE, -29 * HOUR - 45 * MINUTE
    items = [(shop.by_sku["CLO-02-T2"], 2), (shop.by_sku["VIT-01-T2"], 1)]
    order = shop.add_order(c, ordered, items, ("shipped", shipped, None), coupon="WELCOME10")
    case("order_notifications_shipped", "2 hoodies and vitamins (code WELCOME10) ordered A-35h40m, shipped "
         "A-29h45m: confirmation by the run ending A-35h, shipping notice by the run ending A-29h", c, [order])

    c = shop.planted_customer("order_notifications_same_hour", "NL")
    order = shop.add_order(c, -19 * HOUR - 55 * MINUTE, shop.items("HOU-02-T1"),
                           ("shipped", -19 * HOUR - 20 * MINUTE, None))
    case("order_notifications_same_hour", "ordered A-19h55m and shipped A-19h20m: both notices by the run ending "
         "A-19h, the confirmation first", c, [order])

    c = shop.planted_customer("order_notifications_no_consent", "US", consent=None)
    order = shop.add_order(c, -29 * HOUR - 50 * MINUTE, shop.items("SPO-01-T1"),
                           ("shipped", -9 * HOUR - 50 * MINUTE, None))
    case("order_notifications_no_consent", "a customer without any email consent row: ordered A-29h50m, shipped "
         "A-9h50m, gets both notices (transactional mail needs no consent)", c, [order])

    c = shop.planted_customer("order_notifications_opted_out", "FR", consent="opted_out")
    order = shop.add_order(c, -11 * HOUR - 30 * MINUTE, shop.items("COS-02-T1", "JEW-02-T1"),
                           ("shipped", -HOUR - 30 * MINUTE, None))
    case("order_notifications_opted_out", "email consent withdrawn at A-1d, ordered A-11h30m, shipped A-1h30m: "
         "still gets both notices", c, [order])

    c = shop.planted_customer("order_notifications_cancelled", "ES")
    order = shop.add_order(c, -39 * HOUR - 50 * MINUTE, shop.items("FUR-01-T1"), ("cancelled", None, None))
    case("order_notifications_cancelled", "ordered A-39h50m and cancelled: no confirmation, no shipping notice",
         c, [order])

    c = shop.planted_customer("order_notifications_backorder", "DE")
    order = shop.add_order(c, -6 * DAY, shop.items("FUR-02-T2"), ("shipped", -40 * HOUR - 15 * MINUTE, None))
    case("order_notifications_backorder", "ordered A-6d (before the runs), shipped A-40h15m: only the shipping "
         "notice, by the run ending A-40h", c, [order])

    c = shop.planted_customer("order_notifications_two_orders", "GB")
    first = shop.add_order(c, -14 * HOUR - 55 * MINUTE, shop.items("COF-01-T1"), ("placed", None, None))
    second = shop.add_order(c, -14 * HOUR - 25 * MINUTE, shop.items("COF-02-T1"), ("placed", None, None))
    case("order_notifications_two_orders", "two orders at A-14h55m and A-14h25m: two confirmations (one per "
         "order) by the run ending A-14h", c, [first, second])
    return cases
