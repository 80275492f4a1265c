"""Planted cases of the referral journey (include/sql/segments/referral.sql).

A customer qualifies with 2+ orders that were not cancelled, the last within 30 days of the
run, and no review below 4 stars; at most one enrollment per 180 days. The demo's daily runs
end at A-2d, A-1d and A, and the demo starts with no enrollments, so everyone qualifying at
A-2d enters then (invitation at once, reminder due 7 days later, A+5d: after the demo's
window; tests/journeys/test_referral.py runs on to A+6d). Orders are of soft goods only, away
from the replenishment and review-request journeys' timings as far as possible.

A referral is a shop.referrals row; the shop writes it when someone signs up through a
customer's link /r/<code> (the code's owner is lifecycle.coupons.customer_id) and sets
converted_order_id when that friend orders.
"""

from __future__ import annotations

from dataclasses import replace

from lifecycle_demo.demo_shop import COUNTRIES, DAY, HOUR, PlantedCase

_GOODS = ("CLO-01-T1", "SHO-01-T2", "JEW-01-T1", "CLO-02-T1", "JEW-02-T1")


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []
    germany = next(c for c in COUNTRIES if c.code == "DE")

    def fulfilment(ordered: int) -> tuple[str, int | None, int | None]:
        if ordered + 3 * DAY < 0:
            return "delivered", ordered + 20 * HOUR, ordered + 3 * DAY
        return ("shipped", ordered + 20 * HOUR, None) if ordered + 20 * HOUR < 0 else ("placed", None, None)

    def customer(name: str, description: str, ordered: list[int], *, cancelled: tuple[int, ...] = (),
                 ratings: dict[int, int] | None = None, consent: str | None = "opted_in"):
        """A planted customer with orders at the `ordered` offsets (those listed in `cancelled`
        were cancelled) and reviews {order index: stars}, each written 5 days after its order."""
        c = shop.planted_customer(name, "DE", consent=consent)
        orders = []
        for i, t in enumerate(ordered):
            status = ("cancelled", None, None) if t in cancelled else fulfilment(t)
            orders.append(shop.add_order(c, t, shop.items(_GOODS[i % len(_GOODS)]), status))
        for i, stars in (ratings or {}).items():
            shop.add_review(orders[i].order_id, orders[i].items[0][0], c.customer_id, stars, ordered[i] + 5 * DAY)
        case = PlantedCase(name, description, c.customer_id, c.email, order_ids=tuple(o.order_id for o in orders))
        cases.append(case)
        return c, case

    def referral(referrer, created: int, email: str, converted_order_id: int | None = None) -> int:
        referral_id = next(shop.ids["referral"])
        shop.out.add("referrals", referral_id, referrer.customer_id, email, shop.ts(created), converted_order_id)
        return referral_id

    def friend(name: str, signed_up: int, ordered: int, status: tuple = ("placed", None, None)):
        """Someone who signed up through a referral link and ordered (no consent: not a marketing contact yet)."""
        f = shop.add_customer(germany, signed_up, None, f"planted.{name}@example.com")
        return f, shop.add_order(f, ordered, shop.items("CLO-01-T2", "SHO-02-T1"), status)

    customer("referral_invited", "orders A-60d and A-3d, 5-star review: enters at A-2d, invitation with a personal "
             "link (15% for friends); refers nobody, so the reminder comes due at A+5d", [-60 * DAY, -3 * DAY],
             ratings={0: 5})

    c, case = customer("referral_converts", "orders A-90d, A-45d, A-9d: enters at A-2d; invites a friend at A-2d+4h "
                       "who signs up at A-1d-2h and orders at A-10h (converted_order_id): the run ending A converts "
                       "with the friend's order and sends the thank-you with a 20% reward code; no reminder",
                       [-90 * DAY, -45 * DAY, -9 * DAY], ratings={1: 5})
    f, order = friend("referral_converts_friend", -DAY - 2 * HOUR, -10 * HOUR)
    rid = referral(c, -2 * DAY + 4 * HOUR, f.email, order.order_id)
    cases[cases.index(case)] = replace(case, details=(("referral_id", rid), ("friend_customer_id", f.customer_id),
                                                      ("friend_order_id", order.order_id)))

    c, _ = customer("referral_referred_pending", "orders A-20d and A-4d: enters at A-2d; invites a friend at "
                    "A-1d+3h who has not ordered: no thank-you, and the reminder (due A+5d) is skipped",
                    [-20 * DAY, -4 * DAY])
    referral(c, -DAY + 3 * HOUR, "friend.pending@example.net")

    c, _ = customer("referral_friend_cancelled", "orders A-50d and A-6d: enters at A-2d; the friend invited at "
                       "A-2d+6h ordered at A-1d-4h but cancelled: no conversion, no thank-you; the reminder is "
                       "skipped (they referred someone)", [-50 * DAY, -6 * DAY])
    f, order = friend("referral_cancelled_friend", -2 * DAY + 7 * HOUR, -DAY - 4 * HOUR, ("cancelled", None, None))
    referral(c, -2 * DAY + 6 * HOUR, f.email, order.order_id)

    c, _ = customer("referral_referred_before", "orders A-70d and A-8d: enters at A-2d; a friend they referred at "
                    "A-20d, before the invitation, orders at A-1d-2h: not this journey's conversion (no thank-you), "
                    "and not a referral since entry (reminder due A+5d)", [-70 * DAY, -8 * DAY])
    f, order = friend("referral_earlier_friend", -20 * DAY + HOUR, -DAY - 2 * HOUR)
    referral(c, -20 * DAY, f.email, order.order_id)

    customer("referral_second_order_later", "orders A-40d and A-1d-5h: one order as of A-2d (not selected), enters "
             "at the run ending A-1d", [-40 * DAY, -DAY - 5 * HOUR])
    customer("referral_active_boundary", "orders A-80d and A-32d: the last exactly 30 days before the run ending "
             "A-2d, which selects them (the 30 days include their start); a day later it would be too late",
             [-80 * DAY, -32 * DAY])
    customer("referral_lapsed", "orders A-80d and A-33d: last order more than 30 days before every run, never "
             "selected", [-80 * DAY, -33 * DAY])
    customer("referral_low_review", "three orders (A-40d, A-15d, A-5d) but a 3-star review at A-10d: never "
             "selected", [-40 * DAY, -15 * DAY, -5 * DAY], ratings={1: 3})
    customer("referral_four_stars", "orders A-40d and A-5d, a 4-star review at A-35d: 4 stars is not below 4, "
             "enters at A-2d", [-40 * DAY, -5 * DAY], ratings={0: 4})
    customer("referral_cancelled_order", "orders A-40d and A-5d, the second cancelled: one order counts, never "
             "selected", [-40 * DAY, -5 * DAY], cancelled=(-5 * DAY,))
    customer("referral_no_consent", "orders A-30d and A-4d, never gave email consent: enters at A-2d, the "
             "invitation is recorded suppressed (no consent)", [-30 * DAY, -4 * DAY], consent=None)
    return cases
