"""just_because end to end on a fresh demo shop on the embedded PostgreSQL: a handful of daily
runs (the demo's three days and the day after, then New Year 2028/2029, a leap year's end),
email to a real SMTP server, compared with the outcome derived here in Python from the shop
tables (never the segment SQL).

The rules, as this test states them: a customer's surprise day in year Y is
1 January + floor(h * days_in_Y / 2**32), h = the first 8 hex digits of md5(str(customer_id))
(hashlib). A daily run over [start, end) selects each customer with an account, a
non-cancelled order and an opted-in email consent (all before `end`) whose day falls in
(local date at start, local date at end] on their own calendar (zoneinfo; an unknown or
missing zone counts as UTC); key customer:year-of-that-day, so at most once a year. One email
at once with a personal 15% code valid 14 days; an order with the code converts.

Besides the live runs, the segment is staged (the runner's first stage, without sending) over
all of 2028 to check every eligible customer gets exactly the day the hash says and that the
days spread evenly, and over 14 consecutive days around 29 February 2028 to check that daily
runs reach each customer exactly once. Test-only customers: 3,660 customers (ids 700001+) in
many time zones for the spread, and a few with ids picked for their day (New Year in
Kiritimati, UTC and Pago Pago, 31 December of a leap year, a customer whose time zone moves
west after their day).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
import sqlalchemy as sa

from lifecycle import stage
from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR
from lifecycle.replay import run_interval
from lifecycle.run_context import RunContext
from lifecycle.smtp_sink import RecordingSMTPServer
from lifecycle.spec import load_spec

from .conftest import DAY, HOUR, VALID_EMAIL, assert_same, text_and_html

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "just_because"
COUPON_DAYS, COUPON_PERCENT = 14, Decimal("15")
COMPLETE_AFTER = 14 * DAY
MAX_LATENESS = 2 * DAY
SPREAD_CUSTOMERS = 3660  # 10 a day in 2028, on average
SPREAD_ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC",
                "Australia/Lord_Howe", "Asia/Kathmandu", "America/Los_Angeles", "Not/A_Zone", None)
REDEEM_ORDER_ID = 990_000_001


def utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


# ----------------------------------------------------------------------------- the day, in Python


def surprise_date(customer_id: int, year: int) -> date:
    h = int(hashlib.md5(str(customer_id).encode()).hexdigest()[:8], 16)
    days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
    return date(year, 1, 1) + timedelta(days=h * days // 2**32)


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def first_id(start: int, wanted, taken: set[int]) -> int:
    """The first id from `start` (not yet taken) whose surprise days satisfy `wanted`."""
    cid = start
    while cid in taken or not wanted(cid):
        cid += 1
    taken.add(cid)
    return cid


# ----------------------------------------------------------------------------- test-only customers


@dataclass
class Special:
    customer_id: int
    timezone: str
    day: date  # the day the case is about
    selected_by: datetime  # end of the run that enrolls them


def specials() -> dict[str, Special]:
    taken: set[int] = set()
    dec31 = lambda cid: surprise_date(cid, 2028) == date(2028, 12, 31)  # noqa: E731 (day 366 of a leap year)
    jan1 = lambda cid: surprise_date(cid, 2029) == date(2029, 1, 1)  # noqa: E731
    dec30 = lambda cid: surprise_date(cid, 2028) == date(2028, 12, 30)  # noqa: E731
    return {
        # At 00:00 UTC it is 01:00 in Berlin, 14:00 the same day in Kiritimati (UTC+14) and 13:00
        # the day before in Pago Pago (UTC-11).
        "leap_day_366_berlin": Special(first_id(990_001, dec31, taken), "Europe/Berlin", date(2028, 12, 31),
                                       utc(2028, 12, 31)),
        "leap_day_366_pago_pago": Special(first_id(990_001, dec31, taken), "Pacific/Pago_Pago", date(2028, 12, 31),
                                          utc(2029, 1, 1)),
        "new_year_kiritimati": Special(first_id(990_001, jan1, taken), "Pacific/Kiritimati", date(2029, 1, 1),
                                       utc(2029, 1, 1)),
        "new_year_utc": Special(first_id(990_001, jan1, taken), "UTC", date(2029, 1, 1), utc(2029, 1, 1)),
        "new_year_pago_pago": Special(first_id(990_001, jan1, taken), "Pacific/Pago_Pago", date(2029, 1, 1),
                                      utc(2029, 1, 2)),
        # Tokyo on their day (run ending 2028-12-30), then moved to Los Angeles, where the run
        # ending 2028-12-31 is still 30 December: selected again, enrolled and emailed once.
        "moves_west": Special(first_id(990_001, dec30, taken), "Asia/Tokyo", date(2028, 12, 30), utc(2028, 12, 30)),
    }


MOVE_WEST_AFTER = utc(2028, 12, 30)  # the run after which moves_west's time zone changes
MOVED_TO = "America/Los_Angeles"


def plant(engine: sa.Engine, anchor: datetime, people: dict[str, Special]) -> None:
    created, ordered = anchor - 200 * DAY, anchor - 100 * DAY
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, locale, created_at) "
            "SELECT 700000 + i, 'spread.' || i || '@example.com', 'Spread', 'DE', "
            "       (CAST(:zones AS text[]))[1 + i % :n], 'en_GB', :created "
            "FROM generate_series(1, :count) AS i"),
            {"zones": list(SPREAD_ZONES), "n": len(SPREAD_ZONES), "created": created, "count": SPREAD_CUSTOMERS})
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, locale, created_at) "
            "VALUES (:id, :email, :first, 'DE', :tz, 'en_GB', :created)"),
            [{"id": s.customer_id, "email": f"jb.{name.replace('_', '.')}@example.com", "first": name.split("_")[0],
              "tz": s.timezone, "created": created} for name, s in people.items()])
        ids = [700000 + i for i in range(1, SPREAD_CUSTOMERS + 1)] + [s.customer_id for s in people.values()]
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, updated_at) "
            "SELECT c, 'email', 'opted_in', :t, 'checkout', :t FROM unnest(CAST(:ids AS bigint[])) AS c"),
            {"ids": ids, "t": created})
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, shipping_country) "
            "SELECT 980000000 + c, c, :t, 'delivered', 42.00, 'EUR', 'DE' FROM unnest(CAST(:ids AS bigint[])) AS c"),
            {"ids": ids, "t": ordered})


# ----------------------------------------------------------------------------- the run


@dataclass
class JustBecauseRun:
    engine: sa.Engine
    anchor: datetime
    planted: Any
    people: dict[str, Special]
    ends: list[datetime]
    results: list[dict]
    emails: list
    redeemed_at: datetime
    seconds: float

    def query(self, sql: str, **params) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), {"journey": JOURNEY, **params}).all()


def redeem_run_end(planted, anchor: datetime) -> datetime:
    """The run that enrolls the planted just_because_surprise customer (Berlin: their day's midnight UTC)."""
    day = dict(planted["just_because_surprise"].details)["surprise_date"]
    end = datetime.combine(day, datetime.min.time(), UTC)
    assert anchor - 2 * DAY <= end <= anchor
    return end


@pytest.fixture(scope="module")
def jb_run(shop_db) -> JustBecauseRun:
    engine, planted, a = shop_db
    people = specials()
    plant(engine, a, people)
    spec = load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")
    ends = [a - 2 * DAY, a - DAY, a, a + DAY, utc(2028, 12, 30), utc(2028, 12, 31), utc(2029, 1, 1), utc(2029, 1, 2)]
    redeem_after = redeem_run_end(planted, a)
    redeemed_at = redeem_after + 6 * HOUR
    results = []
    t0 = time.perf_counter()
    with RecordingSMTPServer() as smtp:
        channel_for = lambda name: EmailChannel("127.0.0.1", smtp.port)  # noqa: E731
        for end in ends:
            results.append(run_interval(engine, spec, end - DAY, end, channel_for))
            with engine.begin() as conn:
                if end == redeem_after:  # the surprise customer uses the code six hours later
                    code = conn.execute(sa.text("SELECT code FROM lifecycle.coupons WHERE journey = :j "
                                                "AND customer_id = CAST(:c AS text)"),
                                        {"j": JOURNEY, "c": planted["just_because_surprise"].customer_id}).scalar_one()
                    conn.execute(sa.text(
                        "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, "
                        "coupon_code, shipping_country) VALUES (:o, :c, :t, 'placed', 61.50, 'EUR', :code, 'DE')"),
                        {"o": REDEEM_ORDER_ID, "c": planted["just_because_surprise"].customer_id, "t": redeemed_at,
                         "code": code})
                if end == MOVE_WEST_AFTER:
                    conn.execute(sa.text("UPDATE shop.customers SET timezone = :tz WHERE customer_id = :c"),
                                 {"tz": MOVED_TO, "c": people["moves_west"].customer_id})
        emails = [m.message() for m in smtp.messages]
    return JustBecauseRun(engine, a, planted, people, ends, results, emails, redeemed_at, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- expected outcome


@dataclass
class Enr:
    key: str
    customer_id: int
    entered_at: datetime
    status: str = "active"
    conversion: tuple | None = None  # (order_id, revenue, converted_at)
    message: tuple | None = None  # (status, reason, due, planned_for)


@dataclass
class Shop:
    """The shop tables as the model needs them."""

    email_of: dict[int, str]
    created: dict[int, datetime]
    timezone: dict[int, str | None]
    consent: dict[int, str]  # email consent status
    first_order: dict[int, datetime]  # first non-cancelled order
    coupon_orders: list[tuple]  # (order_id, customer_id, ordered_at, total, coupon_code), non-cancelled

    def eligible(self, end: datetime) -> list[int]:
        return [cid for cid, t in self.created.items()
                if t < end and self.consent.get(cid) == "opted_in" and cid in self.first_order
                and self.first_order[cid] < end]


def read_shop(engine: sa.Engine) -> Shop:
    with engine.connect() as conn:
        customers = conn.execute(sa.text("SELECT customer_id, email, created_at, timezone FROM shop.customers")).all()
        consent = dict(conn.execute(sa.text("SELECT customer_id, status FROM shop.consents "
                                            "WHERE channel = 'email'")).all())
        first = dict(conn.execute(sa.text("SELECT customer_id, min(ordered_at) FROM shop.orders "
                                          "WHERE status <> 'cancelled' GROUP BY customer_id")).all())
        coupon_orders = conn.execute(sa.text(
            "SELECT order_id, customer_id, ordered_at, total, coupon_code FROM shop.orders "
            "WHERE status <> 'cancelled' AND coupon_code IS NOT NULL ORDER BY ordered_at, order_id")).all()
    return Shop({c.customer_id: c.email for c in customers}, {c.customer_id: c.created_at for c in customers},
                {c.customer_id: c.timezone for c in customers}, consent, first, list(coupon_orders))


def picks(shop: Shop, start: datetime, end: datetime, tz_of=None) -> list[tuple[str, int, date]]:
    """(key, customer, day) of every customer a run over [start, end) selects."""
    out = []
    for cid in shop.eligible(end):
        tz = zone((tz_of or shop.timezone.get)(cid))
        local_start, local_end = start.astimezone(tz).date(), end.astimezone(tz).date()
        for year in range((local_start + timedelta(days=1)).year, local_end.year + 1):
            day = surprise_date(cid, year)
            if local_start < day <= local_end:
                out.append((f"{cid}:{year}", cid, day))
    return out


@dataclass
class Expected:
    enrollments: dict[str, Enr]
    per_run: list[tuple[datetime, int, int]]  # (end, selected, quarantined)
    selected: dict[datetime, list[tuple[str, int, date]]]
    codes: dict[str, tuple] = field(default_factory=dict)


def derive_expected(run: JustBecauseRun) -> Expected:
    shop = read_shop(run.engine)
    moved = run.people["moves_west"].customer_id
    codes = {k: (code, vf, vu) for k, code, vf, vu in run.query(
        "SELECT e.enrollment_key, c.code, c.valid_from, c.valid_until FROM lifecycle.coupons c "
        "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = :journey")}

    def tz_at(end: datetime):  # the time zone each customer had when the run ending `end` ran
        return lambda cid: run.people["moves_west"].timezone if cid == moved and end <= MOVE_WEST_AFTER \
            else shop.timezone.get(cid)

    enrollments: dict[str, Enr] = {}
    per_run, selected = [], {}
    for end in run.ends:
        rows = picks(shop, end - DAY, end, tz_at(end))
        selected[end] = rows
        bad = 0
        for key, cid, _ in rows:
            if not VALID_EMAIL.match(shop.email_of[cid] or ""):
                bad += 1
            elif key not in enrollments:
                enrollments[key] = Enr(key, cid, end)
        per_run.append((end, len(rows), bad))

        for e in enrollments.values():  # exit: an order with the enrollment's code while it is valid
            if e.status != "active" or e.key not in codes:
                continue
            code, valid_from, valid_until = codes[e.key]
            o = next((o for o in shop.coupon_orders if o.coupon_code == code and valid_from <= o.ordered_at
                      < valid_until and o.ordered_at < end), None)
            if o:
                e.status, e.conversion = "converted", (str(o.order_id), o.total, o.ordered_at)
        for e in enrollments.values():  # the one step, due at entry
            if e.status == "active" and e.message is None:
                if e.entered_at + MAX_LATENESS < end:
                    e.message = ("expired", "late", e.entered_at, end)
                elif shop.consent.get(e.customer_id) is None:
                    e.message = ("suppressed", "no consent", e.entered_at, end)
                elif shop.consent[e.customer_id] != "opted_in":
                    e.message = ("suppressed", "consent withdrawn", e.entered_at, end)
                else:
                    e.message = ("sent", None, e.entered_at, end)
            if e.status == "active" and e.entered_at + COMPLETE_AFTER <= end:
                e.status = "completed"
    return Expected(enrollments, per_run, selected, codes)


@pytest.fixture(scope="module")
def expected(jb_run) -> Expected:
    return derive_expected(jb_run)


def stage_rows(run: JustBecauseRun, start: datetime, end: datetime) -> list[tuple[str, int, date]]:
    """What the segment selects for [start, end): the runner's first stage only (nothing is sent)."""
    spec = load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")
    ctx = RunContext(JOURNEY, f"stage_only__{start.isoformat()}__{end.isoformat()}", "live", start, end)
    stage.stage_segment(run.engine, spec, ctx)
    try:
        return [tuple(r) for r in run.query(
            f"SELECT surprise_key, customer_id, surprise_date FROM {stage.stage_table(ctx)}")]
    finally:
        stage.drop_stage(run.engine, ctx)


# ----------------------------------------------------------------------------- the live runs


def test_runs_select_exactly_the_expected_customers(jb_run, expected):
    statuses = jb_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey GROUP BY status")
    assert dict(statuses) == {"ok": len(jb_run.ends)}
    actual = [(end, r["selected"], r["quarantined"]) for end, r in zip(jb_run.ends, jb_run.results, strict=True)]
    assert_same(actual, expected.per_run, "(run end, rows selected, rows quarantined)")
    assert all(n >= 3 for _, n, _ in expected.per_run), expected.per_run


def test_enrollments_one_per_customer_and_year(jb_run, expected):
    actual = jb_run.query("SELECT enrollment_key, customer_id::bigint, entered_at, enrolled_at, status, holdout "
                          "FROM lifecycle.enrollments WHERE journey = :journey")
    wanted = [(e.key, e.customer_id, e.entered_at, e.entered_at, e.status, False)
              for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, holdout)")
    assert Counter(e.status for e in expected.enrollments.values()).keys() >= {"completed", "active", "converted"}


def test_messages_coupons_and_conversions(jb_run, expected):
    actual = []
    for key, step, status, reason, due, planned_for in jb_run.query(
            "SELECT e.enrollment_key, m.step, m.status, m.reason, m.due_at, m.planned_for FROM lifecycle.messages m "
            "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.journey = :journey"):
        actual.append((key, step, status, reason.split(":")[0] if status == "expired" else reason, due, planned_for))
    wanted = [(e.key, "email", *e.message) for e in expected.enrollments.values() if e.message]
    assert_same(actual, wanted, "messages (key, step, status, reason, due, run)")

    coupons = jb_run.query("SELECT e.enrollment_key, c.code, c.step, c.percent_off, c.valid_from, c.valid_until "
                           "FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id) "
                           "WHERE c.journey = :journey")
    assert sorted(r[0] for r in coupons) == sorted(k for k, e in expected.enrollments.items()
                                                   if e.message and e.message[0] not in ("expired", "skipped"))
    for key, code, step, pct, valid_from, valid_until in coupons:
        e = expected.enrollments[key]
        assert code.startswith("JB") and len(code) == 18 and step == "email" and pct == COUPON_PERCENT
        assert (valid_from, valid_until) == (e.entered_at, e.entered_at + COUPON_DAYS * DAY)
    assert len({r[1] for r in coupons}) == len(coupons)

    conversions = jb_run.query("SELECT e.enrollment_key, c.condition, c.order_id, c.revenue, c.converted_at "
                               "FROM lifecycle.conversions c JOIN lifecycle.enrollments e USING (enrollment_id) "
                               "WHERE c.journey = :journey")
    assert_same(conversions, [(e.key, "redeemed_coupon", *e.conversion) for e in expected.enrollments.values()
                              if e.conversion], "conversions (key, condition, order, revenue, at)")
    surprise = jb_run.planted["just_because_surprise"].customer_id
    assert [(r[0].split(":")[0], r[2], r[3], r[4]) for r in conversions] == [
        (str(surprise), str(REDEEM_ORDER_ID), Decimal("61.50"), jb_run.redeemed_at)]


def test_smtp_received_the_sent_emails_with_the_code(jb_run, expected):
    sent = [e for e in expected.enrollments.values() if e.message and e.message[0] == "sent"]
    email_of = dict(jb_run.query("SELECT customer_id, email FROM shop.customers"))
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in jb_run.emails],
                [(email_of[e.customer_id], "email") for e in sent], "(To, step) received by the SMTP server")
    code_of = {cid: code for cid, code in jb_run.query(
        "SELECT customer_id::bigint, code FROM lifecycle.coupons WHERE journey = :journey")}
    customer_of = {v: k for k, v in email_of.items()}
    for m in jb_run.emails:
        text, body = text_and_html(m)
        code = code_of[customer_of[m["To"]]]
        assert code in text and code in body and "15% off" in text and "15% off" in m["Subject"]
        assert m["X-Lifecycle-Journey"] == JOURNEY and m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_planted_demo_cases(jb_run, expected):
    p, a = jb_run.planted, jb_run.anchor
    enrolled = {cid: (key, entered) for key, cid, entered in jb_run.query(
        "SELECT enrollment_key, customer_id::bigint, entered_at FROM lifecycle.enrollments WHERE journey = :journey")}
    for name, west in (("just_because_surprise", False), ("just_because_americas", True)):
        case = p[name]
        day = dict(case.details)["surprise_date"]
        assert day == surprise_date(case.customer_id, day.year)
        run_end = datetime.combine(day, datetime.min.time(), UTC) + (DAY if west else timedelta(0))
        assert a - 2 * DAY <= run_end <= a, (name, run_end)
        assert enrolled[case.customer_id] == (f"{case.customer_id}:{day.year}", run_end), name
        assert [m["X-Lifecycle-Step"] for m in jb_run.emails if m["To"] == case.email] == ["email"]
    for name in ("just_because_no_consent", "just_because_opted_out", "just_because_no_order",
                 "just_because_cancelled_only"):
        case = p[name]
        day = dict(case.details)["surprise_date"]
        assert a - 2 * DAY <= datetime.combine(day, datetime.min.time(), UTC) <= a, name  # it was their day
        assert case.customer_id not in enrolled, name
        assert not [m for m in jb_run.emails if m["To"] == case.email], name


