"""replenishment end to end: daily runs ending A-4d .. A on a fresh demo shop (the `shop_db`
fixture, embedded PostgreSQL) plus test-only rows, against a real SMTP server, compared with
the outcome derived here from the shop tables (never the segment SQL).

Rules (the product's issue): every consumable product in an order (pack_units and
units_per_day) lasts quantity x pack_units / units_per_day days from the order; the reminder
is due 3 days before it runs out minus the shipping lead time to the customer's country:
the median delivered_at - ordered_at of the orders delivered to that country (by
shipping_country) before the run's as_of, 3 days when there are none. One enrollment per
order line (key order_id:product_id), entering at its due moment; a run selects lines due
in (as_of - 3 days, as_of] and due after the order itself. Ordering the product again (a
later non-cancelled order with it) before the run means the line is never selected, so
never enrolled; a reorder after the reminder converts with that order's total.

Holdout: 10% of customers, drawn per customer by the bucket rule (conftest.holdout_rule), enter
the journey but get no reminder (recorded skipped, reason 'holdout'); they still convert, which
is what the journey's lift is measured against.
"""

from __future__ import annotations

import html
import statistics
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
import sqlalchemy as sa

from lifecycle.render import money

from .conftest import (
    ANCHOR,
    DAY,
    HOUR,
    Candidate,
    Conversion,
    ExitRule,
    Expected,
    JourneyRun,
    Shop,
    StepRule,
    assert_same,
    check_conversions,
    check_enrollments,
    check_messages,
    check_quarantine,
    check_runs,
    check_smtp,
    holdout_rule,
    intervals_for,
    intervals_from_ends,
    journey_run,
    py,
    simulate,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "replenishment"
ENDS = [ANCHOR - i * DAY for i in range(4, -1, -1)]  # daily runs ending A-4d .. A
BUFFER = 3 * DAY  # the reminder is due this long before the supply runs out ...
DEFAULT_LEAD = 3 * DAY  # ... minus the lead time (this when nothing was delivered to the country)
LOOKBACK = 3 * DAY
MAX_LATENESS = 2 * DAY  # the daily schedule's default
COMPLETE_AFTER = 14 * DAY
STEPS = [StepRule("reminder", 0 * DAY)]
HOLDOUT_PERCENT = 10
SHOP_URL = "https://shop.example.com"

# ----------------------------------------------------------------------------- test-only rows
# Countries no demo customer lives in or ships to, so their lead times are exactly these rows.
PRODUCT = 990001  # "100 capsules at 1 per day" (the issue's example)
NZ_SHIPPER, NZ_BUYER, IE_SHIPPER, IE_BUYER, IS_BUYER = 990101, 990102, 990103, 990104, 990105
# The issue's example: shipping to NZ took 3, 5 and 9 days (median 5, mean 5.67), and the
# example's own order took 5 days: 100 capsules at 1 a day are due on day 100 - 3 - 5 = 92.
EXAMPLE_ORDERED = ANCHOR - 92 * DAY - 10 * HOUR  # day 0; due on day 92 = A-10h: the run ending A
# Lead time as of the run: IE's only delivery took 4 days until one that took 10 days
# arrives at A-1d-12h; from then on the median is 7 days. 100 - 3 - 7 = 90 days after
# IE_ORDERED is A-2d-6h, which the run ending A-1d finds (with 4 days it would be A+18h).
IE_ORDERED = ANCHOR - 92 * DAY - 6 * HOUR
IE_LATE_DELIVERY = ANCHOR - DAY - 12 * HOUR
# Nothing was ever delivered to IS: the default 3 days. Due 100 - 3 - 3 = 94 days later = A-3d-6h.
# That customer's order went to NZ (a gift, say): the lead time is still the customer's country's.
IS_ORDERED = ANCHOR - 97 * DAY - 6 * HOUR
# A held-out customer (bucket 2 of 100) of IS too: due 94 days after the order, at A-2d-6h
# (enrolled by the run ending A-2d), reorders at A-1d-6h: a conversion without a reminder.
HELD_BUYER = 990108
# A treated customer (bucket 82) of IS whose line came due at A-6d-6h: the first run (ending
# A-4d) finds it more than 2 days late, so its reminder is recorded expired (the random shop's
# late lines may all belong to held-out customers).
LATE_BUYER, LATE_ORDERED = 990106, ANCHOR - 100 * DAY - 6 * HOUR
HELD_ORDERED, HELD_REORDERED = ANCHOR - 96 * DAY - 6 * HOUR, ANCHOR - DAY - 6 * HOUR


def plant(engine: sa.Engine) -> dict[str, int]:
    """The test-only rows; returns the order id of each planted line."""
    created = ANCHOR - 400 * DAY
    with engine.begin() as conn:
        shirt = conn.execute(sa.text("SELECT product_id FROM shop.products WHERE sku = 'CLO-01-T1'")).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO shop.products (product_id, sku, name, category, brand, price, image_url, product_type, "
            "pack_units, units_per_day, tier) VALUES (:p, 'TST-CAP-100', 'Test Capsules, 100 capsules', 'vitamins', "
            "'Testlab', 24.90, 'https://cdn.shop.example.com/img/TST-CAP-100.jpg', 'consumable', 100, 1, 1)"),
            {"p": PRODUCT})
        for cid, country in ((NZ_SHIPPER, "NZ"), (NZ_BUYER, "NZ"), (IE_SHIPPER, "IE"), (IE_BUYER, "IE"),
                             (IS_BUYER, "IS"), (HELD_BUYER, "IS"), (LATE_BUYER, "IS")):
            conn.execute(sa.text(
                "INSERT INTO shop.customers (customer_id, email, first_name, last_name, country, timezone, locale, "
                "created_at) VALUES (:c, :e, 'Test', 'Buyer', :k, 'UTC', 'en_' || :k, :t)"),
                {"c": cid, "e": f"buyer{cid}@replenishment.example.com", "k": country, "t": created})
            conn.execute(sa.text(
                "INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, updated_at) "
                "VALUES (:c, 'email', 'opted_in', :t, 'test', :t)"), {"c": cid, "t": created})
        orders = [  # (order_id, customer, ordered, delivered, product, country)
            (990201, NZ_SHIPPER, ANCHOR - 200 * DAY, ANCHOR - 197 * DAY, shirt, "NZ"),
            (990202, NZ_SHIPPER, ANCHOR - 180 * DAY, ANCHOR - 175 * DAY, shirt, "NZ"),
            (990203, NZ_SHIPPER, ANCHOR - 160 * DAY, ANCHOR - 151 * DAY, shirt, "NZ"),
            (990204, NZ_BUYER, EXAMPLE_ORDERED, EXAMPLE_ORDERED + 5 * DAY, PRODUCT, "NZ"),
            (990205, IE_SHIPPER, ANCHOR - 150 * DAY, ANCHOR - 146 * DAY, shirt, "IE"),
            (990206, IE_SHIPPER, IE_LATE_DELIVERY - 10 * DAY, IE_LATE_DELIVERY, shirt, "IE"),
            (990207, IE_BUYER, IE_ORDERED, None, PRODUCT, "IE"),  # still on its way: not a lead time
            (990208, IS_BUYER, IS_ORDERED, None, PRODUCT, "NZ"),
            (990209, HELD_BUYER, HELD_ORDERED, None, PRODUCT, "IS"),
            (990210, HELD_BUYER, HELD_REORDERED, None, PRODUCT, "IS"),  # the reorder, after the due moment
            (990211, LATE_BUYER, LATE_ORDERED, None, PRODUCT, "IS"),
        ]
        for order_id, cid, ordered, delivered, product, country in orders:
            conn.execute(sa.text(
                "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, shipped_at, "
                "delivered_at, shipping_country) VALUES (:o, :c, :t, :s, 24.90, 'EUR', :t, :d, :k)"),
                {"o": order_id, "c": cid, "t": ordered, "s": "delivered" if delivered else "shipped",
                 "d": delivered, "k": country})
            conn.execute(sa.text(
                "INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) VALUES (:o, :p, 1, 24.90)"),
                {"o": order_id, "p": product})
    return {"example": 990204, "ie": 990207, "is": 990208, "held": 990209}


