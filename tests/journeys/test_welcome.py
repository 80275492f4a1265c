"""welcome end to end: hourly runs over [A-3d, A) (the demo's window) on a fresh demo shop on
the embedded PostgreSQL, email to a real SMTP server, compared with the outcome derived here
in Python from the shop tables (never the segment SQL).

The rules, as this test states them: a customer enters the run whose interval [start, end)
holds their welcome clock = max(created_at, double_opt_in_at) of an opted-in email consent
with a double opt-in timestamp, if the double opt-in came less than CONFIRM_WITHIN after the
sign-up, no non-cancelled order was placed before the run's end and they were never welcomed
before (one enrollment per customer, keyed by customer id). email_1 at the clock with a
personal 10% code valid 14 days; email_2 three days later. The first non-cancelled order
after the clock converts (its id and total): `welcome_first_order_used_code` when that order
carries the enrollment's code (while valid), else `welcome_first_order`. email_2 shows the top
BESTSELLERS products by units in non-cancelled orders of the 30 days before the run that sends
it (ties: lower product id first), with image, name and price.

Test-only customers (ids 990001+) cover what the demo shop cannot hold: an order with the
welcome code (the code exists only once the run has issued it), a first order without the code
followed within the hour by one with it, and a consent withdrawn after email_1.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.render import money

from .conftest import (
    ANCHOR,
    DAY,
    HOUR,
    VALID_EMAIL,
    ExpectedEnrollment,
    ExpectedMessage,
    JourneyRun,
    Replay,
    assert_same,
    intervals_for,
    journey_run,
    py,
    read_shop_frames,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "welcome"
MINUTE = timedelta(minutes=1)
CONFIRM_WITHIN = 7 * DAY
EMAIL_2_AFTER = 3 * DAY
MAX_LATENESS = 6 * HOUR
COUPON_DAYS, COUPON_PERCENT = 14, Decimal("10")
BESTSELLER_DAYS, BESTSELLERS = 30, 4
SHOP_URL = "https://shop.example.com"


# ----------------------------------------------------------------------------- test-only customers


@dataclass
class Extra:
    customer_id: int
    email: str
    created: datetime
    confirmed: datetime


def extras(a: datetime) -> dict[str, Extra]:
    def extra(name: str, cid: int, created: datetime, confirmed: datetime) -> Extra:
        return Extra(cid, f"welcome.{name}@example.com", created, confirmed)

    return {
        # Welcomed at A-2d-6h (run ending A-2d-5h); orders with the code at A-1d-12h: converts, used code.
        "redeemer": extra("redeemer", 990001, a - 2 * DAY - 6 * HOUR, a - 2 * DAY - 6 * HOUR + 3 * MINUTE),
        # Welcomed at A-2d-6h; first order at A-1d-20h without the code, a second at A-1d-19h30m with it:
        # both before the run ending A-1d-19h, which records the first only (no code).
        "code_on_second_order": extra("second", 990002, a - 2 * DAY - 6 * HOUR, a - 2 * DAY - 6 * HOUR + MINUTE),
        # Welcomed at A-3d (email_1 by the run ending A-3d+1h), opts out right after it: email_2 suppressed.
        "opted_out_after_email_1": extra("optout", 990003, a - 3 * DAY - HOUR, a - 3 * DAY),
    }


REDEEMED_AT_OFFSET = -DAY - 12 * HOUR
OPT_OUT_AFTER_RUN = -3 * DAY + HOUR  # the run (end, relative to A) after which the consent is withdrawn


def plant_extras(engine: sa.Engine, people: dict[str, Extra]) -> None:
    with engine.begin() as conn:
        for name, x in people.items():
            conn.execute(sa.text(
                "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, locale, created_at) "
                "VALUES (:id, :email, :first, 'DE', 'Europe/Berlin', 'de_DE', :created)"),
                {"id": x.customer_id, "email": x.email, "first": name.split("_")[0].title(), "created": x.created})
            conn.execute(sa.text(
                "INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, updated_at) "
                "VALUES (:id, 'email', 'opted_in', :doi, 'account_signup', :doi)"),
                {"id": x.customer_id, "doi": x.confirmed})


def code_of(engine: sa.Engine, customer_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT code FROM lifecycle.coupons WHERE journey = :j AND customer_id = CAST(:c AS text)"),
                            {"j": JOURNEY, "c": customer_id}).scalar_one()


def add_order(engine: sa.Engine, order_id: int, customer_id: int, at: datetime, code: str | None,
              items: list[tuple[int, int]]) -> None:
    """An order of `items` (product_id, quantity) at list prices."""
    with engine.begin() as conn:
        prices = dict(conn.execute(sa.text("SELECT product_id, price FROM shop.products WHERE product_id = ANY(:p)"),
                                   {"p": [p for p, _ in items]}).all())
        total = sum(prices[p] * q for p, q in items)
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, coupon_code, "
            "shipping_country) VALUES (:o, :c, :t, 'placed', :total, 'EUR', :code, 'DE')"),
            {"o": order_id, "c": customer_id, "t": at, "total": total, "code": code})
        conn.execute(sa.text("INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
                             "VALUES (:o, :p, :q, :price)"),
                     [{"o": order_id, "p": p, "q": q, "price": prices[p]} for p, q in items])


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def welcome_run(shop_db) -> JourneyRun:
    engine, _planted, a = shop_db
    people = extras(a)
    plant_extras(engine, people)
    with engine.connect() as conn:
        products = [r[0] for r in conn.execute(sa.text("SELECT product_id FROM shop.products ORDER BY product_id"))]

    def between_runs(replay: Replay, start: datetime, end: datetime, result: dict) -> None:
        if end == a + OPT_OUT_AFTER_RUN:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE shop.consents SET status = 'opted_out', updated_at = :t "
                                     "WHERE customer_id = :c AND channel = 'email'"),
                             {"c": people["opted_out_after_email_1"].customer_id, "t": end + 10 * MINUTE})
        if end == people["redeemer"].confirmed.replace(minute=0, second=0) + HOUR:  # the run that welcomed them
            add_order(engine, 990_000_001, people["redeemer"].customer_id, a + REDEEMED_AT_OFFSET,
                      code_of(engine, people["redeemer"].customer_id), [(products[0], 2), (products[5], 1)])
            second = people["code_on_second_order"]
            add_order(engine, 990_000_002, second.customer_id, a - DAY - 20 * HOUR, None, [(products[1], 1)])
            add_order(engine, 990_000_003, second.customer_id, a - DAY - 19 * HOUR - 30 * MINUTE,
                      code_of(engine, second.customer_id), [(products[2], 3)])

    return journey_run(shop_db, JOURNEY, intervals_for(a - 3 * DAY, a, HOUR), setup=lambda replay: people,
                       after=between_runs)


def consent_changes(run: JourneyRun) -> dict[int, tuple[str, datetime]]:
    """customer -> (email consent before, end of the last run that saw it): the opt-out between runs."""
    assert ANCHOR + OPT_OUT_AFTER_RUN in run.ends
    return {run.cases["opted_out_after_email_1"].customer_id: ("opted_in", ANCHOR + OPT_OUT_AFTER_RUN)}


# ----------------------------------------------------------------------------- expected outcome


@dataclass(kw_only=True)
class Enr(ExpectedEnrollment):
    # conversion: (order_id, revenue)
    bestsellers_as_of: datetime | None = None  # the last run that selected it


@dataclass
class Expected:
    enrollments: dict[str, Enr]
    per_run: list[tuple[datetime, int, int]]  # (run end, selected, quarantined)
    quarantined: list[tuple[str, datetime]]  # (key, run end)
    bestsellers: Any  # as_of -> [product_id, ...]

    @property
    def messages(self) -> list[ExpectedMessage]:
        return [m for e in self.enrollments.values() for m in e.messages.values()]


def derive_expected(run: JourneyRun) -> Expected:
    f = read_shop_frames(run.engine, ("customers", "consents", "orders", "order_items", "products"))
    customers = {int(r.customer_id): r for r in f["customers"].itertuples(index=False)}
    email_consent = {int(r.customer_id): r for r in f["consents"][f["consents"].channel == "email"]
                     .itertuples(index=False)}
    orders = f["orders"].assign(ordered_at=f["orders"].ordered_at.map(py))
    live_orders = orders[orders.status != "cancelled"].sort_values(["ordered_at", "order_id"])
    orders_of: dict[int, list] = {}
    for o in live_orders.itertuples(index=False):
        orders_of.setdefault(int(o.customer_id), []).append(o)
    codes = {}  # customer -> (code, valid_from, valid_until): only to recognise an order that used it
    for cid, code, valid_from, valid_until in run.query(
            "SELECT customer_id::bigint, code, valid_from, valid_until FROM lifecycle.coupons WHERE journey = :journey"):
        codes[cid] = (code, valid_from, valid_until)
    with_items = f["order_items"].merge(live_orders[["order_id", "ordered_at"]], on="order_id")

    changes = consent_changes(run)

    def consent_at(cid: int, as_of: datetime) -> tuple[str | None, datetime | None]:
        """(status, double opt-in) of the email consent as the run ending `as_of` saw it."""
        row = email_consent.get(cid)
        if row is None:
            return None, None
        status = row.status
        if cid in changes and as_of <= changes[cid][1]:
            status = changes[cid][0]
        return status, py(row.double_opt_in_at)

    def bestsellers(as_of: datetime) -> list[int]:
        window = with_items[(with_items.ordered_at >= as_of - BESTSELLER_DAYS * DAY) & (with_items.ordered_at < as_of)]
        units = window.groupby("product_id").quantity.sum().reset_index()
        units = units.sort_values(["quantity", "product_id"], ascending=[False, True])
        return [int(p) for p in units.product_id.head(BESTSELLERS)]

    def ordered_before(cid: int, before: datetime) -> bool:
        return any(o.ordered_at < before for o in orders_of.get(cid, ()))

    def first_order(cid: int, after: datetime, before: datetime):
        return next((o for o in orders_of.get(cid, ()) if after < o.ordered_at < before), None)

    enrollments: dict[str, Enr] = {}
    per_run, quarantined = [], []
    for start, as_of in run.intervals:
        welcomed = {e.customer_id for e in enrollments.values()}
        newcomers = []
        for cid, c in customers.items():
            status, confirmed = consent_at(cid, as_of)
            if status != "opted_in" or confirmed is None or cid in welcomed:
                continue
            clock = max(py(c.created_at), confirmed)
            if start <= clock < as_of and confirmed < py(c.created_at) + CONFIRM_WITHIN \
                    and not ordered_before(cid, as_of):
                newcomers.append((cid, clock))
        waiting = [e for e in enrollments.values() if e.status == "active" and "email_2" not in e.messages
                   and e.entered_at + EMAIL_2_AFTER <= as_of]
        bad = 0
        for cid, clock in newcomers:
            if not VALID_EMAIL.match(customers[cid].email or ""):
                bad += 1
                quarantined.append((str(cid), as_of))
            else:
                enrollments[str(cid)] = Enr(str(cid), cid, clock, as_of, bestsellers_as_of=as_of)
        for e in waiting:
            e.bestsellers_as_of = as_of
        per_run.append((as_of, len(newcomers) + len(waiting), bad))

        for e in enrollments.values():  # exits, in header order: both are about the first order
            if e.status != "active" or e.entered_at > as_of:
                continue
            o = first_order(e.customer_id, e.entered_at, as_of)
            if o is None:
                continue
            code = codes.get(e.customer_id)
            used = code is not None and o.coupon_code == code[0] and code[1] <= o.ordered_at < code[2]
            e.status, e.exited_at = "converted", min(o.ordered_at, as_of)
            e.exit_reason = "welcome_first_order_used_code" if used else "welcome_first_order"
            e.conversion = (str(o.order_id), Decimal(str(o.total)))

        planned = []
        for step, after in (("email_1", timedelta(0)), ("email_2", EMAIL_2_AFTER)):
            for e in enrollments.values():
                due = e.entered_at + after
                if e.status != "active" or step in e.messages or due > as_of:
                    continue
                m = ExpectedMessage(e.key, e.customer_id, step, due, as_of)
                if due + MAX_LATENESS < as_of:
                    m.status, m.reason = "expired", f"late: due {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                else:
                    planned.append(m)
                e.messages[step] = m
        for m in planned:  # send-time checks: consent, then the address
            status, _ = consent_at(m.customer_id, as_of)
            if status is None:
                m.status, m.reason = "suppressed", "no consent"
            elif status != "opted_in":
                m.status, m.reason = "suppressed", "consent withdrawn"
            elif not VALID_EMAIL.match(customers[m.customer_id].email or ""):
                m.status, m.reason = "skipped", "invalid address"
            else:
                m.status = "sent"
    return Expected(enrollments, per_run, quarantined, bestsellers)


@pytest.fixture(scope="module")
def expected(welcome_run) -> Expected:
    return derive_expected(welcome_run)


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_customers(welcome_run, expected):
    assert len(welcome_run.intervals) == 72
    statuses = welcome_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey "
                                 "AND mode = 'live' GROUP BY status")
    assert dict(statuses) == {"ok": 72}
    actual = [(end, r["selected"], r["quarantined"]) for (_, end), r in
              zip(welcome_run.intervals, welcome_run.results, strict=True)]
    assert_same(actual, expected.per_run, "(run end, rows selected, rows quarantined)")
    quarantine = welcome_run.query("SELECT q.enrollment_key, r.interval_end FROM lifecycle.quarantine q "
                                   "JOIN lifecycle.runs r USING (journey, run_id) WHERE q.journey = :journey")
    assert_same(quarantine, expected.quarantined, "quarantine (key, run end)")


def test_enrollments_and_exits(welcome_run, expected):
    statuses = Counter(e.status for e in expected.enrollments.values())
    assert statuses["active"] >= 5 and statuses["converted"] >= 4, statuses
    actual = [(k, r.customer_id, r.entered_at, r.enrolled_at, r.status, r.exit_reason, r.exited_at, r.holdout)
              for k, r in welcome_run.enrollment_rows().items()]
    wanted = [(e.key, e.customer_id, e.entered_at, e.enrolled_at, e.status, e.exit_reason, e.exited_at, False)
              for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, exit reason, exited, holdout)")


def test_conversions_record_the_first_order_and_whether_it_used_the_code(welcome_run, expected):
    actual = welcome_run.query(
        "SELECT e.enrollment_key, c.customer_id::bigint, c.condition, c.order_id, c.revenue, c.converted_at "
        "FROM lifecycle.conversions c JOIN lifecycle.enrollments e USING (enrollment_id) "
        "WHERE c.journey = :journey AND c.mode = 'live'")
    wanted = [(e.key, e.customer_id, e.exit_reason, *e.conversion, e.exited_at)
              for e in expected.enrollments.values() if e.status == "converted"]
    assert_same(actual, wanted, "conversions (key, customer, condition, order, revenue, at)")
    assert {r[2] for r in actual} == {"welcome_first_order", "welcome_first_order_used_code"}


def test_messages_match_expected(welcome_run, expected):
    actual = []
    for key, step, channel, status, reason, due_at, planned_for in welcome_run.query(
            "SELECT e.enrollment_key, m.step, m.channel, m.status, m.reason, m.due_at, m.planned_for "
            "FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE m.journey = :journey AND m.mode = 'live'"):
        if status == "expired" and reason:
            reason = reason.split(",")[0]
        actual.append((key, step, channel, status, reason, due_at, planned_for))
    wanted = [m.row() for m in expected.messages]
    seen = Counter((m.step, m.status) for m in expected.messages)
    assert seen[("email_1", "sent")] >= 10 and seen[("email_2", "sent")] >= 2, seen
    assert seen[("email_2", "suppressed")] >= 1, seen
    assert_same(actual, wanted, "messages (key, step, channel, status, reason, due, run)")


def test_coupons_one_per_welcome_ten_percent_for_14_days(welcome_run, expected):
    rows = welcome_run.query(
        "SELECT e.enrollment_key, c.code, c.step, c.percent_off, c.valid_from, c.valid_until "
        "FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = :journey")
    planned = {e.key for e in expected.enrollments.values()
               if e.messages.get("email_1") and e.messages["email_1"].status not in ("expired", "skipped")}
    assert sorted(r[0] for r in rows) == sorted(planned)
    for key, code, step, pct, valid_from, valid_until in rows:
        e = expected.enrollments[key]
        assert code.startswith("WE") and len(code) == 18 and step == "email_1" and pct == COUPON_PERCENT
        assert (valid_from, valid_until) == (e.entered_at, e.entered_at + COUPON_DAYS * DAY)
    assert len({r[1] for r in rows}) == len(rows)


def test_smtp_received_exactly_the_sent_emails(welcome_run, expected):
    email_of = dict(welcome_run.query("SELECT customer_id, email FROM shop.customers"))
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in welcome_run.emails],
                [(email_of[m.customer_id], m.step) for m in expected.messages if m.status == "sent"],
                "(To, step) received by the SMTP server")
    assert all(r == [m["To"]] for r, m in zip(welcome_run.rcpt_tos, welcome_run.emails, strict=True))
    assert all(m["X-Lifecycle-Journey"] == JOURNEY and m["List-Unsubscribe-Post"] for m in welcome_run.emails)
    codes = dict(welcome_run.query("SELECT customer_id::bigint, code FROM lifecycle.coupons WHERE journey = :journey"))
    customer_of = {v: k for k, v in email_of.items()}
    for m in welcome_run.emails:  # both emails carry the customer's own code
        text, body = text_and_html(m)
        code = codes[customer_of[m["To"]]]
        assert code in text and code in body and "10%" in text


def test_email_2_shows_the_bestsellers_of_the_30_days_before_it_is_sent(welcome_run, expected):
    products = {int(r.product_id): r for r in read_shop_frames(welcome_run.engine, ("products",))["products"].itertuples(index=False)}
    email_of = dict(welcome_run.query("SELECT customer_id, email FROM shop.customers"))
    rows = welcome_run.enrollment_rows()
    checked = 0
    for m in expected.messages:
        if m.step != "email_2" or m.status != "sent":
            continue
        top = expected.bestsellers(m.planned_for)
        assert len(top) == BESTSELLERS
        context = rows[m.key].context
        assert [p["product_id"] for p in context["bestsellers"]] == top
        # product references: id and units sold, no card and no price (the email gets today's cards)
        assert all(set(p) == {"product_id", "units_sold"} for p in context["bestsellers"]), context["bestsellers"]
        units = [p["units_sold"] for p in context["bestsellers"]]
        assert units == sorted(units, reverse=True) and units[-1] > 0
        assert py(pd.Timestamp(context["bestsellers_as_of"])) == m.planned_for
        (message,) = [x for x in welcome_run.emails
                      if x["To"] == email_of[m.customer_id] and x["X-Lifecycle-Step"] == "email_2"]
        text, body = text_and_html(message)
        positions = []
        for product_id in top:
            p = products[product_id]
            assert html.escape(p.name) in body and p.image_url in body and html.escape(money(p.price)) in body
            assert f"- {p.name}: {money(p.price)}" in text
            positions.append(text.index(f"- {p.name}: "))
        assert positions == sorted(positions), "bestsellers out of order"
        checked += 1
    assert checked >= 2


# ----------------------------------------------------------------------------- planted cases, by name


def test_planted_demo_cases(welcome_run, expected):
    a, p = ANCHOR, welcome_run.planted
    rows = welcome_run.enrollment_rows()

    def welcomed_at(name: str) -> datetime:
        return a + timedelta(seconds=dict(p[name].details)["welcome_at"])

    def run_after(t: datetime) -> datetime:
        return t.replace(minute=0, second=0, microsecond=0) + HOUR

    for name in ("welcome_series", "welcome_cancelled_order"):
        case, clock = p[name], welcomed_at(name)
        assert clock == a - 3 * DAY
        assert welcome_run.messages_of(customer_id=case.customer_id) == {
            "email_1": ("sent", None, clock, a - 3 * DAY + HOUR), "email_2": ("sent", None, clock + 3 * DAY, a)}
        assert rows[str(case.customer_id)].status == "active"
        assert welcome_run.steps_received_by(case.email) == ["email_1", "email_2"]

    for name in ("welcome_late_confirmation", "welcome_subscribed_before_signup"):
        case, clock = p[name], welcomed_at(name)
        r = rows[str(case.customer_id)]
        assert (r.entered_at, r.enrolled_at, r.status) == (clock, run_after(clock), "active"), name
        assert welcome_run.messages_of(customer_id=case.customer_id) == {"email_1": ("sent", None, clock, run_after(clock))}
    late = p["welcome_late_confirmation"]
    assert welcomed_at("welcome_late_confirmation") == a - DAY - 2 * HOUR - 30 * MINUTE
    assert rows[str(late.customer_id)].context["signed_up_at"] < rows[str(late.customer_id)].context["welcome_at"]

    case = p["welcome_first_order"]
    (order_id,) = case.order_ids
    r = rows[str(case.customer_id)]
    assert (r.status, r.exit_reason, r.exited_at) == ("converted", "welcome_first_order", a - DAY)
    (conversion,) = welcome_run.query("SELECT order_id, revenue FROM lifecycle.conversions WHERE journey = :journey "
                                      "AND customer_id = CAST(:c AS text)", c=case.customer_id)
    (total,) = welcome_run.query("SELECT total FROM shop.orders WHERE order_id = :o", o=order_id)[0]
    assert conversion == (str(order_id), total)
    assert set(welcome_run.messages_of(customer_id=case.customer_id)) == {"email_1"}

    for name in ("welcome_confirmed_too_late", "welcome_no_consent", "welcome_opted_out",
                 "welcome_confirmation_pending", "welcome_ordered_before_welcome"):
        assert str(p[name].customer_id) not in rows, name
        assert not welcome_run.steps_received_by(p[name].email), name
    assert {e.customer_id for e in expected.enrollments.values()} >= {
        p[n].customer_id for n in ("welcome_series", "welcome_cancelled_order", "welcome_late_confirmation",
                                   "welcome_subscribed_before_signup", "welcome_first_order")}


def test_test_only_cases(welcome_run):
    a, x = ANCHOR, welcome_run.cases
    rows = welcome_run.enrollment_rows()

    redeemer = rows[str(x["redeemer"].customer_id)]
    assert (redeemer.status, redeemer.exit_reason, redeemer.exited_at) == (
        "converted", "welcome_first_order_used_code", a + REDEEMED_AT_OFFSET)
    (conversion,) = welcome_run.query("SELECT order_id, revenue FROM lifecycle.conversions WHERE journey = :journey "
                                      "AND customer_id = CAST(:c AS text)", c=x["redeemer"].customer_id)
    assert conversion[0] == "990000001" and conversion[1] > 0

    second = rows[str(x["code_on_second_order"].customer_id)]
    assert (second.status, second.exit_reason, second.exited_at) == (
        "converted", "welcome_first_order", a - DAY - 20 * HOUR)
    assert welcome_run.query("SELECT order_id FROM lifecycle.conversions WHERE journey = :journey AND customer_id = CAST(:c AS text)",
                             c=x["code_on_second_order"].customer_id) == [("990000002",)]

    optout = x["opted_out_after_email_1"]
    assert welcome_run.messages_of(customer_id=optout.customer_id) == {
        "email_1": ("sent", None, a - 3 * DAY, a - 3 * DAY + HOUR),
        "email_2": ("suppressed", "consent withdrawn", a, a)}
    assert welcome_run.steps_received_by(optout.email) == ["email_1"]