def test_new_year_leap_day_and_time_zones(jb_run, expected):
    enrolled = {}
    for key, cid, entered in jb_run.query(
            "SELECT enrollment_key, customer_id::bigint, entered_at FROM lifecycle.enrollments WHERE journey = :journey"):
        enrolled.setdefault(cid, []).append((key, entered))
    for name, s in jb_run.people.items():
        assert enrolled[s.customer_id] == [(f"{s.customer_id}:{s.day.year}", s.selected_by)], name
        assert sum(m["To"] == f"jb.{name.replace('_', '.')}@example.com" for m in jb_run.emails) == 1, name
    # Day 366 of 2028 is 31 December; the same customers' day in 2027 (365 days) is 31 December too.
    assert {surprise_date(jb_run.people[n].customer_id, 2027) for n in ("leap_day_366_berlin",
                                                                         "leap_day_366_pago_pago")} == {date(2027, 12, 31)}
    # moves_west: selected again the next day (30 December in Los Angeles), same key, nothing new.
    moved = jb_run.people["moves_west"].customer_id
    selections = [end for end, rows in expected.selected.items() for _, cid, _ in rows if cid == moved]
    assert selections == [utc(2028, 12, 30), utc(2028, 12, 31)]
    assert jb_run.results[jb_run.ends.index(utc(2028, 12, 31))]["enrolled"]["refreshed"] >= 1


