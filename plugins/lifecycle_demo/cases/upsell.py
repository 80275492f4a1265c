"""Planted cases of the upsell journey (include/sql/segments/upsell.sql).

An open cart's item with an upsell link to a higher tier gets the upgrade shown 10 minutes
after the cart's last change (web push if the customer can receive push, else email), and a
follow-up email 24 hours later unless the upgrade is in the cart by then. The demo's hourly
runs end on the hour, so a cart changed at A-31h-25m is upsold by the run ending A-31h and
followed up by the run ending A-7h. Every case below plays out within the last 32 hours.

An item taken out of the cart after the upsell (an exit) cannot be planted: the shop keeps
no history of removed cart lines, so a static shop never shows the item in the cart first.
tests/journeys/test_upsell.py changes carts between runs for that, and for a swap to the upgrade.
"""

from __future__ import annotations

from base64 import urlsafe_b64encode

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lifecycle_demo.demo_shop import DAY, HOUR, MINUTE, PlantedCase, push_subscription_keys


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def b64(raw: bytes) -> str:
        return urlsafe_b64encode(raw).rstrip(b"=").decode()

    def push_subscriber(customer, consent: bool) -> None:
        """A live browser subscription (keys the demo's push service can derive from the seed),
        with or without push consent."""
        subscription_id = next(shop.ids["subscription"])
        private_key, auth_secret = push_subscription_keys(subscription_id, shop.seed)
        p256dh = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        shop.out.add("push_subscriptions", subscription_id, customer.customer_id,
                     f"https://push.example.net/send/{shop.token(16)}", b64(p256dh), b64(auth_secret),
                     shop.ts(-200 * DAY), None)
        if consent:
            shop.add_consent(customer.customer_id, "push", "opted_in", -200 * DAY, None, "browser_prompt")

    def case(name: str, description: str, lines: list[tuple[str, int]], *, upsold: str | None,
             upgrade: str | None = None, orders: tuple = (), push: bool | None = None, country: str = "DE",
             updated: int | None = None) -> None:
        """A cart of `lines` (sku, added at), last changed at the latest line (or `updated`);
        `orders` are (offset, skus, status)."""
        c = shop.planted_customer(name, country)
        if push is not None:
            push_subscriber(c, consent=push)
        added = [t for _, t in lines]
        last = updated if updated is not None else max(added)
        cart = shop.add_cart(c.customer_id, min(added) - 10 * MINUTE, last, shop.items(*[s for s, _ in lines]),
                             added=added)
        placed = [shop.add_order(c, t, shop.items(*skus), (status, None, None)) for t, skus, status in orders]
        details = (("upsold", upsold), ("upgrade", upgrade), ("cart_updated", last))
        cases.append(PlantedCase(name, description, c.customer_id, c.email, cart_id=cart,
                                 order_ids=tuple(o.order_id for o in placed),
                                 product_id=shop.by_sku[upsold].product_id if upsold else None, details=details))

    case("upsell_email", "T-shirt in the cart at A-31h-25m, no push: the Classic T-shirt shown by email in the run "
         "ending A-31h, follow-up email in the run ending A-7h",
         [("CLO-01-T1", -31 * HOUR - 25 * MINUTE)], upsold="CLO-01-T1", upgrade="CLO-01-T2")
    case("upsell_push", "30 vitamin tablets in the cart at A-31h-30m, live push subscription and push consent: "
         "the 90-tablet pack by web push in the run ending A-31h, follow-up by email at A-7h",
         [("VIT-01-T1", -31 * HOUR - 30 * MINUTE)], upsold="VIT-01-T1", upgrade="VIT-01-T2", push=True)
    case("upsell_push_without_consent", "live push subscription but no push consent: the upsell goes by email "
         "(run ending A-30h), follow-up at A-6h",
         [("COS-02-T1", -30 * HOUR - 40 * MINUTE)], upsold="COS-02-T1", upgrade="COS-02-T2", push=False)
    case("upsell_ordered_upgrade", "sneakers in the cart at A-30h-20m (upsold at A-30h), the Classic sneakers "
         "ordered at A-26h: converted with that order's total (run ending A-25h), no follow-up",
         [("SHO-01-T1", -30 * HOUR - 20 * MINUTE)], upsold="SHO-01-T1", upgrade="SHO-01-T2",
         orders=((-26 * HOUR, ("SHO-01-T2",), "placed"),))
    case("upsell_ordered_other", "pan in the cart at A-29h-20m (upsold at A-29h), the pan itself ordered at A-20h: "
         "exited (purchased_since_entry) in the run ending A-19h, no conversion, no follow-up",
         [("HOU-01-T1", -29 * HOUR - 20 * MINUTE)], upsold="HOU-01-T1", upgrade="HOU-01-T2",
         orders=((-20 * HOUR, ("HOU-01-T1",), "placed"),))
    case("upsell_cancelled_order", "necklace upsold at A-29h, an order of the upgrade at A-26h was cancelled: "
         "still in the journey, follow-up at A-5h",
         [("JEW-01-T1", -29 * HOUR - 30 * MINUTE)], upsold="JEW-01-T1", upgrade="JEW-01-T2",
         orders=((-26 * HOUR, ("JEW-01-T2",), "cancelled"),))
    case("upsell_top_tier", "only a top-tier item (no upsell link) in the cart: never enrolled",
         [("FUR-01-T3", -28 * HOUR - 20 * MINUTE)], upsold=None)
    case("upsell_ordered_within_wait", "cart changed at A-28h-30m and ordered 5 minutes later, before the upsell "
         "was due: never enrolled",
         [("SPO-01-T1", -28 * HOUR - 30 * MINUTE)], upsold=None,
         orders=((-28 * HOUR - 25 * MINUTE, ("SPO-01-T1",), "placed"),))
    case("upsell_cart_changed_after", "face cream upsold at A-28h; earrings added at A-20h: no second upsell, the "
         "follow-up stays at A-4h (24h after the first touch), with the context refreshed from the change at A-20h",
         [("COS-01-T1", -28 * HOUR - 20 * MINUTE), ("JEW-02-T1", -20 * HOUR)], upsold="COS-01-T1",
         upgrade="COS-01-T2")
    case("upsell_two_items", "dog food added A-27h-50m, espresso capsules A-27h-30m: one upsell per cart, for the "
         "item added last (capsules, run ending A-27h)",
         [("PET-01-T1", -27 * HOUR - 50 * MINUTE), ("COF-01-T1", -27 * HOUR - 30 * MINUTE)],
         upsold="COF-01-T1", upgrade="COF-01-T2")
    case("upsell_upgrade_added", "kettle upsold at A-27h, the Classic kettle added to the cart at A-20h: the "
         "follow-up (A-3h) is skipped, the customer already took the upgrade",
         [("HOU-02-T1", -27 * HOUR - 20 * MINUTE), ("HOU-02-T2", -20 * HOUR)], upsold="HOU-02-T1",
         upgrade="HOU-02-T2")
    case("upsell_upgrade_already_in_cart", "Omega-3 90 and Omega-3 30 in the cart: the 30 pack's upgrade is already "
         "there, so the 90 pack is upsold to the 180 pack (run ending A-26h)",
         [("VIT-02-T2", -26 * HOUR - 50 * MINUTE), ("VIT-02-T1", -26 * HOUR - 30 * MINUTE)],
         upsold="VIT-02-T2", upgrade="VIT-02-T3")
    case("upsell_due_on_the_hour", "cart changed at A-5h-10m: due at A-5h exactly, sent by the run ending A-5h",
         [("CLO-02-T1", -5 * HOUR - 10 * MINUTE)], upsold="CLO-02-T1", upgrade="CLO-02-T2")
    case("upsell_changed_just_before_a_run", "cart changed at A-3h-5m, only 5 minutes before the run ending A-3h: "
         "sent by the run ending A-2h",
         [("SHO-02-T1", -3 * HOUR - 5 * MINUTE)], upsold="SHO-02-T1", upgrade="SHO-02-T2")
    return cases
