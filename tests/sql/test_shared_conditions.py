"""The reusable conditions (README, "Conditions"): purchased_since_entry, redeemed_coupon,
opened_or_clicked_first_email, price_sensitive, inactive_60d. Journey-specific conditions are
tested next to their journey's segment (test_<journey>.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from lifecycle.tracking import record

from .conftest import AS_OF, DAY, HOUR, Enrollment

ENTERED = AS_OF - 5 * DAY


def test_purchased_since_entry_the_first_order_after_entry_converts(sql):
    sql.customer(1)
    sql.order(11, 1, ENTERED + DAY, 5, total=30)
    sql.order(10, 1, ENTERED + DAY, 5, total=20)  # same instant: the smaller id came first
    sql.order(12, 1, ENTERED + 2 * DAY, 5, total=40)
    hits = sql.holds("purchased_since_entry", Enrollment("e1", 1, ENTERED))
    assert hits == {"e1": (ENTERED + DAY, "10", Decimal("20.00"))}


def test_purchased_since_entry_ignores_orders_before_entry_cancelled_or_at_as_of(sql):
    sql.customer(1)
    sql.order(10, 1, ENTERED, 5)  # at entry: not after it
    sql.order(11, 1, ENTERED + DAY, 5, status="cancelled")
    sql.order(12, 1, AS_OF, 5)  # at as_of: not before it
    sql.customer(2)
    sql.order(20, 2, ENTERED + HOUR, 5)  # someone else's order
    assert sql.holds("purchased_since_entry", Enrollment("e1", 1, ENTERED)) == {}


def coupon(sql, journey: str, key: str, enrollment_id: int, code: str, valid_from, days: int = 14) -> None:
    sql.given("lifecycle.coupons", {"code": code, "journey": journey, "enrollment_id": enrollment_id, "step": "email",
                                    "customer_id": key.split(":")[0], "percent_off": 20, "valid_from": valid_from,
                                    "valid_until": valid_from + days * DAY})


def test_redeemed_coupon_an_order_with_the_code_while_valid(sql):
    ids = sql.enroll("birthday", *(Enrollment(f"{c}:2026", c, ENTERED) for c in (1, 2, 3, 4)))
    for c in (1, 2, 3, 4):
        coupon(sql, "birthday", f"{c}:2026", ids[f"{c}:2026"], f"BD{c}", ENTERED)
    sql.order(10, 1, ENTERED + DAY, 5, coupon_code="BD1", total=80)
    sql.order(20, 2, ENTERED + 14 * DAY, 5, coupon_code="BD2")  # at valid_until: expired
    sql.order(30, 3, ENTERED + DAY, 5, coupon_code="BD3", status="cancelled")
    sql.order(40, 4, ENTERED + DAY, 5, coupon_code="BD1")  # someone else's code
    hits = sql.holds("redeemed_coupon", as_of=ENTERED + 20 * DAY, journey="birthday")
    assert hits == {"1:2026": (ENTERED + DAY, "10", Decimal("80.00"))}


def test_opened_or_clicked_after_the_first_email_went_out(sql):
    ids = sql.enroll("birthday", *(Enrollment(f"{c}:2026", c, ENTERED) for c in (1, 2, 3, 4)))
    statuses = {1: "sent", 2: "sent", 3: "suppressed", 4: "sent"}
    sql.given("lifecycle.messages", *({"idempotency_key": f"k{c}", "journey": "birthday", "enrollment_id": ids[f"{c}:2026"],
                                       "customer_id": str(c), "step": "email", "channel": "email", "status": st,
                                       "due_at": ENTERED, "planned_for": ENTERED, "planned_run_id": "r"}
                                      for c, st in statuses.items()))
    sql.given("engagement_events", {"customer_id": 1, "event": "open", "occurred_at": ENTERED + HOUR},
              {"customer_id": 1, "event": "click", "occurred_at": ENTERED + 2 * HOUR},
              {"customer_id": 2, "event": "open", "occurred_at": ENTERED - HOUR},  # before the email
              {"customer_id": 3, "event": "click", "occurred_at": ENTERED + HOUR},  # the email did not go out
              {"customer_id": 4, "event": "delivered", "occurred_at": ENTERED + HOUR})
    hits = sql.holds("opened_or_clicked_first_email", journey="birthday")
    assert hits == {"1:2026": (ENTERED + HOUR, None, None)}  # the first open


def track(sql, message_id: int, kind: str, at: datetime, agent_class: str = "human") -> None:
    """One request to the open pixel or click redirect of `message_id`, as the web service records
    it (lifecycle.tracking.record: a human click also records the open)."""
    with sql.engine.begin() as conn:
        url = "https://shop.example.com/" if kind == "click" else None
        assert record(conn, message_id, kind, agent_class, at, url)[0] == 1


def message_ids(sql) -> dict[str, int]:
    with sql.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT idempotency_key, message_id FROM lifecycle.messages")).all())


def test_an_open_or_click_we_tracked_on_the_first_email_counts_if_a_person_made_it(sql):
    """Our own tracking (lifecycle.engagement) satisfies the condition, exact to the first email and
    only for people: an Apple MPP prefetch or a link scanner is not the customer opening it."""
    customers = range(1, 7)
    ids = sql.enroll("birthday", *(Enrollment(f"{c}:2026", c, ENTERED) for c in customers))
    sql.given("lifecycle.messages", *({"idempotency_key": f"k{c}:{step}", "journey": "birthday",
                                       "enrollment_id": ids[f"{c}:2026"], "customer_id": str(c), "step": step,
                                       "channel": "email", "status": "sent", "due_at": due, "planned_for": due,
                                       "planned_run_id": "r"}
                                      for c in customers for step, due in (("email", ENTERED),
                                                                           ("follow_up", ENTERED + DAY))))
    message = message_ids(sql)
    track(sql, message["k1:email"], "open", ENTERED + 2 * HOUR)                   # the pixel, in a mail client
    track(sql, message["k1:email"], "open", ENTERED + HOUR, "privacy_proxy")      # (MPP first: not the time)
    track(sql, message["k2:email"], "open", ENTERED + HOUR, "privacy_proxy")      # Apple MPP's prefetch only
    track(sql, message["k3:email"], "click", ENTERED + HOUR, "scanner")           # a link scanner only
    track(sql, message["k4:follow_up"], "click", ENTERED + 2 * DAY)               # another email, not the first
    track(sql, message["k5:email"], "click", AS_OF)                               # at as_of: not before it
    track(sql, message["k6:email"], "click", ENTERED + 3 * HOUR)                  # a click (it implies the open)
    sql.given("engagement_events", {"customer_id": 6, "event": "open", "occurred_at": ENTERED + HOUR})  # provider
    hits = sql.holds("opened_or_clicked_first_email", journey="birthday")
    assert hits == {"1:2026": (ENTERED + 2 * HOUR, None, None),
                    "6:2026": (ENTERED + HOUR, None, None)}  # the first of both sources


def test_price_sensitive_at_least_half_the_orders_with_a_code(sql):
    sql.order(10, 1, ENTERED - 9 * DAY, 5, coupon_code="X")
    sql.order(11, 1, ENTERED - 8 * DAY, 5)  # one of two: half
    sql.order(20, 2, ENTERED - 9 * DAY, 5, coupon_code="X")
    sql.order(21, 2, ENTERED - 8 * DAY, 5, coupon_code="")  # an empty code is no code
    sql.order(22, 2, ENTERED - 7 * DAY, 5)
    sql.order(30, 3, ENTERED - 9 * DAY, 5, coupon_code="X", status="cancelled")
    sql.order(31, 3, ENTERED - 8 * DAY, 5)
    sql.customer(4)  # no orders
    hits = sql.holds("price_sensitive", *(Enrollment(str(c), c, ENTERED) for c in (1, 2, 3, 4)), journey="seasonal_offer")
    assert set(hits) == {"1"}


def test_inactive_60d_no_order_in_the_60_days_before_as_of(sql):
    sql.order(10, 1, AS_OF - 61 * DAY, 5)
    sql.customer(2)  # never ordered
    sql.order(30, 3, AS_OF - 60 * DAY, 5)  # exactly 60 days: active
    sql.order(40, 4, AS_OF - DAY, 5, status="cancelled")
    sql.order(50, 5, AS_OF, 5)  # at as_of: not before it
    sql.order(60, 6, AS_OF - DAY, 5)
    hits = sql.holds("inactive_60d", *(Enrollment(str(c), c, ENTERED) for c in range(1, 7)), journey="seasonal_offer")
    assert set(hits) == {"1", "2", "4", "5"}


def test_a_warehouse_without_provider_events_still_counts_our_own_tracking(sql):
    """shop.engagement_events (the provider's export) is optional: in a warehouse without it, the
    rules that also read the provider's opens and clicks run on our own tracking alone (the
    condition, and the sunset lift at the start of planning and of every send batch)."""
    from lifecycle.suppression import lift_sunsets, start_sunset

    ids = sql.enroll("birthday", *(Enrollment(f"{c}:2026", c, ENTERED) for c in (1, 2)))
    sql.given("lifecycle.messages", *({"idempotency_key": f"k{c}", "journey": "birthday", "enrollment_id": ids[f"{c}:2026"],
                                       "customer_id": str(c), "step": "email", "channel": "email", "status": "sent",
                                       "due_at": ENTERED, "planned_for": ENTERED, "planned_run_id": "r"}
                                      for c in (1, 2)))
    message = message_ids(sql)
    with sql.engine.begin() as conn:
        start_sunset(conn, ["2"], "email", "win_back", ENTERED)
    track(sql, message["k1"], "open", ENTERED + HOUR)
    track(sql, message["k2"], "click", ENTERED + 2 * HOUR)
    with sql.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE shop.engagement_events RENAME TO engagement_events_hidden")
    try:
        hits = sql.holds("opened_or_clicked_first_email", journey="birthday")
        with sql.engine.begin() as conn:
            lifted = lift_sunsets(conn, AS_OF)
            sunset = conn.execute(sa.text("SELECT lifted_at, lifted_reason, lifted_ref FROM lifecycle.suppressions "
                                          "WHERE customer_id = '2'")).one()
    finally:
        with sql.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE shop.engagement_events_hidden RENAME TO engagement_events")
    assert hits == {"1:2026": (ENTERED + HOUR, None, None), "2:2026": (ENTERED + 2 * HOUR, None, None)}
    assert lifted == 1 and tuple(sunset) == (ENTERED + 2 * HOUR, "clicked", f"message {message['k2']}")