# ----------------------------------------------------------------------------- the day: spread and stability


def test_every_customer_gets_the_hashed_day_of_2028_and_days_spread_evenly(jb_run):
    """One staging over all of 2028 (every local 2028 date lies in its range): each eligible
    customer once with key year 2028, on the day the hash says; the days spread evenly."""
    shop = read_shop(jb_run.engine)
    rows = [r for r in stage_rows(jb_run, utc(2027, 12, 31), utc(2029, 1, 1)) if r[0].endswith(":2028")]
    actual = {cid: day for _, cid, day in rows}
    assert len(actual) == len(rows), "a customer was selected twice for 2028"
    eligible = shop.eligible(utc(2029, 1, 1))
    assert len(eligible) > SPREAD_CUSTOMERS + 300
    assert actual == {cid: surprise_date(cid, 2028) for cid in eligible}

    per_day = Counter(actual.values())
    days = 366
    mean = len(actual) / days
    chi2 = sum((per_day.get(date(2028, 1, 1) + timedelta(days=i), 0) - mean) ** 2 / mean for i in range(days))
    k = days - 1  # Wilson-Hilferty: the chi-square 99.9% point for k degrees of freedom
    limit = k * (1 - 2 / (9 * k) + 3.09 * (2 / (9 * k)) ** 0.5) ** 3
    assert chi2 < limit, (chi2, limit)
    assert per_day[date(2028, 2, 29)] and per_day[date(2028, 12, 31)], "leap days get customers too"
    per_month = Counter(d.month for d in actual.values())
    for month, n in per_month.items():
        month_days = (date(2028 + month // 12, month % 12 + 1, 1) - date(2028, month, 1)).days
        assert abs(n - mean * month_days) < 0.2 * mean * month_days, (month, n)
    quarters = Counter((d.month - 1) // 3 for d in actual.values())
    assert max(quarters.values()) / min(quarters.values()) < 1.15, quarters


def test_daily_runs_reach_each_customer_once_around_a_leap_day(jb_run):
    """14 consecutive daily stagings (21 Feb - 5 Mar 2028): exactly who the rules pick, each
    customer at most once, and every customer whose local day is inside the span."""
    shop = read_shop(jb_run.engine)
    ends = [utc(2028, 2, 21) + i * DAY for i in range(14)]
    seen: Counter = Counter()
    for end in ends:
        actual = stage_rows(jb_run, end - DAY, end)
        wanted = picks(shop, end - DAY, end)
        assert_same(actual, wanted, f"customers selected by the run ending {end:%Y-%m-%d} (key, customer, day)")
        seen.update(cid for _, cid, _ in actual)
    assert max(seen.values()) == 1
    inner = {cid for cid in shop.eligible(ends[-1])
             if date(2028, 2, 22) <= surprise_date(cid, 2028) <= date(2028, 3, 3)}
    assert inner <= set(seen) and len(inner) > 100
    leap_day = [cid for cid in seen if surprise_date(cid, 2028) == date(2028, 2, 29)]
    assert leap_day
