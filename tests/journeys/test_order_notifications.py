"""order_notifications end to end: hourly runs over [A-42h, A) on a fresh demo shop (the
`shop_db` fixture) with the planted cases plus a few test-only customers, against a real
SMTP server, compared with the outcome derived here from the shop tables.

The rules, stated in Python over the shop's rows (never the segment SQL): a run ending at T
selects, for every order not cancelled, an order confirmation when T-24h <= ordered_at < T
and a shipping notice when T-24h <= shipped_at < T; one enrollment per "<order>:<notice>",
its clock the event's time, its one step due at once. A row whose email is not an address is
quarantined. Transactional: no consent needed, no holdout, no frequency cap; of the
suppressions only an address-level one (hard bounce, complaint) stops a notice, a marketing
opt-out (unsubscribe, a journey's no_response sunset) does not. A hard bounce on one notice
suppresses the next.

The runs happen with LIFECYCLE_FREQUENCY_CAPS=email=1/1d: customers who get two notices within
a day (both sent) show that transactional mail is neither capped nor counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html as htmllib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import babel.dates
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR, SHOP
from lifecycle.render import money
from lifecycle.replay import run_interval
from lifecycle.smtp_sink import RecordingSMTPServer
from lifecycle.spec import SpecError, load_spec

from .conftest import DAY, HOUR, VALID_EMAIL, assert_same, intervals_for, py, text_and_html

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "order_notifications"
LOOKBACK = 24 * HOUR
MAX_LATENESS = 24 * HOUR
WINDOW = 42 * HOUR  # runs ending A-41h ... A: every planted case's events
MINUTE = timedelta(minutes=1)
BOUNCE = "550 5.1.1 no such user"
# Suppression reasons that stop transactional mail (the issue: an unsubscribe must not block an
# order confirmation, a hard-bounced address must not be mailed; a spam complaint stops it too).
BLOCKING = {"hard_bounce", "complaint"}


# ----------------------------------------------------------------------------- test-only customers


@dataclass
class Extra:
    """A customer planted by this test: what the demo shop cannot hold (engine-side suppressions,
    an address the SMTP server refuses)."""

    customer_id: int
    email: str
    ordered_at: datetime
    shipped_at: datetime | None
    suppression: str | None = None  # lifecycle.suppressions reason before the first run
    bounces: bool = False  # the SMTP server refuses the address (550 at RCPT)

    @property
    def order_id(self) -> int:
        return self.customer_id + 9_000_000


def extras(a: datetime) -> dict[str, Extra]:
    return {
        "unsubscribed": Extra(990_001, "on.unsubscribed@example.com", a - 30 * HOUR - 10 * MINUTE,
                              a - 5 * HOUR - 10 * MINUTE, suppression="unsubscribe"),
        "sunset": Extra(990_002, "on.sunset@example.com", a - 26 * HOUR - 40 * MINUTE, None,
                        suppression="no_response"),
        "hard_bounce": Extra(990_003, "on.bounce@example.com", a - 20 * HOUR - 20 * MINUTE,
                             a - 6 * HOUR - 20 * MINUTE, bounces=True),
        "unsubscribed_then_bounces": Extra(990_004, "on.unsub.bounce@example.com", a - 18 * HOUR - 5 * MINUTE,
                                           a - 3 * HOUR - 5 * MINUTE, suppression="unsubscribe", bounces=True),
        "complaint": Extra(990_005, "on.complaint@example.com", a - 10 * HOUR - 45 * MINUTE,
                           a - 2 * HOUR - 45 * MINUTE, suppression="complaint"),
        # Not an address: quarantined by every run that sees the order (A-7h ... A), nothing sent.
        "invalid_email": Extra(990_006, "on.invalid.example.com", a - 7 * HOUR - 50 * MINUTE, None),
    }


def plant_extras(engine: sa.Engine, cases: dict[str, Extra]) -> None:
    with engine.begin() as conn:
        product_id, price = conn.execute(sa.text(
            "SELECT product_id, price FROM shop.products WHERE sku = 'HOU-01-T2'")).one()
        for name, c in cases.items():
            conn.execute(sa.text(
                "INSERT INTO shop.customers (customer_id, email, first_name, last_name, country, timezone, locale, "
                "created_at) VALUES (:id, :email, :first, 'Planted', 'DE', 'Europe/Berlin', 'de_DE', :created)"),
                {"id": c.customer_id, "email": c.email, "first": name.split("_")[0].title(),
                 "created": c.ordered_at - 90 * DAY})
            conn.execute(sa.text(
                "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) "
                "VALUES (:id, 'email', 'opted_in', 'test', :t)"), {"id": c.customer_id, "t": c.ordered_at - 90 * DAY})
            conn.execute(sa.text(
                "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, shipped_at, "
                "shipping_country) VALUES (:o, :c, :t, :status, :total, 'EUR', :shipped, 'DE')"),
                {"o": c.order_id, "c": c.customer_id, "t": c.ordered_at, "total": price * 2, "shipped": c.shipped_at,
                 "status": "shipped" if c.shipped_at else "placed"})
            conn.execute(sa.text("INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
                                 "VALUES (:o, :p, 2, :price)"), {"o": c.order_id, "p": product_id, "price": price})
            if c.suppression:
                conn.execute(sa.text("INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source) "
                                     "VALUES (:c, 'email', :r, 'test')"), {"c": c.customer_id, "r": c.suppression})


# ----------------------------------------------------------------------------- the run


@dataclass
class NotificationRun:
    engine: sa.Engine
    anchor: datetime
    planted: Any
    extras: dict[str, Extra]
    intervals: list[tuple[datetime, datetime]]
    results: list[dict]
    emails: list[EmailMessage]
    rcpt_tos: list[list[str]]
    suppressions_before: dict[int, str]
    seconds: float

    def query(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), {"journey": JOURNEY, **params}).all()


@pytest.fixture(scope="module")
def spec():
    return load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")


@pytest.fixture(scope="module")
def run(shop_db, spec) -> NotificationRun:
    engine, planted, anchor = shop_db
    cases = extras(anchor)
    plant_extras(engine, cases)
    with engine.connect() as conn:
        suppressions_before = dict(conn.execute(sa.text(
            "SELECT customer_id::bigint, reason FROM lifecycle.suppressions WHERE channel = 'email'")).all())
    intervals = intervals_for(anchor - WINDOW, anchor, HOUR)
    results = []
    previous_caps = os.environ.get("LIFECYCLE_FREQUENCY_CAPS")
    os.environ["LIFECYCLE_FREQUENCY_CAPS"] = "email=1/1d"  # marketing only: must not touch these notices
    t0 = time.perf_counter()
    try:
        reject = {c.email: BOUNCE for c in cases.values() if c.bounces}
        with RecordingSMTPServer(reject=reject) as smtp:
            for start, end in intervals:
                results.append(run_interval(engine, spec, start, end,
                                            lambda name: EmailChannel("127.0.0.1", smtp.port)))
            received = list(smtp.messages)
    finally:
        if previous_caps is None:
            os.environ.pop("LIFECYCLE_FREQUENCY_CAPS", None)
        else:
            os.environ["LIFECYCLE_FREQUENCY_CAPS"] = previous_caps
    return NotificationRun(engine, anchor, planted, cases, intervals, results, [m.message() for m in received],
                           [m.rcpt_tos for m in received], suppressions_before, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- expected outcome


@dataclass
class Notice:
    key: str
    customer_id: int
    order_id: int
    notice: str  # confirmation / shipping
    at: datetime  # the event: ordered_at or shipped_at
    enrolled_at: datetime
    status: str = "planned"
    reason: str | None = None


@dataclass
class Expected:
    notices: dict[str, Notice]
    quarantined: dict[str, list[datetime]]
    per_run: list[tuple[datetime, int, int]]  # (run end, selected, quarantined)
    suppressed_after: dict[int, str] = field(default_factory=dict)


def shop_frames(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    with engine.connect() as conn:
        return {t: pd.read_sql(sa.text(f"SELECT * FROM shop.{t}"), conn, coerce_float=False)
                for t in ("customers", "orders", "order_items", "products")}


def expected_outcome(run: NotificationRun, frames: dict[str, pd.DataFrame]) -> Expected:
    emails = dict(zip(frames["customers"].customer_id.astype(int), frames["customers"].email, strict=True))
    bouncing = {c.email for c in run.extras.values() if c.bounces}
    suppressed = dict(run.suppressions_before)
    events = []  # (order_id, customer_id, notice, at)
    for o in frames["orders"].itertuples(index=False):
        if o.status == "cancelled":
            continue
        events.append((int(o.order_id), int(o.customer_id), "confirmation", py(o.ordered_at)))
        if py(o.shipped_at) is not None:
            events.append((int(o.order_id), int(o.customer_id), "shipping", py(o.shipped_at)))

    notices: dict[str, Notice] = {}
    quarantined: dict[str, list[datetime]] = {}
    per_run = []
    for _, as_of in run.intervals:
        rows = [e for e in events if as_of - LOOKBACK <= e[3] < as_of]
        bad = 0
        new = []
        for order_id, customer_id, notice, at in sorted(rows, key=lambda e: (e[3], e[0])):
            key = f"{order_id}:{notice}"
            if not VALID_EMAIL.match(emails[customer_id] or ""):
                quarantined.setdefault(key, []).append(as_of)
                bad += 1
            elif key not in notices:
                notices[key] = Notice(key, customer_id, order_id, notice, at, as_of)
                new.append(notices[key])
        per_run.append((as_of, len(rows), bad))
        # Sent in the run that enrolled them (due at the event; never later than max_lateness
        # because the lookback equals it), after the transactional send-time checks.
        for n in new:
            assert n.at + MAX_LATENESS >= as_of
            reason = suppressed.get(n.customer_id)
            if reason in BLOCKING:
                n.status, n.reason = "suppressed", f"suppressed: {reason}"
            elif emails[n.customer_id] in bouncing:
                n.status, n.reason = "failed", "hard bounce"
                suppressed[n.customer_id] = "hard_bounce"
            else:
                n.status = "sent"
    return Expected(notices, quarantined, per_run, suppressed)


@pytest.fixture(scope="module")
def frames(run) -> dict[str, pd.DataFrame]:
    return shop_frames(run.engine)


@pytest.fixture(scope="module")
def expected(run, frames) -> Expected:
    return expected_outcome(run, frames)


def message_id(key: str) -> str:
    """The Message-ID the engine derives from the idempotency key (the contract: stable per message)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def local_date(at: datetime, tz: str, locale: str) -> str:
    """The day in the customer's zone, in their locale's long format (CLDR, via babel)."""
    day = at.astimezone(ZoneInfo(tz)).date()
    return babel.dates.format_date(day, "long", locale=locale)