# ----------------------------------------------------------------------------- the rules, in Python


class Rules:
    """The journey's rules over the shop's DataFrames."""

    def __init__(self, shop: Shop, *, reorders_block: bool = True) -> None:
        f = shop.frames
        self.shop = shop
        self.reorders_block = reorders_block
        self.country = dict(zip(f["customers"].customer_id.astype(int), f["customers"].country, strict=True))
        orders = {int(o.order_id): o for o in f["orders"].itertuples(index=False)}
        # Shipping lead times per destination: (delivered_at, seconds from order to delivery).
        self.deliveries: dict[str, list[tuple[datetime, float]]] = {}
        for o in orders.values():
            delivered, ordered = py(o.delivered_at), py(o.ordered_at)
            if delivered is not None and o.shipping_country is not None and delivered >= ordered:
                self.deliveries.setdefault(o.shipping_country, []).append(
                    (delivered, (delivered - ordered).total_seconds()))
        products = {int(p.product_id): p for p in f["products"].itertuples(index=False)}
        # Every line of a non-cancelled order: (order_id, customer, ordered_at, product_id, quantity).
        self.lines = [
            (int(i.order_id), int(orders[int(i.order_id)].customer_id), py(orders[int(i.order_id)].ordered_at),
             int(i.product_id), int(i.quantity))
            for i in f["order_items"].itertuples(index=False)
            if orders[int(i.order_id)].status != "cancelled"
        ]
        self.consumable = {
            pid: Fraction(int(p.pack_units) * 86400) / Fraction(str(p.units_per_day))  # seconds one pack lasts
            for pid, p in products.items()
            if p.product_type == "consumable" and py(p.pack_units) and py(p.units_per_day)
            and p.pack_units > 0 and p.units_per_day > 0
        }
        self.total = {oid: Decimal(str(o.total)) for oid, o in orders.items()}
        self.line_of: dict[str, tuple[int, int, datetime, int, int]] = {}

    def lead_seconds(self, customer_id: int, as_of: datetime) -> float:
        past = [secs for delivered, secs in self.deliveries.get(self.country[customer_id], ()) if delivered < as_of]
        return float(statistics.median(past)) if past else DEFAULT_LEAD.total_seconds()

    def due(self, line: tuple, as_of: datetime) -> datetime | None:
        _, customer_id, ordered, product_id, quantity = line
        if product_id not in self.consumable:
            return None
        supply = float(quantity * self.consumable[product_id])
        return ordered + timedelta(seconds=supply - BUFFER.total_seconds() - self.lead_seconds(customer_id, as_of))

    def later_orders(self, line: tuple, before: datetime) -> list[tuple[datetime, int]]:
        """(ordered_at, order_id) of the customer's later non-cancelled orders with the same product."""
        order_id, customer_id, ordered, product_id, _ = line
        return sorted((t, o) for o, c, t, p, _ in self.lines
                      if c == customer_id and p == product_id and (t, o) > (ordered, order_id) and t < before)

    def select(self, interval_start: datetime, as_of: datetime):
        for line in self.lines:
            order_id, customer_id, ordered, product_id, _ = line
            if ordered >= as_of:
                continue
            due = self.due(line, as_of)
            if due is None or not (as_of - LOOKBACK < due <= as_of) or due <= ordered:
                continue
            if self.reorders_block and self.later_orders(line, as_of):
                continue
            key = f"{order_id}:{product_id}"
            self.line_of[key] = line
            yield Candidate(key, customer_id, due, self.shop.email_of[customer_id])

    def reordered(self, e, as_of: datetime) -> Conversion | None:
        later = self.later_orders(self.line_of[e.key], as_of)
        if not later:
            return None
        ordered, order_id = later[0]
        return Conversion("replenishment_reordered", ordered, str(order_id), self.total[order_id])


