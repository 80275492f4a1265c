"""referral end to end on a fresh demo shop (the `shop_db` fixture, embedded PostgreSQL only):
daily runs ending A-182d and A-100d (earlier enrollments, for the 180-day cooldown), then
every day from A-2d to A+6d (the demo's window and the 7-day reminders after it), emails to a
real SMTP server. The expected outcome is derived here, in Python, from the shop tables (never
the segment SQL), for every customer (the random ones too) and the planted cases by name.

Rules (the product's issue): active, satisfied customers (at least 2 orders that were not
cancelled, the last within 30 days of the run's as_of, no review below 4 stars before it)
enter once per 180 days (key customer:day, clock = the run's as_of). An invitation at once
with a personal link (a 15% code for friends valid 30 days, shop_url/r/<code>); a reminder 7
days later unless they referred someone since entering; when a referral they made since
entering converts (its converted_order_id is an order, not cancelled, placed before the run's
as_of), the enrollment converts with that order and a thank-you brings a 20% reward code
valid 60 days. Enrollments complete 30 days after entry (reminder at 7d + complete_after 23d).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lifecycle.channels.email import EmailChannel
from lifecycle.config import CONDITIONS_DIR, SEGMENTS_DIR, TEMPLATES_DIR
from lifecycle.replay import run_interval
from lifecycle.smtp_sink import RecordingSMTPServer
from lifecycle.spec import SpecError, load_spec

from .conftest import VALID_EMAIL, assert_same, text_and_html

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "referral"
DAY, HOUR = timedelta(days=1), timedelta(hours=1)
A = datetime(2026, 11, 20, tzinfo=UTC)  # the shop_db anchor
ENDS = [A - 182 * DAY, A - 100 * DAY] + [A + i * DAY for i in range(-2, 7)]
MIN_ORDERS, ACTIVE, MIN_RATING, COOLDOWN = 2, 30 * DAY, 4, 180 * DAY
REMINDER_AFTER, DONE_AFTER = 7 * DAY, 30 * DAY  # reminder at 7d; completes 7d + 23d after entry
LATENESS = 2 * DAY  # the daily schedule's default max_lateness
INVITE_CODE = ("REF", Decimal("15"), 30 * DAY)  # (prefix, percent off, validity)
REWARD_CODE = ("RWD", Decimal("20"), 60 * DAY)
SHOP_URL = "https://shop.example.com"

# Test-only customers: the cooldown needs enrollments from long before the demo's window.
# id: (name, order times, description)
COOLDOWN_CASES = {
    900201: ("cooldown_blocked", [A - 130 * DAY, A - 101 * DAY - 5 * HOUR, A - 3 * DAY],
             "enters at the run ending A-100d; qualifies again from A-2d, 98 days later: not enrolled again"),
    900202: ("cooldown_over", [A - 200 * DAY, A - 183 * DAY - 5 * HOUR, A - 5 * DAY],
             "enters at the run ending A-182d and again at A-2d, exactly 180 days later"),
}


def plant(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for cid, (name, ordered, _) in COOLDOWN_CASES.items():
            conn.execute(sa.text(
                "INSERT INTO shop.customers (customer_id, email, first_name, last_name, country, timezone, locale, "
                "created_at) VALUES (:id, :email, 'Cool', 'Planted', 'DE', 'Europe/Berlin', 'de_DE', :t)"),
                {"id": cid, "email": f"referral.{name}@example.com", "t": A - 300 * DAY})
            conn.execute(sa.text(
                "INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, updated_at) "
                "VALUES (:id, 'email', 'opted_in', :t, 'test', :t)"), {"id": cid, "t": A - 300 * DAY})
            for i, t in enumerate(ordered):
                conn.execute(sa.text(
                    "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency) "
                    "VALUES (:o, :c, :t, 'delivered', 42.00, 'EUR')"), {"o": cid * 10 + i, "c": cid, "t": t})


# ----------------------------------------------------------------------------- running it


@dataclass
class ReferralRun:
    engine: sa.Engine
    planted: Any
    results: list[dict]
    emails: list  # EmailMessage, as received
    seconds: float
    snapshot: dict[str, list]  # audit rows after the window
    rerun: dict  # the window's A-1d interval run again afterwards
    rerun_emails: int

    def query(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), {"journey": JOURNEY, **params}).all()


SNAPSHOT = {
    "enrollments": "SELECT enrollment_key, customer_id, entered_at, status, exit_reason, exited_at "
                   "FROM lifecycle.enrollments WHERE journey = :journey",
    "messages": "SELECT idempotency_key, status, reason, sent_at FROM lifecycle.messages WHERE journey = :journey",
    "coupons": "SELECT code, enrollment_id, step FROM lifecycle.coupons WHERE journey = :journey",
    "conversions": "SELECT enrollment_id, order_id, revenue FROM lifecycle.conversions WHERE journey = :journey",
}


@pytest.fixture(scope="module")
def referral_run(shop_db) -> ReferralRun:
    engine, planted, anchor = shop_db
    assert anchor == A
    plant(engine)
    spec = load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")
    results = []
    t0 = time.perf_counter()
    with RecordingSMTPServer() as smtp:
        channel_for = lambda name: EmailChannel("127.0.0.1", smtp.port)  # noqa: E731
        for end in ENDS:
            results.append(run_interval(engine, spec, end - DAY, end, channel_for))
        seconds = time.perf_counter() - t0
        received = len(smtp.messages)
        with engine.connect() as conn:
            snapshot = {name: conn.execute(sa.text(sql), {"journey": JOURNEY}).all() for name, sql in SNAPSHOT.items()}
        # The same interval again (a retry or a backfill, with another run id): nothing new.
        rerun = run_interval(engine, spec, A - 2 * DAY, A - DAY, channel_for, run_id="rerun__A-1d")
        emails = [m.message() for m in smtp.messages]
    return ReferralRun(engine, planted, results, emails[:received], seconds, snapshot, rerun,
                       len(emails) - received)


# ----------------------------------------------------------------------------- expected, from the shop tables


@dataclass
class Msg:
    step: str
    status: str
    reason: str | None
    due_at: datetime
    planned_for: datetime
    coupon: bool = False  # a code was issued with it (it was planned, not expired or skipped)


@dataclass
class Want:
    key: str
    customer_id: int
    entered_at: datetime
    status: str = "active"
    exit_reason: str | None = None
    exited_at: datetime | None = None
    conversion: tuple | None = None  # (order_id, revenue)
    messages: dict[str, Msg] = field(default_factory=dict)


@dataclass
class Expected:
    enrollments: dict[str, Want]
    selected: list[int]
    quarantined: list[tuple[str, datetime]]


def expected_referral(engine: sa.Engine) -> Expected:
    with engine.connect() as conn:
        email_of = dict(conn.execute(sa.text("SELECT customer_id, email FROM shop.customers")).all())
        consent = dict(conn.execute(sa.text("SELECT customer_id, status FROM shop.consents WHERE channel = 'email'")).all())
        orders = conn.execute(sa.text("SELECT order_id, customer_id, ordered_at, status, total FROM shop.orders")).all()
        reviews = conn.execute(sa.text("SELECT customer_id, rating, created_at FROM shop.reviews")).all()
        referrals = conn.execute(sa.text(
            "SELECT referrer_customer_id, created_at, converted_order_id FROM shop.referrals")).all()
        suppressed = conn.execute(sa.text("SELECT count(*) FROM lifecycle.suppressions")).scalar_one()
    assert not suppressed, "a fresh shop has no suppressions"
    order = {o.order_id: o for o in orders}
    orders_of: dict[int, list] = {}
    for o in orders:
        if o.status != "cancelled":
            orders_of.setdefault(o.customer_id, []).append(o.ordered_at)
    low_reviews: dict[int, list[datetime]] = {}
    for r in reviews:
        if r.rating < MIN_RATING:
            low_reviews.setdefault(r.customer_id, []).append(r.created_at)
    referred: dict[int, list] = {}
    for r in referrals:
        referred.setdefault(r.referrer_customer_id, []).append(r)

    enrollments: dict[str, Want] = {}
    selected, quarantined = [], []

    def send_status(cid: int) -> tuple[str, str | None]:
        status = consent.get(cid)
        if status is None:
            return "suppressed", "no consent"
        return ("sent", None) if status == "opted_in" else ("suppressed", "consent withdrawn")

    def plan(e: Want, step: str, due: datetime, as_of: datetime, skip: str | None = None) -> None:
        if skip:
            e.messages[step] = Msg(step, "skipped", skip, due, as_of)
        elif due + LATENESS < as_of:
            e.messages[step] = Msg(step, "expired", f"late: due {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC", due, as_of)
        else:
            e.messages[step] = Msg(step, *send_status(e.customer_id), due, as_of, coupon=step != "reminder")

    for as_of in ENDS:
        rows = []
        for cid, times in orders_of.items():
            before = [t for t in times if t < as_of]
            if len(before) < MIN_ORDERS or max(before) < as_of - ACTIVE:
                continue
            if any(t < as_of for t in low_reviews.get(cid, ())):
                continue
            key = f"{cid}:{as_of:%Y-%m-%d}"
            if any(e.customer_id == cid and e.key != key and abs(e.entered_at - as_of) < COOLDOWN
                   for e in enrollments.values()):
                continue
            rows.append((key, cid))
        selected.append(len(rows))
        for key, cid in rows:
            if not VALID_EMAIL.match(email_of[cid] or ""):
                quarantined.append((key, as_of))
            elif key not in enrollments:
                enrollments[key] = Want(key, cid, as_of)
        active = [e for e in enrollments.values() if e.status == "active" and e.entered_at <= as_of]

        for e in active:  # exits first: a referral made since entry whose friend ordered before as_of
            since = [r for r in referred.get(e.customer_id, ()) if e.entered_at <= r.created_at < as_of]
            hits = sorted((order[r.converted_order_id] for r in since if r.converted_order_id is not None),
                          key=lambda o: o.ordered_at)
            hits = [o for o in hits if o.status != "cancelled" and o.ordered_at < as_of]
            if hits:
                e.status, e.exit_reason = "converted", "referral_converted_since_entry"
                e.exited_at, e.conversion = min(hits[0].ordered_at, as_of), (str(hits[0].order_id), hits[0].total)
                plan(e, "thank_you", e.exited_at, as_of)

        for e in active:
            if e.status != "active":
                continue
            if "invite" not in e.messages:
                plan(e, "invite", e.entered_at, as_of)
            due = e.entered_at + REMINDER_AFTER
            if "reminder" not in e.messages and due <= as_of:
                made = any(e.entered_at <= r.created_at < as_of for r in referred.get(e.customer_id, ()))
                plan(e, "reminder", due, as_of, "condition met: referral_made_since_entry" if made else None)
            if len(e.messages) == 2 and e.entered_at + DONE_AFTER <= as_of:
                e.status = "completed"
    return Expected(enrollments, selected, quarantined)


@pytest.fixture(scope="module")
def expected(referral_run) -> Expected:
    return expected_referral(referral_run.engine)


def case_id(run: ReferralRun, name: str) -> int:
    if name in run.planted:
        return run.planted[name].customer_id
    return next(cid for cid, (n, *_) in COOLDOWN_CASES.items() if n == name)


def by_customer(expected: Expected) -> dict[int, list[Want]]:
    out: dict[int, list[Want]] = {}
    for e in sorted(expected.enrollments.values(), key=lambda e: e.entered_at):
        out.setdefault(e.customer_id, []).append(e)
    return out


# ----------------------------------------------------------------------------- the checks


def test_header_and_the_exit_coupon_key(referral_run, tmp_path: Path):
    spec = load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")
    assert (spec.schedule, spec.entry_key, spec.entered_at) == ("daily", "referral_key", "entered_at")
    assert spec.params == {"min_orders": 2, "active_days": 30, "min_rating": 4, "cooldown_days": 180}
    invite, reminder = spec.steps
    assert (invite.after, invite.coupon.percent_off, invite.coupon.valid_days, invite.coupon.prefix) == \
           (timedelta(0), 15, 30, "REF")
    assert (reminder.after, reminder.unless) == (REMINDER_AFTER, "referral_made_since_entry")
    (rule,) = spec.exits
    assert (rule.when, rule.message_step, rule.coupon.percent_off, rule.coupon.valid_days) == \
           ("referral_converted_since_entry", "thank_you", 20, 60)
    # A bad reward coupon is reported with the key at fault, like a step's.
    text = (SEGMENTS_DIR / f"{JOURNEY}.sql").read_text().replace("percent_off: 20,", "percent_off: 0,")
    (tmp_path / f"{JOURNEY}.sql").write_text(text)
    with pytest.raises(SpecError, match=r"exit\[0\]\.then\.coupon\.percent_off"):
        load_spec(tmp_path / f"{JOURNEY}.sql", templates_dir=TEMPLATES_DIR, conditions_dir=CONDITIONS_DIR)


def test_runs_select_what_the_rules_pick(referral_run, expected):
    assert [r["selected"] for r in referral_run.results] == expected.selected
    assert not expected.quarantined and not any(r["quarantined"] for r in referral_run.results)
    statuses = dict(referral_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey "
                                       "AND run_id <> 'rerun__A-1d' GROUP BY status"))
    assert statuses == {"ok": len(ENDS)}
    assert len(expected.enrollments) > 100  # random customers qualify too, not only the planted ones
    messages = [m for e in expected.enrollments.values() for m in e.messages.values()]
    print(f"referral: {len(ENDS)} runs in {referral_run.seconds:.1f}s; {len(expected.enrollments)} enrollments, "
          f"{len(messages)} messages ({sum(m.status == 'sent' for m in messages)} sent), "
          f"{sum(m.coupon for m in messages)} codes")


def test_enrollments_once_per_180_days(referral_run, expected):
    actual = referral_run.query(
        "SELECT enrollment_key, customer_id::bigint, entered_at, enrolled_at, status, exit_reason, exited_at, holdout "
        "FROM lifecycle.enrollments WHERE journey = :journey")
    wanted = [(e.key, e.customer_id, e.entered_at, e.entered_at, e.status, e.exit_reason, e.exited_at, False)
              for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, exit reason, exited, holdout)")

    mine = by_customer(expected)
    for times in ([e.entered_at for e in es] for es in mine.values()):
        assert all(b - a >= COOLDOWN for a, b in zip(times, times[1:], strict=False))
    entered = {name: [e.entered_at for e in mine.get(case_id(referral_run, name), [])] for name in (
        "referral_invited", "referral_converts", "referral_second_order_later", "referral_active_boundary",
        "referral_four_stars", "referral_no_consent", "referral_lapsed", "referral_low_review",
        "referral_cancelled_order", "cooldown_blocked", "cooldown_over")}
    assert entered == {
        "referral_invited": [A - 2 * DAY], "referral_converts": [A - 2 * DAY],
        "referral_second_order_later": [A - DAY],  # one order as of A-2d
        "referral_active_boundary": [A - 2 * DAY],  # last order exactly 30 days earlier
        "referral_four_stars": [A - 2 * DAY], "referral_no_consent": [A - 2 * DAY],
        "referral_lapsed": [], "referral_low_review": [], "referral_cancelled_order": [],
        "cooldown_blocked": [A - 100 * DAY], "cooldown_over": [A - 182 * DAY, A - 2 * DAY],
    }
    assert [e.key for e in mine[case_id(referral_run, "cooldown_over")]] == [
        f"900202:{A - 182 * DAY:%Y-%m-%d}", f"900202:{A - 2 * DAY:%Y-%m-%d}"]


def test_messages_and_reasons(referral_run, expected):
    actual = []
    for key, step, channel, status, reason, due, planned_for in referral_run.query(
            "SELECT e.enrollment_key, m.step, m.channel, m.status, m.reason, m.due_at, m.planned_for "
            "FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE m.journey = :journey"):
        assert channel == "email"
        actual.append((key, step, status, reason.split(",")[0] if status == "expired" else reason, due, planned_for))
    wanted = [(e.key, m.step, m.status, m.reason, m.due_at, m.planned_for)
              for e in expected.enrollments.values() for m in e.messages.values()]
    for status in sorted({r[2] for r in actual} | {r[2] for r in wanted}):
        assert_same([r for r in actual if r[2] == status], [r for r in wanted if r[2] == status],
                    f"messages with status {status!r} (key, step, status, reason, due, planned run)")

    def steps(name: str) -> dict[str, tuple]:
        (e,) = [e for e in by_customer(expected)[case_id(referral_run, name)] if e.entered_at >= A - 2 * DAY]
        return {s: (m.status, m.reason, m.planned_for) for s, m in e.messages.items()}

    made = "condition met: referral_made_since_entry"
    assert steps("referral_invited") == {"invite": ("sent", None, A - 2 * DAY), "reminder": ("sent", None, A + 5 * DAY)}
    assert steps("referral_converts") == {"invite": ("sent", None, A - 2 * DAY), "thank_you": ("sent", None, A)}
    assert steps("referral_referred_pending")["reminder"] == ("skipped", made, A + 5 * DAY)
    assert steps("referral_friend_cancelled")["reminder"] == ("skipped", made, A + 5 * DAY)
    assert steps("referral_referred_before")["reminder"] == ("sent", None, A + 5 * DAY)
    assert steps("referral_no_consent")["invite"] == ("suppressed", "no consent", A - 2 * DAY)
    for name in ("referral_referred_pending", "referral_friend_cancelled", "referral_referred_before"):
        assert "thank_you" not in steps(name)


def test_a_converting_referral_converts_with_the_friends_order(referral_run, expected):
    actual = referral_run.query(
        "SELECT e.enrollment_key, c.customer_id::bigint, c.condition, c.order_id, c.revenue, c.converted_at "
        "FROM lifecycle.conversions c JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = :journey")
    wanted = [(e.key, e.customer_id, e.exit_reason, *e.conversion, e.exited_at)
              for e in expected.enrollments.values() if e.conversion]
    assert_same(actual, wanted, "conversions (key, customer, condition, order, revenue, at)")
    case = referral_run.planted["referral_converts"]
    details = dict(case.details)
    (friend_order,) = referral_run.query("SELECT order_id, customer_id, ordered_at, total FROM shop.orders "
                                         "WHERE order_id = :o", o=details["friend_order_id"])
    assert friend_order.customer_id == details["friend_customer_id"] != case.customer_id
    assert [r[1:] for r in actual if r[1] == case.customer_id] == [
        (case.customer_id, "referral_converted_since_entry", str(friend_order.order_id), friend_order.total,
         A - 10 * HOUR)]
    assert friend_order.ordered_at == A - 10 * HOUR


def test_codes_personal_link_and_reward(referral_run, expected):
    rows = referral_run.query(
        "SELECT e.enrollment_key, c.customer_id::bigint, c.step, c.code, c.percent_off, c.valid_from, c.valid_until "
        "FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = :journey")
    wanted = []
    for e in expected.enrollments.values():
        for m in e.messages.values():
            if m.coupon:
                prefix, pct, valid = INVITE_CODE if m.step == "invite" else REWARD_CODE
                wanted.append((e.key, e.customer_id, m.step, prefix, pct, m.due_at, m.due_at + valid))
    assert_same([(k, c, s, code[:3], pct, f, u) for k, c, s, code, pct, f, u in rows], wanted,
                "coupons (key, owner, step, prefix, percent, valid from, until)")
    assert all(len(code) == 19 and code[3:].isalnum() for *_, code, _, _, _ in rows)
    assert len({r.code for r in rows}) == len(rows)
    rewards = [r for r in rows if r.step == "thank_you"]
    assert [r.customer_id for r in rewards] == [referral_run.planted["referral_converts"].customer_id]
    assert (rewards[0].valid_from, rewards[0].valid_until) == (A - 10 * HOUR, A + 60 * DAY - 10 * HOUR)


def test_what_the_smtp_server_received(referral_run, expected):
    email_of = dict(referral_run.query("SELECT customer_id, email FROM shop.customers"))
    sent = [(email_of[e.customer_id], m.step) for e in expected.enrollments.values()
            for m in e.messages.values() if m.status == "sent"]
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in referral_run.emails], sent, "emails (To, step)")
    assert len({m["Message-ID"] for m in referral_run.emails}) == len(referral_run.emails)

    codes: dict[tuple[int, str], list[str]] = {}
    for cid, step, code in referral_run.query(
            "SELECT customer_id::bigint, step, code FROM lifecycle.coupons WHERE journey = :journey ORDER BY created_at"):
        codes.setdefault((cid, step), []).append(code)
    customer_of = {v: k for k, v in email_of.items()}
    for m in referral_run.emails:
        cid, step = customer_of[m["To"]], m["X-Lifecycle-Step"]
        text, html = text_and_html(m)
        assert m["X-Lifecycle-Journey"] == JOURNEY and m["List-Unsubscribe"]
        own = codes[(cid, "invite")]  # one per enrollment of the customer (two when 180 days apart)
        shown = [code for code in own if code in text]
        if step in ("invite", "reminder"):
            # the personal link: the shop's /r/ path and the customer's own code (the friends' 15%)
            (code,) = shown
            assert f"{SHOP_URL}/r/{code}" in text and f'href="{SHOP_URL}/r/{code}"' in html
            assert "15% off" in text
        else:
            (reward,) = codes[(cid, "thank_you")]
            assert reward in text and reward in html and "20% off" in m["Subject"]
            assert not shown  # the reward, not the friends' code
    converts = referral_run.planted["referral_converts"]
    assert [m["X-Lifecycle-Step"] for m in referral_run.emails if m["To"] == converts.email] == ["invite", "thank_you"]


def test_running_an_interval_again_changes_nothing(referral_run):
    assert referral_run.rerun["enrolled"] == {"entered": 0, "refreshed": 0, "quarantined": 0}
    assert referral_run.rerun_emails == 0
    with referral_run.engine.connect() as conn:
        after = {name: conn.execute(sa.text(sql), {"journey": JOURNEY}).all() for name, sql in SNAPSHOT.items()}
    for name, rows in referral_run.snapshot.items():
        assert_same(after[name], rows, f"{name} after running A-1d again")