# ----------------------------------------------------------------------------- the checks


def test_runs_select_and_quarantine_what_the_rules_pick(run, expected):
    assert len(run.intervals) == 42
    statuses = run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey GROUP BY status")
    assert dict(statuses) == {"ok": len(run.intervals)}
    actual = [(end, r["selected"], r["quarantined"]) for (_, end), r in zip(run.intervals, run.results, strict=True)]
    assert_same(actual, expected.per_run, "(run end, rows selected, rows quarantined)")
    quarantine = run.query(
        "SELECT q.enrollment_key, q.reasons, r.interval_end FROM lifecycle.quarantine q "
        "JOIN lifecycle.runs r USING (journey, run_id) WHERE q.journey = :journey")
    wanted = [(k, ("email: not a valid address",), end) for k, ends in expected.quarantined.items() for end in ends]
    assert_same([(k, tuple(r), end) for k, r, end in quarantine], wanted, "quarantine (key, reasons, run end)")
    assert expected.quarantined[f"{run.extras['invalid_email'].order_id}:confirmation"] == [
        run.anchor - h * HOUR for h in range(7, -1, -1)]


def test_one_enrollment_per_order_and_notice_timed_from_its_event(run, expected):
    rows = run.query("SELECT enrollment_key, customer_id::bigint, entered_at, enrolled_at, status, holdout "
                     "FROM lifecycle.enrollments WHERE journey = :journey")
    wanted = [(n.key, n.customer_id, n.at, n.enrolled_at, "completed", False) for n in expected.notices.values()]
    assert_same([tuple(r) for r in rows], wanted, "enrollments (key, customer, entered_at, enrolled_at, status, "
                                                  "holdout)")
    kinds = {n.notice for n in expected.notices.values()}
    assert kinds == {"confirmation", "shipping"}
    assert len(expected.notices) >= 60, len(expected.notices)


