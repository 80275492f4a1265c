"""Planted cases of the welcome journey (include/sql/segments/welcome.sql).

A customer is welcomed by the hourly run whose interval holds their welcome clock, the
later of the account's creation and the double opt-in of an opted-in email consent (if the
confirmation came within 7 days of the sign-up and no order came before the run). The demo
runs hourly over [A-3d, A): a clock at exactly A-3d is the only one whose second email
(3 days on) is due inside the demo, so the cases that need email_2 start then.
The shop's tables hold the present state, so a consent withdrawn after email_1 or an order
with the welcome code (made at run time) cannot be planted here; tests/journeys/test_welcome.py
plants those itself.
"""

from __future__ import annotations

from lifecycle_demo.demo_shop import COUNTRIES, DAY, HOUR, MINUTE, PLANTED_EMAIL_DOMAIN, PlantedCase

_DE = next(c for c in COUNTRIES if c.code == "DE")


def plant(shop) -> list[PlantedCase]:
    cases: list[PlantedCase] = []

    def customer(name: str, created: int, consent: str | None = "opted_in", given: int | None = None,
                 confirmed: int | None = None, source: str = "account_signup", updated: int | None = None):
        """A German customer opened at `created`; email consent given at `given` (default: a minute
        after sign-up) and confirmed (double opt-in) at `confirmed` (None: not confirmed)."""
        c = shop.add_customer(_DE, created, None, f"planted.{name}@{PLANTED_EMAIL_DOMAIN}")
        if consent:
            given = created + MINUTE if given is None else given
            shop.add_consent(c.customer_id, "email", consent, updated if updated is not None else (confirmed or given),
                             confirmed, source)
        return c

    def case(name: str, description: str, c, orders=(), welcome_at: int | None = None) -> None:
        details = () if welcome_at is None else (("welcome_at", welcome_at),)
        cases.append(PlantedCase(name, description, c.customer_id, c.email,
                                 order_ids=tuple(o.order_id for o in orders), details=details))

    c = customer("welcome_series", -3 * DAY - 10 * MINUTE, confirmed=-3 * DAY)
    case("welcome_series", "signed up A-3d-10m, double opt-in confirmed at A-3d (the clock): email_1 with the code by "
         "the run ending A-3d+1h, no order, email_2 with the bestsellers by the run ending A", c, welcome_at=-3 * DAY)

    c = customer("welcome_cancelled_order", -3 * DAY - 30 * MINUTE, confirmed=-3 * DAY)
    order = shop.add_order(c, -2 * DAY, shop.items("CLO-01-T1"), ("cancelled", None, None))
    case("welcome_cancelled_order", "like welcome_series, but an order at A-2d that was cancelled: no exit, email_2 "
         "by the run ending A", c, [order], welcome_at=-3 * DAY)

    created = -2 * DAY - 20 * HOUR
    c = customer("welcome_late_confirmation", created, confirmed=-DAY - 2 * HOUR - 30 * MINUTE)
    case("welcome_late_confirmation", "signed up A-2d-20h, confirmed the double opt-in 42h later (A-1d-2h30m, a later "
         "interval): welcomed then, by the run ending A-1d-2h, not at sign-up", c,
         welcome_at=-DAY - 2 * HOUR - 30 * MINUTE)

    # The subscription confirmed long ago is attached to the account when it is opened (updated_at).
    created = -2 * DAY + 30 * MINUTE
    c = customer("welcome_subscribed_before_signup", created, given=-41 * DAY, confirmed=-40 * DAY,
                 source="newsletter_form", updated=created)
    case("welcome_subscribed_before_signup", "newsletter subscriber (double opt-in A-40d) who opened an account at "
         "A-2d+30m: welcomed at sign-up, by the run ending A-2d+1h", c, welcome_at=created)

    c = customer("welcome_confirmed_too_late", -20 * DAY, confirmed=-DAY - 5 * HOUR, source="newsletter_form")
    case("welcome_confirmed_too_late", "account opened A-20d, double opt-in only at A-1d-5h (19 days later, beyond "
         "confirm_within_days = 7): a later subscription, not a sign-up, never welcomed", c)

    c = customer("welcome_no_consent", -2 * DAY + 2 * HOUR + 15 * MINUTE, consent=None)
    case("welcome_no_consent", "signed up A-2d+2h15m without any email consent: never welcomed", c)

    created = -2 * DAY + 3 * HOUR + 15 * MINUTE
    c = customer("welcome_opted_out", created, consent="opted_out", confirmed=created + 5 * MINUTE, updated=-DAY)
    case("welcome_opted_out", "signed up A-2d+3h15m, confirmed 5 minutes later, opted out at A-1d: never welcomed "
         "(the shop's consent is opted out)", c)

    c = customer("welcome_confirmation_pending", -2 * DAY + 4 * HOUR + 15 * MINUTE)
    case("welcome_confirmation_pending", "signed up A-2d+4h15m, email consent opted in but the double opt-in never "
         "confirmed: never welcomed", c)

    created = -2 * DAY - 5 * HOUR
    c = customer("welcome_first_order", created, confirmed=created + 10 * MINUTE)
    order = shop.add_order(c, -DAY, shop.items("CLO-02-T2", "COS-01-T1"), ("placed", None, None))
    case("welcome_first_order", "welcomed at A-2d-4h50m (email_1), first order at A-1d without the code: converted "
         "(welcome_first_order) with the order's total, no email_2", c, [order], welcome_at=created + 10 * MINUTE)

    created = -DAY + HOUR + 10 * MINUTE
    c = customer("welcome_ordered_before_welcome", created, confirmed=created + 5 * MINUTE)
    order = shop.add_order(c, created + 30 * MINUTE, shop.items("HOU-02-T1"), ("placed", None, None))
    case("welcome_ordered_before_welcome", "signed up A-1d+1h10m, confirmed 5 minutes later and ordered at "
         "A-1d+1h40m, before the run ending A-1d+2h: never welcomed (no first-order code after the first order)",
         c, [order])
    return cases
