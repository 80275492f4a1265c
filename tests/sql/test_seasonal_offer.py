"""seasonal_offer.sql and its conditions: customers with email consent (and an account before
as_of) whose calendar day at as_of is an offer's send day for their country (Christmas: 1
December, everyone; Thanksgiving: 7 days before, US only). seasonal_offer_ordered_in_window:
an order after entry, before the window's end (context ends_at) and as_of.
seasonal_offer_clicked_or_ordered: a click since the offer email went out, or an order since entry."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import sqlalchemy as sa

from lifecycle.tracking import record

from .conftest import DAY, HOUR, Enrollment

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
THANKSGIVING_SEND = datetime(2026, 11, 19, tzinfo=UTC)  # Thanksgiving 2026 is 26 November


def test_christmas_for_everyone_thanksgiving_for_the_us(sql):
    sql.customer(1, country="US", timezone="UTC")
    sql.customer(2, country="DE", timezone="Europe/Berlin")
    sql.given("products", {"product_id": 5, "price": 30}, {"product_id": 6, "price": 5}, {"product_id": 7, "price": 20})
    sql.order(90, 1, DEC_1 - 2 * DAY, 5, 7)
    rows = {r["offer_key"]: r for r in sql.select("seasonal_offer", as_of=DEC_1)}
    assert set(rows) == {"1:christmas:2026", "2:christmas:2026"}
    # the picks as product references (no card, no price): best sellers, then the unsold by id;
    # value picks priced at or below the median (20)
    assert rows["1:christmas:2026"]["bestsellers"] == [{"product_id": 5}, {"product_id": 7}, {"product_id": 6}]
    assert rows["1:christmas:2026"]["value_picks"] == [{"product_id": 7}, {"product_id": 6}]
    assert (rows["2:christmas:2026"]["last_day"], rows["2:christmas:2026"]["ends_at"]) == (
        date(2026, 12, 25), datetime(2026, 12, 25, 23, tzinfo=UTC))  # midnight in Berlin
    assert sql.keys("seasonal_offer", as_of=THANKSGIVING_SEND) == {"1:thanksgiving:2026"}


def test_no_consent_another_day_or_another_zone_get_no_offer(sql):
    sql.customer(1, consent=None, timezone="UTC")
    sql.customer(2, consent="opted_out", timezone="UTC")
    sql.customer(3, timezone="America/New_York")  # still 30 November there
    sql.customer(4, timezone="UTC", created_at=DEC_1)  # account at as_of
    assert sql.keys("seasonal_offer", as_of=DEC_1) == set()
    # five hours later: 1 December in New York, and 4's account is older than as_of
    assert sql.keys("seasonal_offer", as_of=DEC_1 + 5 * HOUR) == {"3:christmas:2026", "4:christmas:2026"}


def test_an_order_inside_the_window_converts(sql):
    context = {"ends_at": datetime(2026, 12, 26, tzinfo=UTC).isoformat()}
    sql.order(10, 1, DEC_1 + 2 * DAY, 5, total=40)
    sql.order(20, 2, datetime(2026, 12, 26, tzinfo=UTC), 5)  # at the window's end: outside
    sql.order(30, 3, DEC_1 + DAY, 5, status="cancelled")
    enrollments = [Enrollment(f"{c}:christmas:2026", c, DEC_1, context) for c in (1, 2, 3)]
    hits = sql.holds("seasonal_offer_ordered_in_window", *enrollments, as_of=datetime(2026, 12, 28, tzinfo=UTC),
                     journey="seasonal_offer")
    assert hits == {"1:christmas:2026": (DEC_1 + 2 * DAY, "10", Decimal("40.00"))}


def test_clicked_since_the_offer_email_or_ordered_since_entry(sql):
    ids = sql.enroll("seasonal_offer", *(Enrollment(f"{c}:christmas:2026", c, DEC_1) for c in (1, 2, 3, 4)))
    sql.given("lifecycle.messages", *({"idempotency_key": f"k{c}", "journey": "seasonal_offer",
                                       "enrollment_id": ids[f"{c}:christmas:2026"], "customer_id": str(c),
                                       "step": "offer", "channel": "email", "status": status, "due_at": DEC_1,
                                       "planned_for": DEC_1, "planned_run_id": "r"}
                                      for c, status in ((1, "sent"), (2, "sent"), (3, "suppressed"), (4, "sent"))))
    sql.given("engagement_events", {"customer_id": 1, "event": "click", "occurred_at": DEC_1 + HOUR},
              {"customer_id": 2, "event": "open", "occurred_at": DEC_1 + HOUR},  # an open is not a click
              {"customer_id": 3, "event": "click", "occurred_at": DEC_1 + HOUR})  # no offer email went out
    sql.order(40, 4, DEC_1 + DAY, 5)
    hits = sql.holds("seasonal_offer_clicked_or_ordered", as_of=DEC_1 + 3 * DAY, journey="seasonal_offer")
    assert set(hits) == {"1:christmas:2026", "4:christmas:2026"}


def test_a_click_we_tracked_on_the_offer_email_counts_if_a_person_made_it(sql):
    """Our own tracking (lifecycle.engagement): a person's click on the offer email holds; a link
    scanner's click, an open (even a person's) or a click on another email does not."""
    customers = range(1, 6)
    ids = sql.enroll("seasonal_offer", *(Enrollment(f"{c}:christmas:2026", c, DEC_1) for c in customers))
    sql.given("lifecycle.messages", *({"idempotency_key": f"k{c}:{step}", "journey": "seasonal_offer",
                                       "enrollment_id": ids[f"{c}:christmas:2026"], "customer_id": str(c),
                                       "step": step, "channel": "email", "status": "sent", "due_at": due,
                                       "planned_for": due, "planned_run_id": "r"}
                                      for c in customers for step, due in (("offer", DEC_1),
                                                                           ("reminder", DEC_1 + 3 * DAY))))
    with sql.engine.begin() as conn:
        message = dict(conn.execute(sa.text("SELECT idempotency_key, message_id FROM lifecycle.messages")).all())
        for key, kind, at, agent in (
                ("k1:offer", "click", DEC_1 + HOUR, "human"),          # a person clicks the offer
                ("k2:offer", "click", DEC_1 + HOUR, "scanner"),        # a security gateway follows its links
                ("k3:offer", "open", DEC_1 + HOUR, "human"),           # an open is not a click
                ("k4:reminder", "click", DEC_1 + 4 * DAY, "human")):   # a click on another email
            url = "https://shop.example.com/p/x" if kind == "click" else None
            assert record(conn, message[key], kind, agent, at, url)[0] == 1
    sql.given("engagement_events", {"customer_id": 5, "event": "click", "occurred_at": DEC_1 + 2 * HOUR})  # provider
    hits = sql.holds("seasonal_offer_clicked_or_ordered", as_of=DEC_1 + 5 * DAY, journey="seasonal_offer")
    assert hits == {"1:christmas:2026": (DEC_1 + HOUR, None, None), "5:christmas:2026": (DEC_1 + 2 * HOUR, None, None)}