def expected_replenishment(shop: Shop, ends: list[datetime], suppressed_before: dict[int, str],
                           *, reorders_block: bool = True) -> tuple[Expected, Rules]:
    rules = Rules(shop, reorders_block=reorders_block)
    exits = [ExitRule("replenishment_reordered", None, rules.reordered)]
    expected = simulate(shop, intervals_from_ends(ends, DAY), select=rules.select, steps=STEPS, exits=exits,
                        max_lateness=MAX_LATENESS, complete_after=COMPLETE_AFTER, suppressed_before=suppressed_before,
                        holdout=holdout_rule(JOURNEY, HOLDOUT_PERCENT))
    return expected, rules


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(shop_db) -> JourneyRun:
    engine, planted, _ = shop_db
    plant(engine)
    return journey_run(shop_db, JOURNEY, intervals_for(ENDS[0] - DAY, ENDS[-1], DAY))


@pytest.fixture(scope="module")
def expected(run) -> Expected:
    return expected_replenishment(run.shop, ENDS, run.suppressed_before)[0]


def line_key(run: JourneyRun, name: str, order_index: int = 0, sku: str | None = None) -> str:
    case = run.planted[name]
    product_id = case.product_id if sku is None else run.query(
        "SELECT product_id FROM shop.products WHERE sku = :s", s=sku)[0][0]
    return f"{case.order_ids[order_index]}:{product_id}"