def test_every_notice_is_recorded_once_with_its_outcome(run, expected):
    rows = run.query(
        "SELECT e.enrollment_key, m.step, m.channel, m.kind, m.status, m.reason, m.due_at, m.planned_for, "
        "m.idempotency_key FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id) "
        "WHERE m.journey = :journey")
    actual = []
    for key, step, channel, kind, status, reason, due_at, planned_for, idem in rows:
        assert idem == f"{JOURNEY}:{key}:notice:email"
        if status == "failed" and reason.startswith(f"hard bounce: SMTP RCPT {BOUNCE[:3]}"):
            reason = "hard bounce"
        actual.append((key, step, channel, kind, status, reason, due_at, planned_for))
    wanted = [(n.key, "notice", "email", "transactional", n.status, n.reason, n.at, n.enrolled_at)
              for n in expected.notices.values()]
    assert_same(actual, wanted, "messages (key, step, channel, kind, status, reason, due, planned by run)")
    statuses = {n.status for n in expected.notices.values()}
    assert statuses == {"sent", "suppressed", "failed"}, statuses


def test_the_smtp_server_received_each_sent_notice_once(run, expected):
    sent = [n for n in expected.notices.values() if n.status == "sent"]
    got = [(m["Message-ID"], m["X-Lifecycle-Step"]) for m in run.emails]
    domain = SHOP["from_email"].split("@")[-1]
    assert_same(got, [(f"<{message_id(f'{JOURNEY}:{n.key}:notice:email')}@lifecycle.{domain}>", "notice")
                      for n in sent], "(Message-ID, step) received")
    for msg, rcpt in zip(run.emails, run.rcpt_tos, strict=True):
        assert rcpt == [msg["To"]]
        assert msg["X-Lifecycle-Journey"] == JOURNEY
    # Each customer gets their notices in the order of the events (a confirmation before the
    # shipping notice of the same order, even when one run sends both).
    by_id = {f"<{message_id(f'{JOURNEY}:{n.key}:notice:email')}@lifecycle.{domain}>": n for n in sent}
    arrivals: dict[int, list[datetime]] = {}
    for msg in run.emails:
        n = by_id[msg["Message-ID"]]
        arrivals.setdefault(n.customer_id, []).append(n.at)
    assert all(times == sorted(times) for times in arrivals.values())
    # Two notices to one customer within a day, both delivered under a 1-a-day marketing cap.
    by_customer: dict[int, list[datetime]] = {}
    for n in sent:
        by_customer.setdefault(n.customer_id, []).append(n.enrolled_at)
    close = [c for c, ts in by_customer.items() if len(ts) > 1 and max(ts) - min(ts) < DAY]
    assert len(close) >= 3, close


