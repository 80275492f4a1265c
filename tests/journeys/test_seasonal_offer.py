"""seasonal_offer end to end on a fresh demo shop, plus customers planted here: daily runs
around 1 December 2026 (the Christmas offer) and around 18 November 2027 (7 days before US
Thanksgiving), and one run after each window closed; email to a real SMTP server.

Rules (the product's issue): offers are defined in the header by holiday and country. The
Christmas offer goes out on 1 December to everyone with email consent; the Thanksgiving
offer 7 days before US Thanksgiving to US customers only. "1 December" is the customer's
calendar day in their own time zone (unknown zone: UTC): the daily run whose as_of falls
on the send day locally enrolls them (key customer:offer:year, clock = that as_of).
Behaviour segments are conditions: price-sensitive customers (at least half of their
orders used a coupon) get the offer's value variant, the others the regular offer.
Reminder 3 days later to those who neither clicked an email (since the offer) nor
ordered; an order inside the offer window (after the offer, before the end of the holiday
on the customer's clock) exits as a conversion.

The expected outcome is derived here with zoneinfo and datetime (Thanksgiving = the fourth
Thursday of November, computed without the holidays package) from the shop tables, never
from the segment SQL or the engine.

To keep the module fast, three in four of the generated (random) customers withdraw their
email consent before the runs: fewer emails, and the consent rule is exercised on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
import sqlalchemy as sa

from lifecycle.conditions import materialise_condition
from lifecycle.config import SEGMENTS_DIR
from lifecycle.ids import typed_enrollments
from lifecycle.render import money
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec

from .conftest import (
    VALID_EMAIL,
    JourneyRun,
    Replay,
    assert_same,
    daily,
    journey_run,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

DAY = timedelta(days=1)
REMINDER_AFTER = 3 * DAY
LATENESS = 2 * DAY  # the daily schedule's default max_lateness
DONE_AFTER = REMINDER_AFTER + 22 * DAY  # complete_after: 22d after the last step
BESTSELLER_DAYS = 90
CREATED = datetime(2026, 1, 5, tzinfo=UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def thanksgiving(year: int) -> date:
    """US Thanksgiving: the fourth Thursday of November."""
    first = date(year, 11, 1)
    first_thursday = first + timedelta(days=(3 - first.weekday()) % 7)
    return first_thursday + 3 * timedelta(days=7)


# (offer, holiday date of a year, send date, countries or None for all)
def offers_of(year: int) -> list[tuple[str, date, date, set[str] | None]]:
    christmas = date(year, 12, 25)
    tg = thanksgiving(year)
    return [("christmas", christmas, date(year, 12, 1), None), ("thanksgiving", tg, tg - 7 * DAY, {"US"})]


CHRISTMAS_ENDS = [utc(2026, 11, 30) + i * DAY for i in range(6)] + [utc(2026, 12, 27)]
THANKSGIVING_ENDS = [utc(2027, 11, 17) + i * DAY for i in range(6)] + [utc(2027, 11, 27)]
ENDS = CHRISTMAS_ENDS + THANKSGIVING_ENDS
WITHDRAW_AFTER = utc(2026, 12, 1)  # the consent_withdrawn customer opts out after this run


# ----------------------------------------------------------------------------- planted here
# name: (id, country, timezone, email consent)
PLANTED = {
    "kiritimati": (910001, "KI", "Pacific/Kiritimati", "opted_in"),  # UTC+14: 1 Dec starts 30 Nov 10:00 UTC
    "pago_pago": (910002, "AS", "Pacific/Pago_Pago", "opted_in"),  # UTC-11: 1 Dec starts 1 Dec 11:00 UTC
    "unknown_zone": (910003, "GB", "Mars/Olympus_Mons", "opted_in"),  # not a zone: counts as UTC
    "clicker": (910004, "GB", "Europe/London", "opted_in"),  # clicks after the offer: no reminder
    "clicked_before": (910005, "GB", "Europe/London", "opted_in"),  # clicked only before the offer
    "opener": (910006, "GB", "Europe/London", "opted_in"),  # opened (not clicked): reminded
    "ordered_early": (910007, "GB", "Europe/London", "opted_in"),  # orders before the reminder: converts
    "ordered_late": (910008, "GB", "Europe/London", "opted_in"),  # orders on 20 Dec: converts after reminder
    "ordered_after_window": (910009, "GB", "Europe/London", "opted_in"),  # orders on 26 Dec: too late
    "cancelled_order": (910010, "GB", "Europe/London", "opted_in"),  # a cancelled order does not count
    "consent_withdrawn": (910011, "GB", "Europe/London", "opted_in"),  # opts out before the reminder
    "opted_out": (910012, "GB", "Europe/London", "opted_out"),  # never selected
    "created_late": (910013, "GB", "Europe/London", "opted_in"),  # account opened on 1 Dec 12:00 UTC
    "us_new_york": (910014, "US", "America/New_York", "opted_in"),  # Thanksgiving + Christmas
    "us_in_tokyo": (910015, "US", "Asia/Tokyo", "opted_in"),  # US customer a day ahead of the US
    "us_thanksgiving_buyer": (910016, "US", "America/Chicago", "opted_in"),  # orders on Thanksgiving Day
    "us_black_friday_buyer": (910017, "US", "America/Chicago", "opted_in"),  # orders the day after
}
ID = {name: row[0] for name, row in PLANTED.items()}
CREATED_LATE_AT = utc(2026, 12, 1, 12)
# (order id, customer, ordered_at, status, total)
ORDERS = [
    (990101, "ordered_early", utc(2026, 12, 3, 9), "placed", Decimal("64.00")),
    (990102, "ordered_late", utc(2026, 12, 20, 15), "placed", Decimal("120.50")),
    (990103, "ordered_after_window", utc(2026, 12, 26, 12), "placed", Decimal("33.00")),
    (990104, "cancelled_order", utc(2026, 12, 2, 12), "cancelled", Decimal("45.00")),
    # Thanksgiving 2027 is on 25 November; Chicago is UTC-6 then.
    (990105, "us_thanksgiving_buyer", utc(2027, 11, 25, 21), "placed", Decimal("88.00")),  # 15:00 on the day
    (990106, "us_black_friday_buyer", utc(2027, 11, 26, 16), "placed", Decimal("99.00")),  # 10:00 the day after
]
# (customer, event, occurred_at)
EVENTS = [
    ("clicker", "click", utc(2026, 12, 2, 10)),
    ("clicked_before", "click", utc(2026, 11, 28, 10)),
    ("opener", "open", utc(2026, 12, 2, 10)),
]


def plant(engine: sa.Engine, planted_ids: set[int]) -> None:
    with engine.begin() as conn:
        for name, (cid, country, tz, consent) in PLANTED.items():
            conn.execute(
                sa.text("INSERT INTO shop.customers (customer_id, email, first_name, last_name, country, timezone, "
                        "locale, created_at) VALUES (:id, :email, :first, 'Planted', :country, :tz, 'en_GB', "
                        ":created)"),
                {"id": cid, "email": f"{name.replace('_', '.')}@seasonal.example.com",
                 "first": name.split("_")[0].title(), "country": country, "tz": tz,
                 "created": CREATED_LATE_AT if name == "created_late" else CREATED},
            )
            conn.execute(
                sa.text("INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, "
                        "updated_at) VALUES (:id, 'email', :st, :t, 'test', :t)"),
                {"id": cid, "st": consent, "t": CREATED},
            )
        for order_id, name, at, status, total in ORDERS:
            conn.execute(
                sa.text("INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency) "
                        "VALUES (:o, :c, :t, :s, :total, 'EUR')"),
                {"o": order_id, "c": ID[name], "t": at, "s": status, "total": total},
            )
        for name, event, at in EVENTS:
            conn.execute(
                sa.text("INSERT INTO shop.engagement_events (customer_id, message_id, channel, event, occurred_at) "
                        "VALUES (:c, NULL, 'email', :e, :t)"),
                {"c": ID[name], "e": event, "t": at},
            )
        # Fewer emails to send: three in four generated customers opt out (planted ones keep theirs).
        conn.execute(
            sa.text("UPDATE shop.consents SET status = 'opted_out' WHERE channel = 'email' AND customer_id % 4 <> 0 "
                    "AND customer_id < 900000 AND NOT customer_id = ANY(:planted)"),
            {"planted": sorted(planted_ids)},
        )


# ----------------------------------------------------------------------------- running it


def email_consent(engine: sa.Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT customer_id, status FROM shop.consents WHERE channel = 'email'")).all())


@pytest.fixture(scope="module")
def consent_log() -> list[tuple[datetime, dict[int, str]]]:
    """(run end, email consent per customer at that run), filled while `offer_run` replays."""
    return []


@pytest.fixture(scope="module")
def offer_run(shop_db, consent_log) -> JourneyRun:
    engine, planted, _ = shop_db
    plant(engine, planted.customer_ids)

    def withdraw_consent(replay: Replay, start: datetime, end: datetime, result: dict) -> None:
        if end == WITHDRAW_AFTER:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE shop.consents SET status = 'opted_out', updated_at = :t "
                                     "WHERE customer_id = :c AND channel = 'email'"),
                             {"c": ID["consent_withdrawn"], "t": end + timedelta(hours=8)})

    return journey_run(shop_db, "seasonal_offer", daily(ENDS), after=withdraw_consent,
                       before=lambda replay, start, end: consent_log.append((end, email_consent(engine))))


# ----------------------------------------------------------------------------- expected, from the shop tables


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass
class Want:
    key: str
    customer_id: int
    offer: str
    holiday_date: date
    entered_at: datetime
    ends_at: datetime
    status: str = "active"
    exited_at: datetime | None = None
    conversion: tuple | None = None  # (order_id, revenue, converted_at)
    messages: dict[str, tuple] = field(default_factory=dict)  # step -> (status, reason, due, planned_for)


@dataclass
class Expected:
    enrollments: dict[str, Want]
    quarantined: list[tuple[str, datetime]]  # (key, run end)
    selected: list[int]  # rows selected per run


def expected_offers(run: JourneyRun, consent_log: list[tuple[datetime, dict[int, str]]]) -> Expected:
    customers = run.query("SELECT customer_id, email, country, timezone, created_at FROM shop.customers")
    orders = run.query("SELECT order_id, customer_id, ordered_at, status, total, coupon_code FROM shop.orders "
                       "ORDER BY ordered_at, order_id")
    clicks = run.query("SELECT customer_id, occurred_at FROM shop.engagement_events "
                       "WHERE channel = 'email' AND event = 'click'")
    suppressed = run.query("SELECT customer_id::bigint FROM lifecycle.suppressions")
    assert not suppressed, "no suppressions are expected in this run"
    placed = [o for o in orders if o.status != "cancelled"]

    def price_sensitive(cid: int, as_of: datetime) -> bool:
        mine = [o for o in placed if o.customer_id == cid and o.ordered_at < as_of]
        return bool(mine) and 2 * sum(1 for o in mine if o.coupon_code) >= len(mine)

    enrollments: dict[str, Want] = {}
    quarantined, selected = [], []
    for as_of, consent in consent_log:
        rows = []
        for c in customers:
            if c.created_at >= as_of or consent.get(c.customer_id) != "opted_in":
                continue
            tz = zone(c.timezone)
            today = as_of.astimezone(tz).date()
            for year in (as_of.year - 1, as_of.year, as_of.year + 1):
                for offer, holiday, send, countries in offers_of(year):
                    if send == today and (countries is None or c.country in countries):
                        end = datetime.combine(holiday + DAY, datetime.min.time(), tz)
                        rows.append((f"{c.customer_id}:{offer}:{year}", c, offer, holiday, end))
        selected.append(len(rows))
        new = []
        for key, c, offer, holiday, end in rows:
            if not VALID_EMAIL.match(c.email or ""):
                quarantined.append((key, as_of))
            elif key not in enrollments:
                enrollments[key] = Want(key, c.customer_id, offer, holiday, as_of, end.astimezone(UTC))
                new.append(enrollments[key])

        # Exits, before steps: the first order inside the window (after the offer, before its end).
        for e in enrollments.values():
            if e.status != "active" or e.entered_at > as_of:
                continue
            for o in placed:
                if o.customer_id == e.customer_id and e.entered_at < o.ordered_at < min(e.ends_at, as_of):
                    e.status, e.exited_at = "converted", o.ordered_at
                    e.conversion = (str(o.order_id), o.total, o.ordered_at)
                    break

        def send(cid: int, consent: dict[int, str] = consent) -> tuple[str, str | None]:
            """The send-time consent check, at this run."""
            status = consent.get(cid)
            if status is None:
                return "suppressed", "no consent"
            return ("sent", None) if status == "opted_in" else ("suppressed", "consent withdrawn")

        for e in new:  # the offer: one of two variants, the other recorded as skipped
            if price_sensitive(e.customer_id, as_of):
                e.messages["offer"] = ("skipped", "condition met: price_sensitive", as_of, as_of)
                e.messages["offer_value"] = (*send(e.customer_id), as_of, as_of)
            else:
                e.messages["offer"] = (*send(e.customer_id), as_of, as_of)
                e.messages["offer_value"] = ("skipped", "condition not met: price_sensitive", as_of, as_of)

        for e in enrollments.values():  # the reminder, 3 days on
            due = e.entered_at + REMINDER_AFTER
            if e.status != "active" or "reminder" in e.messages or due > as_of:
                continue
            offer_sent = [m[2] for m in (e.messages["offer"], e.messages["offer_value"]) if m[0] == "sent"]
            clicked = bool(offer_sent) and any(cid == e.customer_id and offer_sent[0] <= t < as_of
                                               for cid, t in clicks)
            ordered = any(o.customer_id == e.customer_id and e.entered_at < o.ordered_at < as_of for o in placed)
            if due + LATENESS < as_of:
                e.messages["reminder"] = ("expired", "late", due, as_of)
            elif clicked or ordered:
                e.messages["reminder"] = ("skipped", "condition met: seasonal_offer_clicked_or_ordered", due, as_of)
            else:
                e.messages["reminder"] = (*send(e.customer_id), due, as_of)

        for e in enrollments.values():
            if e.status == "active" and "reminder" in e.messages and e.entered_at + DONE_AFTER <= as_of:
                e.status = "completed"
    return Expected(enrollments, quarantined, selected)


@pytest.fixture(scope="module")
def expected(offer_run, consent_log) -> Expected:
    return expected_offers(offer_run, consent_log)


def enrollment_of(expected: Expected, name: str, offer: str = "christmas") -> Want:
    """The expected enrollment of a customer planted here in one offer (exactly one)."""
    (want,) = [e for e in expected.enrollments.values() if e.customer_id == ID[name] and e.offer == offer]
    return want


# ----------------------------------------------------------------------------- the checks


def test_runs_select_and_quarantine_what_the_rules_pick(offer_run, expected):
    # The test's own calendar, independent of the holidays package.
    assert thanksgiving(2026) == date(2026, 11, 26)
    assert thanksgiving(2027) - 7 * DAY == date(2027, 11, 18)
    assert [r["selected"] for r in offer_run.results] == expected.selected
    statuses = dict(offer_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = 'seasonal_offer' "
                                    "GROUP BY status"))
    assert statuses == {"ok": len(ENDS)}
    quarantine = offer_run.query(
        "SELECT q.enrollment_key, r.interval_end FROM lifecycle.quarantine q JOIN lifecycle.runs r "
        "USING (journey, run_id) WHERE q.journey = 'seasonal_offer'")
    assert_same(quarantine, expected.quarantined, "quarantine (key, run end)")
    # Christmas: the runs ending 1 and 2 December select everyone (east of UTC, then west);
    # Thanksgiving 2027: the runs ending 18 and 19 November (Tokyo, then the US itself).
    by_end = dict(zip(ENDS, expected.selected, strict=True))
    assert by_end[utc(2026, 12, 1)] > 20 and by_end[utc(2026, 12, 2)] > 5
    assert by_end[utc(2027, 11, 18)] == 1 and by_end[utc(2027, 11, 19)] > 5
    assert sum(expected.selected) == sum(by_end[d] for d in (utc(2026, 12, 1), utc(2026, 12, 2),
                                                             utc(2027, 11, 18), utc(2027, 11, 19)))


def test_enrollments_once_per_customer_offer_and_year(offer_run, expected):
    actual = offer_run.query(
        "SELECT enrollment_key, customer_id::bigint, entered_at, enrolled_at, status, exited_at, holdout, "
        "(context ->> 'ends_at')::timestamptz FROM lifecycle.enrollments WHERE journey = 'seasonal_offer'")
    wanted = [(e.key, e.customer_id, e.entered_at, e.entered_at, e.status, e.exited_at, False, e.ends_at)
              for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, exited, holdout, ends_at)")

    entered = {(cid, key.split(":")[1]): t for key, cid, t, *_ in actual}
    christmas = lambda name: entered.get((ID[name], "christmas"))  # noqa: E731
    # Kiritimati (UTC+14) is on 1 December at 00:00 UTC; Pago Pago (UTC-11) only by the next run.
    assert christmas("kiritimati") == christmas("unknown_zone") == christmas("clicker") == utc(2026, 12, 1)
    assert christmas("pago_pago") == christmas("us_new_york") == utc(2026, 12, 2)
    assert christmas("opted_out") is None and christmas("created_late") is None
    # Thanksgiving: US customers only; a US customer living in Tokyo reaches 18 November first.
    assert entered[(ID["us_in_tokyo"], "thanksgiving")] == utc(2027, 11, 18)
    assert entered[(ID["us_new_york"], "thanksgiving")] == utc(2027, 11, 19)
    assert not [k for k, cid, *_ in actual if k.split(":")[1] == "thanksgiving"
                and cid in (ID["kiritimati"], ID["clicker"])]
    keys = {k for k, *_ in actual}
    assert f"{ID['us_new_york']}:christmas:2026" in keys and f"{ID['us_new_york']}:thanksgiving:2027" in keys
    assert offer_run.results[ENDS.index(utc(2027, 11, 19))]["selected"] > 0


def test_demo_cases(offer_run, expected):
    planted = offer_run.planted
    offers = {}
    for e in expected.enrollments.values():
        offers.setdefault(e.customer_id, set()).add(e.offer)
    messages = {(e.customer_id, e.offer, step): m[0] for e in expected.enrollments.values()
                for step, m in e.messages.items()}
    us, non_us = planted["seasonal_offer_us"].customer_id, planted["seasonal_offer_non_us"].customer_id
    assert offers[us] == {"christmas", "thanksgiving"}
    assert offers[non_us] == {"christmas"}
    assert planted["seasonal_offer_no_consent"].customer_id not in offers
    ps = planted["seasonal_offer_price_sensitive"].customer_id
    assert messages[(ps, "christmas", "offer_value")] == "sent" and messages[(ps, "christmas", "offer")] == "skipped"
    assert messages[(us, "christmas", "offer")] == "sent"
    far = planted["seasonal_offer_far_timezone"].customer_id
    far_key = f"{far}:christmas:2026"
    assert expected.enrollments[far_key].entered_at == utc(2026, 12, 1)
    tz = offer_run.query("SELECT timezone FROM shop.customers WHERE customer_id = :c", c=far)[0][0]
    assert tz == "Asia/Tokyo"


def test_messages_and_reasons(offer_run, expected):
    actual = []
    for key, step, status, reason, due, planned_for in offer_run.query(
            "SELECT e.enrollment_key, m.step, m.status, m.reason, m.due_at, m.planned_for "
            "FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE m.journey = 'seasonal_offer'"):
        if status == "expired":
            reason = "late"
        actual.append((key, step, status, reason, due, planned_for))
    wanted = [(e.key, step, *m) for e in expected.enrollments.values() for step, m in e.messages.items()]
    for status in sorted({r[2] for r in actual} | {r[2] for r in wanted}):
        assert_same([r for r in actual if r[2] == status], [r for r in wanted if r[2] == status],
                    f"messages with status {status!r} (key, step, status, reason, due, planned run)")

    def reminder(name: str, offer: str = "christmas") -> tuple:
        return enrollment_of(expected, name, offer).messages.get("reminder", (None, None))[:2]

    assert reminder("clicker") == ("skipped", "condition met: seasonal_offer_clicked_or_ordered")
    assert reminder("clicked_before") == reminder("opener") == reminder("kiritimati") == ("sent", None)
    assert reminder("ordered_late") == ("sent", None)
    assert reminder("ordered_early") == (None, None)  # converted before it came due
    assert reminder("cancelled_order") == ("sent", None)
    assert reminder("consent_withdrawn") == ("suppressed", "consent withdrawn")
    statuses = {m[0] for e in expected.enrollments.values() for m in e.messages.values()}
    assert statuses == {"sent", "skipped", "suppressed"}


def test_an_order_inside_the_window_converts(offer_run, expected):
    actual = offer_run.query(
        "SELECT e.enrollment_key, c.condition, c.order_id, c.revenue, c.converted_at FROM lifecycle.conversions c "
        "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = 'seasonal_offer'")
    wanted = [(e.key, "seasonal_offer_ordered_in_window", *e.conversion)
              for e in expected.enrollments.values() if e.conversion]
    assert_same(actual, wanted, "conversions (key, condition, order, revenue, at)")
    converted = {key for key, *_ in actual}
    assert enrollment_of(expected, "ordered_early").key in converted
    assert enrollment_of(expected, "ordered_late").key in converted
    assert enrollment_of(expected, "us_thanksgiving_buyer", "thanksgiving").key in converted
    for name, offer in (("ordered_after_window", "christmas"), ("cancelled_order", "christmas"),
                        ("us_black_friday_buyer", "thanksgiving")):
        assert enrollment_of(expected, name, offer).key not in converted, name


def test_what_the_smtp_server_received(offer_run, expected):
    email_of = dict(offer_run.query("SELECT customer_id, email FROM shop.customers"))
    sent = [(email_of[e.customer_id], step) for e in expected.enrollments.values()
            for step, m in e.messages.items() if m[0] == "sent"]
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in offer_run.emails], sent, "emails (To, X-Lifecycle-Step)")
    assert len(offer_run.emails) > 60
    holiday_of = {}
    for e in expected.enrollments.values():
        holiday_of.setdefault(email_of[e.customer_id], []).append(e.holiday_date)
    for m in offer_run.emails:
        text, html = text_and_html(m)
        assert m["X-Lifecycle-Journey"] == "seasonal_offer" and m["List-Unsubscribe"]
        days = {f"{d:%A}, {d.day} {d:%B}" for d in holiday_of[m["To"]]}
        assert any(d in text and d in html for d in days), (m["Subject"], days)
    # The US customer in Tokyo: Christmas 2026 (offer, reminder), then Thanksgiving 2027 (offer, reminder).
    tokyo = [m for m in offer_run.emails if m["To"] == email_of[ID["us_in_tokyo"]]]
    assert [m["X-Lifecycle-Step"] for m in tokyo] == ["offer", "reminder", "offer", "reminder"]
    tg = tokyo[2:]
    text, _ = text_and_html(tg[0])
    assert "Thanksgiving Day is on Thursday, 25 November" in text and "Thanksgiving" in tg[0]["Subject"]


def test_offer_shows_the_best_sellers_of_the_last_90_days(offer_run, expected):
    """The context's picks, against the best sellers counted here (units, ties by product id), as
    product references (ids only: no card, no price); the emails show each pick's name, price and
    image, filled in from the shop when they are sent."""
    as_of = utc(2026, 12, 1)
    units: dict[int, int] = {}
    for product_id, quantity in offer_run.query(
            "SELECT oi.product_id, oi.quantity FROM shop.order_items oi JOIN shop.orders o USING (order_id) "
            "WHERE o.status <> 'cancelled' AND o.ordered_at >= :a AND o.ordered_at < :b",
            a=as_of - BESTSELLER_DAYS * DAY, b=as_of):
        units[product_id] = units.get(product_id, 0) + quantity
    prices = dict(offer_run.query("SELECT product_id, price FROM shop.products"))
    ranked = sorted(prices, key=lambda p: (-units.get(p, 0), p))
    ordered_prices = sorted(prices.values())
    n = len(ordered_prices)
    median = (ordered_prices[(n - 1) // 2] + ordered_prices[n // 2]) / 2
    value = [p for p in ranked if prices[p] <= median]
    contexts = offer_run.query("SELECT c.email, e.context FROM lifecycle.enrollments e "
                               "JOIN shop.customers c ON c.customer_id::text = e.customer_id "
                               "WHERE e.journey = 'seasonal_offer' AND e.entered_at = :t", t=as_of)
    assert contexts
    for _, context in contexts:
        assert [p["product_id"] for p in context["bestsellers"]] == ranked[:3]
        assert [p["product_id"] for p in context["value_picks"]] == value[:3]
        assert all(set(p) == {"product_id"} for p in context["bestsellers"] + context["value_picks"]), context
    cards = {p: (name, price, image_url) for p, name, price, image_url in offer_run.query(
        "SELECT product_id, name, price, image_url FROM shop.products")}
    shows = {"offer": ranked[:3], "offer_value": value[:3]}
    addresses = {email for email, _ in contexts}
    checked = set()
    for m in offer_run.emails:
        text, body = text_and_html(m)
        if m["To"] not in addresses or m["X-Lifecycle-Step"] not in shows or "Christmas Day is on" not in text:
            continue
        positions = []
        for product_id in shows[m["X-Lifecycle-Step"]]:
            name, price, image_url = cards[product_id]
            assert f"- {name}: {money(price)}" in text and f'src="{image_url}"' in body
            positions.append(text.index(f"- {name}: "))
        assert positions == sorted(positions), "picks out of order"
        checked.add(m["X-Lifecycle-Step"])
    assert checked == set(shows)


@pytest.mark.parametrize("condition", ["price_sensitive", "inactive_60d"])
def test_behaviour_conditions_pick_the_right_customers(offer_run, expected, condition):
    """The segment conditions over every Christmas enrollment, at the run of 2 December."""
    as_of = utc(2026, 12, 2)
    spec = load_spec(SEGMENTS_DIR / "seasonal_offer.sql")
    run = RunContext("seasonal_offer", "check", "live", as_of - DAY, as_of)
    scope = ("FROM lifecycle.enrollments e WHERE e.journey = 'seasonal_offer' AND e.mode = 'live' "
             "AND e.enrollment_key LIKE '%:christmas:2026'")
    with offer_run.engine.begin() as conn:  # as the engine does: the CTE's customer_id in the shop's type
        materialise_condition(conn, condition, typed_enrollments(conn, scope), run.binds(spec), "_check_hits")
        hits = {cid for (cid,) in conn.execute(sa.text(
            "SELECT e.customer_id::bigint FROM _check_hits h JOIN lifecycle.enrollments e USING (enrollment_id)"))}
    placed = [(cid, t, code) for cid, t, status, code in offer_run.query(
        "SELECT customer_id, ordered_at, status, coupon_code FROM shop.orders") if status != "cancelled"]
    members = {e.customer_id for e in expected.enrollments.values() if e.offer == "christmas"}
    if condition == "price_sensitive":
        def holds(cid):
            mine = [code for c, t, code in placed if c == cid and t < as_of]
            return bool(mine) and 2 * sum(1 for code in mine if code) >= len(mine)
    else:
        def holds(cid):
            return not any(c == cid and as_of - 60 * DAY <= t < as_of for c, t, _ in placed)
    wanted = {cid for cid in members if holds(cid)}
    assert hits == wanted
    assert 0 < len(wanted) < len(members)
    planted = offer_run.planted
    if condition == "inactive_60d":
        assert planted["seasonal_offer_inactive"].customer_id in hits
        assert planted["seasonal_offer_us"].customer_id not in hits
    else:
        assert planted["seasonal_offer_price_sensitive"].customer_id in hits