def ordered_at(run: JourneyRun, order_id: int) -> datetime:
    return run.query("SELECT ordered_at FROM shop.orders WHERE order_id = :o", o=order_id)[0][0]


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_lines(run, expected):
    assert [end for _, end in run.intervals] == ENDS
    check_runs(run, expected)


def test_enrollments_one_per_order_line_entering_at_the_due_moment(run, expected):
    statuses = {e.status for e in expected.enrollments.values()}
    assert statuses == {"active", "converted"}
    assert len(expected.enrollments) >= 20
    check_enrollments(run, expected)


def test_messages_match_expected(run, expected):
    assert {m.status for m in expected.messages} >= {"sent", "suppressed", "expired", "skipped"}
    check_messages(run, expected)


def test_smtp_received_exactly_the_sent_reminders(run, expected):
    assert {step for _, step in expected.sent_emails(run.shop)} == {"reminder"}
    check_smtp(run, expected)


def test_conversions_are_reorders_after_the_reminder(run, expected):
    converted = [e for e in expected.enrollments.values() if e.status == "converted"]
    assert converted  # at least the planted reorder-after-reminder (random customers may add more)
    for e in converted:  # a reorder only converts after the reminder was recorded
        assert e.messages["reminder"].planned_for <= e.conversion.occurred_at
    check_conversions(run, expected)


def test_quarantine(run, expected):
    check_quarantine(run, expected)


# ----------------------------------------------------------------------------- the issue's example


def test_issue_example_100_capsules_1_a_day_5_days_shipping_due_on_day_92(run):
    key = f"990204:{PRODUCT}"
    enrollment = run.enrollment_rows()[key]
    assert enrollment.entered_at == EXAMPLE_ORDERED + 92 * DAY
    assert enrollment.enrolled_at == ANCHOR  # due at A-10h: the first run at or after it ends at A
    assert run.messages_of(key) == {"reminder": ("sent", None, EXAMPLE_ORDERED + 92 * DAY, ANCHOR)}
    (context,) = run.query("SELECT context FROM lifecycle.enrollments WHERE journey = :journey "
                           "AND enrollment_key = :k", k=key)[0]
    assert (Decimal(str(context["supply_days"])), Decimal(str(context["lead_time_days"]))) == (100, 5)
    assert datetime.fromisoformat(context["runs_out_at"]) == EXAMPLE_ORDERED + 100 * DAY
    # the product as a reference with its pack details: no card, no price (the email gets the card
    # as the shop has it when it is sent: test_the_email_shows_the_product_and_a_reorder_link)
    assert context["product"] == {"product_id": PRODUCT, "sku": "TST-CAP-100", "pack_units": 100, "units_per_day": 1}


def test_lead_time_is_the_median_of_deliveries_before_the_run(run):
    # IE: a 4-day delivery, then a 10-day one at A-1d-12h: median 7 days from the run ending A-1d.
    key = f"990207:{PRODUCT}"
    enrollment = run.enrollment_rows()[key]
    assert (enrollment.entered_at, enrollment.enrolled_at) == (IE_ORDERED + 90 * DAY, ANCHOR - DAY)
    # As of the run ending A-2d only the 4-day delivery had happened: due A+18h, not selected.
    rules = Rules(run.shop)
    line = (990207, IE_BUYER, IE_ORDERED, PRODUCT, 1)
    assert rules.due(line, ANCHOR - 2 * DAY) == IE_ORDERED + 93 * DAY == ANCHOR + 18 * HOUR
    assert rules.due(line, ANCHOR - DAY) == IE_ORDERED + 90 * DAY
    # IS: nothing ever delivered there: the default 3 days (100 - 3 - 3 = 94).
    enrollment = run.enrollment_rows()[f"990208:{PRODUCT}"]
    assert (enrollment.entered_at, enrollment.enrolled_at) == (IS_ORDERED + 94 * DAY, ANCHOR - 3 * DAY)
    assert rules.lead_seconds(IS_BUYER, ANCHOR) == DEFAULT_LEAD.total_seconds()