def test_transactional_mail_needs_no_consent_and_ignores_marketing_opt_outs(run, expected):
    """The issue's cases: no consent row, consent withdrawn, unsubscribed, sunset: all get their notices."""
    by_customer: dict[int, list[Notice]] = {}
    for n in expected.notices.values():
        by_customer.setdefault(n.customer_id, []).append(n)
    received = {m["To"] for m in run.emails}
    for name, notices in (("order_notifications_no_consent", {"confirmation", "shipping"}),
                          ("order_notifications_opted_out", {"confirmation", "shipping"})):
        case = run.planted[name]
        got = by_customer[case.customer_id]
        assert {(n.notice, n.status) for n in got} == {(k, "sent") for k in notices}, name
        assert case.email in received
    consent = dict(run.query("SELECT customer_id, status FROM shop.consents WHERE channel = 'email' "
                             "AND customer_id IN (:a, :b)", a=run.planted["order_notifications_no_consent"].customer_id,
                             b=run.planted["order_notifications_opted_out"].customer_id))
    assert consent == {run.planted["order_notifications_opted_out"].customer_id: "opted_out"}
    for name, notices in (("unsubscribed", {"confirmation", "shipping"}), ("sunset", {"confirmation"})):
        c = run.extras[name]
        assert {(n.notice, n.status) for n in by_customer[c.customer_id]} == {(k, "sent") for k in notices}, name
        assert c.email in received
    # ... and the unsubscribe is still there: transactional mail neither lifts nor ignores it for marketing.
    assert dict(run.query("SELECT customer_id::bigint, reason FROM lifecycle.suppressions WHERE customer_id = CAST(:c AS text)",
                          c=run.extras["unsubscribed"].customer_id)) == {run.extras["unsubscribed"].customer_id:
                                                                          "unsubscribe"}


def test_hard_bounces_and_complaints_stop_transactional_mail(run, expected):
    def outcome(c: Extra) -> dict[str, tuple]:
        return {s: (st, r) for s, st, r in run.query(
            "SELECT split_part(e.enrollment_key, ':', 2), m.status, m.reason FROM lifecycle.messages m "
            "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.customer_id = CAST(:c AS text)", c=c.customer_id)}

    for name in ("hard_bounce", "unsubscribed_then_bounces"):
        c = run.extras[name]
        got = outcome(c)
        assert got["confirmation"][0] == "failed" and got["confirmation"][1].startswith("hard bounce: SMTP RCPT 550")
        assert got["shipping"] == ("suppressed", "suppressed: hard_bounce"), name
    # The bounce replaced the earlier unsubscribe: the address itself is now known to be dead.
    reasons = dict(run.query("SELECT customer_id::bigint, reason FROM lifecycle.suppressions WHERE channel = 'email'"))
    assert reasons[run.extras["unsubscribed_then_bounces"].customer_id] == "hard_bounce"
    assert reasons[run.extras["hard_bounce"].customer_id] == "hard_bounce"
    assert reasons == expected.suppressed_after
    c = run.extras["complaint"]
    assert outcome(c) == {"confirmation": ("suppressed", "suppressed: complaint"),
                          "shipping": ("suppressed", "suppressed: complaint")}
    bounced = {run.extras[n].email for n in ("hard_bounce", "unsubscribed_then_bounces", "complaint")}
    assert not bounced & {m["To"] for m in run.emails}


def test_planted_cases_play_out(run, expected):
    a = run.anchor
    by_order: dict[int, dict[str, Notice]] = {}
    for n in expected.notices.values():
        by_order.setdefault(n.order_id, {})[n.notice] = n

    def notices(name: str, i: int = 0) -> dict[str, tuple[str, datetime]]:
        order_id = run.planted[name].order_ids[i]
        return {k: (n.status, n.enrolled_at) for k, n in by_order.get(order_id, {}).items()}

    assert notices("order_notifications_placed") == {"confirmation": ("sent", a - 4 * HOUR)}
    assert notices("order_notifications_shipped") == {"confirmation": ("sent", a - 35 * HOUR),
                                                       "shipping": ("sent", a - 29 * HOUR)}
    assert notices("order_notifications_same_hour") == {"confirmation": ("sent", a - 19 * HOUR),
                                                         "shipping": ("sent", a - 19 * HOUR)}
    assert notices("order_notifications_no_consent") == {"confirmation": ("sent", a - 29 * HOUR),
                                                          "shipping": ("sent", a - 9 * HOUR)}
    assert notices("order_notifications_opted_out") == {"confirmation": ("sent", a - 11 * HOUR),
                                                         "shipping": ("sent", a - HOUR)}
    assert notices("order_notifications_cancelled") == {}
    assert notices("order_notifications_backorder") == {"shipping": ("sent", a - 40 * HOUR)}
    assert notices("order_notifications_two_orders", 0) == {"confirmation": ("sent", a - 14 * HOUR)}
    assert notices("order_notifications_two_orders", 1) == {"confirmation": ("sent", a - 14 * HOUR)}
    assert run.extras["invalid_email"].order_id not in by_order
    # Same hour: the confirmation reaches the customer before the shipping notice.
    case = run.planted["order_notifications_same_hour"]
    subjects = [m["Subject"] for m in run.emails if m["To"] == case.email]
    assert subjects == [f"Order confirmed: #{case.order_ids[0]}", f"Your order #{case.order_ids[0]} is on its way"]