def test_the_email_shows_the_product_and_a_reorder_link(run):
    (message,) = run.find_received(f"buyer{NZ_BUYER}@replenishment.example.com", "reminder")
    text, body = text_and_html(message)
    assert "Test Capsules, 100 capsules" in message["Subject"]
    assert 'src="https://cdn.shop.example.com/img/TST-CAP-100.jpg"' in body
    assert "Test Capsules, 100 capsules" in body and "Test Capsules, 100 capsules" in text
    assert money("24.90", "EUR") in body and money("24.90", "EUR") in text
    reorder = f"{SHOP_URL}/cart/add?sku=TST-CAP-100&quantity=1"
    assert html.escape(reorder) in body and reorder in text
    assert "utm_campaign=replenishment" in text
    runs_out = (EXAMPLE_ORDERED + 100 * DAY).strftime("%-d %B %Y")
    assert runs_out in text and runs_out in body
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


# ----------------------------------------------------------------------------- planted demo cases


def test_planted_cases_cover_every_rule(run):
    names = {n for n in run.planted if n.startswith("replenishment_")}
    assert names == {
        "replenishment_due", "replenishment_two_lines", "replenishment_reordered_before_due",
        "replenishment_reorder_cancelled", "replenishment_reordered_after_reminder", "replenishment_no_consent",
        "replenishment_runs_out_before_delivery", "replenishment_cancelled_order", "replenishment_far_country",
        "replenishment_near_country",
    }


@pytest.mark.parametrize(("name", "enrolled_by", "status", "reason"), [
    ("replenishment_due", ANCHOR, "sent", None),
    ("replenishment_reorder_cancelled", ANCHOR - DAY, "sent", None),
    ("replenishment_no_consent", ANCHOR - DAY, "suppressed", "no consent"),
    ("replenishment_far_country", ANCHOR, "sent", None),
])
def test_reminded_cases(run, name, enrolled_by, status, reason):
    key = line_key(run, name)
    enrollment = run.enrollment_rows()[key]
    assert (enrollment.enrolled_at, enrollment.status) == (enrolled_by, "active")
    assert enrolled_by - DAY < enrollment.entered_at <= enrolled_by
    assert run.messages_of(key) == {"reminder": (status, reason, enrollment.entered_at, enrolled_by)}
    assert run.steps_received_by(run.planted[name].email) == (["reminder"] if status == "sent" else [])


def test_two_consumable_lines_of_one_order_are_two_enrollments(run):
    case = run.planted["replenishment_two_lines"]
    keys = {k for k, e in run.enrollment_rows().items() if e.customer_id == case.customer_id}
    assert keys == {line_key(run, "replenishment_two_lines", sku="VIT-01-T1"),
                    line_key(run, "replenishment_two_lines", sku="VIT-02-T1")}  # not the T-shirt
    entered = {run.enrollment_rows()[k].entered_at for k in keys}
    assert len(entered) == 1  # 1 x 30 tablets at 1 a day and 2 x 30 capsules at 2 a day: both 30 days
    assert run.steps_received_by(case.email) == ["reminder", "reminder"]


def test_reorder_before_the_due_date_means_never_enrolled(run, expected):
    """The choice this journey makes: a line reordered before its reminder is never selected
    (no enrollment, nothing sent); without the reorder it would have been."""
    case = run.planted["replenishment_reordered_before_due"]
    assert not [e for e in run.enrollment_rows().values() if e.customer_id == case.customer_id]
    assert not run.steps_received_by(case.email)
    counterfactual, _ = expected_replenishment(run.shop, ENDS, run.suppressed_before, reorders_block=False)
    key = line_key(run, "replenishment_reordered_before_due")
    assert key in counterfactual.enrollments and key not in expected.enrollments
    assert ordered_at(run, case.order_ids[1]) < counterfactual.enrollments[key].entered_at  # reordered before due


def test_reorder_after_the_reminder_converts(run):
    case = run.planted["replenishment_reordered_after_reminder"]
    key = line_key(run, "replenishment_reordered_after_reminder")
    reorder = case.order_ids[1]
    reordered_at = ordered_at(run, reorder)
    assert reordered_at == ANCHOR - DAY - 6 * HOUR
    enrollment = run.enrollment_rows()[key]
    assert (enrollment.status, enrollment.exit_reason, enrollment.exited_at) == (
        "converted", "replenishment_reordered", reordered_at)
    (total,) = run.query("SELECT total FROM shop.orders WHERE order_id = :o", o=reorder)[0]
    assert run.conversion_rows()[key] == (case.customer_id, "replenishment_reordered", str(reorder), total,
                                          reordered_at)
    assert run.messages_of(key)["reminder"][0::3] == ("sent", ANCHOR - 2 * DAY)  # reminded first
    assert run.steps_received_by(case.email) == ["reminder"]