def test_every_email_shows_the_order(run, expected, frames):
    """Subject, items (image, name, quantity, price), totals and, for shipping, the shipped date in the
    customer's time zone; a transactional footer (physical address, no List-Unsubscribe)."""
    customers = frames["customers"].set_index("customer_id")
    orders = frames["orders"].set_index("order_id")
    products = frames["products"].set_index("product_id")
    items = frames["order_items"]
    by_id = {f"<{message_id(f'{JOURNEY}:{n.key}:notice:email')}@lifecycle.{SHOP['from_email'].split('@')[-1]}>": n
             for n in expected.notices.values()}
    checked = set()
    for msg in run.emails:
        n = by_id[msg["Message-ID"]]
        order = orders.loc[n.order_id]
        customer = customers.loc[n.customer_id]
        assert msg["To"] == customer.email
        text, html = text_and_html(msg)
        if n.notice == "confirmation":
            assert msg["Subject"] == f"Order confirmed: #{n.order_id}"
            assert f"placed on {local_date(py(order.ordered_at), customer.timezone, customer.locale)}" in text
        else:
            assert msg["Subject"] == f"Your order #{n.order_id} is on its way"
            shipped = local_date(py(order.shipped_at), customer.timezone, customer.locale)
            assert f"shipped on {shipped}" in text and f"shipped on {shipped}" in html
        lines = items[items.order_id == n.order_id]
        assert len(lines)
        for line in lines.itertuples(index=False):
            product = products.loc[line.product_id]
            price = Decimal(str(line.unit_price))
            assert product["name"] in text and htmllib.escape(product["name"]) in html
            assert f"Qty {line.quantity} x {money(price)} = {money(price * line.quantity)}" in text
            assert f'src="{product.image_url}"' in html
            assert money(price * line.quantity) in html
        assert money(Decimal(str(order.total))) in text and money(Decimal(str(order.total))) in html
        # Transactional: no List-Unsubscribe; the footer keeps the address and says what an unsubscribe stops.
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
        for part in (text, html):
            assert SHOP["address"] in part or htmllib.escape(SHOP["address"]) in part
            assert "Unsubscribe from marketing emails" in part
            assert "even if you have unsubscribed from our marketing emails" in part
        checked.add(n.notice)
    assert checked == {"confirmation", "shipping"}
    # The planted shipped order: two hoodies and the vitamins, code WELCOME10.
    case = run.planted["order_notifications_shipped"]
    (msg,) = [m for m in run.emails if m["To"] == case.email and "on its way" in m["Subject"]]
    text, _ = text_and_html(msg)
    assert "Qty 2 x €88.99 = €177.98" in text and "Qty 1 x €21.99 = €21.99" in text
    assert "Order total (code WELCOME10): €199.97" in text


def test_holdout_never_applies(run, spec, tmp_path):
    """The parser refuses holdout_percent on a transactional journey, and the engine ignores a
    holdout flag for transactional mail anyway (a dry run of the last interval with 99%)."""
    assert spec.holdout_percent == 0
    source = (SEGMENTS_DIR / f"{JOURNEY}.sql").read_text(encoding="utf-8")
    path = Path(tmp_path) / f"{JOURNEY}.sql"
    path.write_text(source.replace("kind: transactional\n", "kind: transactional\nholdout_percent: 10\n"), "utf-8")
    with pytest.raises(SpecError, match="holdout_percent: a transactional journey never holds anyone out"):
        load_spec(path)

    held = dataclasses.replace(spec, holdout_percent=99.0)

    def no_delivery(name: str):
        raise AssertionError("a dry run must not open a channel")

    start, end = run.intervals[-1]
    result = run_interval(run.engine, held, start, end, no_delivery, mode="dry", run_id="dry-holdout")
    rows = run.query("SELECT e.holdout, m.status, m.reason, m.customer_id::bigint FROM lifecycle.messages m "
                     "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.journey = :journey AND m.mode = 'dry'")
    assert len(rows) == result["valid"] > 10
    assert sum(1 for h, *_ in rows if h) > len(rows) // 2  # flagged as held out, yet ...
    assert not [r for r in rows if r.reason == "holdout"]
    blocked = {c for c, r in run.query("SELECT customer_id::bigint, reason FROM lifecycle.suppressions")
               if r in BLOCKING}
    assert {r.status for r in rows if r.customer_id not in blocked} == {"dry_run"}  # ... every one goes out


def test_transactional_sends_have_their_own_pool(shop_db, spec):
    from lifecycle.dag_factory import build_journey_dag

    dag = build_journey_dag(spec)
    assert dag.get_task("send_email").pool == "lifecycle_transactional"
    assert "transactional" in dag.tags