@pytest.mark.parametrize("name", ["replenishment_runs_out_before_delivery", "replenishment_cancelled_order",
                                  "replenishment_near_country"])
def test_never_reminded(run, name):
    case = run.planted[name]
    assert not [e for e in run.enrollment_rows().values() if e.customer_id == case.customer_id]
    assert not run.steps_received_by(case.email)


def test_the_far_country_is_reminded_days_before_the_near_one(run):
    """Same product ordered at the same moment: US shipping takes longer, so its reminder is earlier."""
    rules = Rules(run.shop)
    far, near = run.planted["replenishment_far_country"], run.planted["replenishment_near_country"]
    assert ordered_at(run, far.order_ids[0]) == ordered_at(run, near.order_ids[0])
    assert rules.lead_seconds(far.customer_id, ANCHOR) - rules.lead_seconds(near.customer_id, ANCHOR) > 3 * 86400
    # The pack that runs out sooner than a reorder could arrive would have been due before its order.
    case = run.planted["replenishment_runs_out_before_delivery"]
    line = (case.order_ids[0], case.customer_id, ordered_at(run, case.order_ids[0]), case.product_id, 1)
    assert ANCHOR - LOOKBACK < rules.due(line, ANCHOR) < line[2]


# ----------------------------------------------------------------------------- the holdout


def test_a_line_found_too_late_is_expired(run):
    key = f"990211:{PRODUCT}"
    due = LATE_ORDERED + 94 * DAY
    assert run.enrollment_rows()[key].holdout is False
    status, reason, due_at, planned_for = run.messages_of(key)["reminder"]
    assert (status, due_at, planned_for) == ("expired", due, ANCHOR - 4 * DAY) and reason.startswith("late: due ")


def test_held_out_customers_enter_get_no_reminder_and_still_convert(run, expected):
    """Every enrollment of a held-out customer has its reminder recorded skipped ('holdout'), late
    or not, nothing reaches them; the planted held-out buyer reorders and converts with the
    reorder, recorded as a held-out conversion."""
    held = [e for e in expected.enrollments.values() if e.holdout]
    assert held and len(held) < len(expected.enrollments) / 2
    assert {(m.status, m.reason) for e in held for m in e.messages.values()} == {("skipped", "holdout")}
    assert not {e.customer_id for e in held} & {e.customer_id for e in expected.enrollments.values()
                                                  if not e.holdout}  # drawn per customer
    received = {m["To"] for m in run.emails}
    assert not {run.shop.email_of[e.customer_id] for e in held} & received
    key = f"990209:{PRODUCT}"
    assert expected.enrollments[key].holdout and expected.enrollments[key].status == "converted"
    enrollment = run.enrollment_rows()[key]
    assert (enrollment.holdout, enrollment.status, enrollment.exited_at) == (True, "converted", HELD_REORDERED)
    assert run.messages_of(key) == {"reminder": ("skipped", "holdout", HELD_ORDERED + 94 * DAY, ANCHOR - 2 * DAY)}
    assert run.query("SELECT order_id, revenue, holdout FROM lifecycle.conversions WHERE journey = :journey "
                     "AND enrollment_id = (SELECT enrollment_id FROM lifecycle.enrollments WHERE journey = :journey "
                     "AND enrollment_key = :k)", k=key) == [("990210", Decimal("24.90"), True)]


def test_lift_counts_treated_and_held_out_customers_as_the_rules_do(run, expected):
    """lifecycle.analytics.lift over the run: customers and converted customers per group equal
    the ones the rules give (a customer converts when any of their enrollments did)."""
    from lifecycle import analytics

    groups: dict[bool, dict[int, bool]] = {False: {}, True: {}}
    for e in expected.enrollments.values():
        seen = groups[e.holdout]
        seen[e.customer_id] = seen.get(e.customer_id, False) or e.status == "converted"
    with run.engine.connect() as conn:
        lift = analytics.lift(conn, journey=JOURNEY, since=ANCHOR - 30 * DAY, until=ANCHOR + DAY)
    assert_same([(lift["treated_n"], lift["treated_conversions"]), (lift["holdout_n"], lift["holdout_conversions"])],
                [(len(g), sum(g.values())) for g in (groups[False], groups[True])],
                "lift (customers, converted) for treated, held out")
    assert lift["holdout_conversions"] >= 1 and lift["abs_lift_ci"] is not None
