"""birthday end to end on a fresh demo shop with planted customers: daily runs over
[2027-02-17, 2027-03-10) (late February of a non-leap year, then long enough for the
14-day follow-ups), email to a real SMTP server and SMS to the Twilio-shaped server, every
run "at noon UTC". The expected outcome is derived here, in Python with zoneinfo, from
the shop tables, for every customer whose birthday falls in the window (the random ones
too), never from the segment SQL.

Rules (the product's issue): the run whose as_of, on the customer's local calendar, is 7
days before this year's celebration date (29 February -> 28 February in non-leap years)
enrolls them once for that year (key customer:year, clock = that run's as_of). Email with
a personal 20% code valid 30 days and an SMS with the same code at once; 14 days later a
follow-up if the first email was opened or clicked; redeeming the code converts (and so
no follow-up). Opens and clicks come from the provider's events (shop.engagement_events) and from
our own tracking: the first email's open pixel and links, requested through the web service's app
by a mail client, Apple MPP's prefetch and a link scanner (only the mail client's count).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
import sqlalchemy as sa

from lifecycle.channels.sms import normalise_number, send_window

from .conftest import (
    VALID_EMAIL,
    JourneyRun,
    Replay,
    assert_same,
    daily,
    journey_run,
    text_and_html,
)

DAY = timedelta(days=1)
FIRST_END, LAST_END = datetime(2027, 2, 18, tzinfo=UTC), datetime(2027, 3, 10, tzinfo=UTC)
ENDS = [FIRST_END + i * DAY for i in range((LAST_END - FIRST_END).days + 1)]
SMS_LATENESS = timedelta(days=2)  # the daily schedule's default max_lateness
DAYS_AHEAD = 7
FOLLOW_UP_AFTER = 14 * DAY
COUPON_DAYS = 30
CREATED = datetime(2026, 1, 5, tzinfo=UTC)
REDEEM_ORDER_ID = 990_000_001
REDEEMED_AT = datetime(2027, 2, 22, 10, tzinfo=UTC)


def noon(as_of: datetime) -> datetime:
    """The wall clock of the run ending at `as_of`: that day at 12:00 UTC."""
    return as_of + timedelta(hours=12)


# ----------------------------------------------------------------------------- planted customers
# (id, name, birthday, timezone, country, phone, {channel: consent status})
PLANTED = {
    "leap_day": (900001, date(1992, 2, 29), "Europe/London", "GB", None, {"email": "opted_in"}),
    "kiritimati": (900002, date(1990, 2, 27), "Pacific/Kiritimati", "KI", None, {"email": "opted_in"}),
    "pago_pago": (900003, date(1985, 2, 27), "Pacific/Pago_Pago", "AS", None, {"email": "opted_in"}),
    "utc_twin": (900009, date(1980, 2, 27), "UTC", "GB", None, {"email": "opted_in"}),
    "sms_ok": (900004, date(1991, 2, 26), "Europe/Berlin", "DE", "+49 151 23456789",
               {"email": "opted_in", "sms": "opted_in"}),
    "sms_no_phone": (900005, date(1993, 2, 26), "Europe/Berlin", "DE", None,
                     {"email": "opted_in", "sms": "opted_in"}),
    "sms_opted_out": (900010, date(1994, 2, 26), "Europe/Berlin", "DE", "+49 151 23456780",
                      {"email": "opted_in", "sms": "opted_out"}),
    "redeemer": (900006, date(1988, 2, 25), "Europe/London", "GB", None, {"email": "opted_in"}),
    "opener": (900007, date(1979, 2, 25), "Europe/London", "GB", None, {"email": "opted_in"}),
    "non_opener": (900008, date(1982, 2, 25), "Europe/London", "GB", None, {"email": "opted_in"}),
    "feb_28": (900011, date(1990, 2, 28), "Europe/London", "GB", None, {"email": "opted_in"}),
    "mar_1": (900012, date(1990, 3, 1), "Europe/London", "GB", None, {"email": "opted_in"}),
    "pixel_opener": (900013, date(1979, 2, 25), "Europe/London", "GB", None, {"email": "opted_in"}),
    "mpp_prefetched": (900014, date(1982, 2, 25), "Europe/London", "GB", None, {"email": "opted_in"}),
    "link_scanned": (900015, date(1982, 2, 25), "Europe/London", "GB", None, {"email": "opted_in"}),
}
ID = {name: row[0] for name, row in PLANTED.items()}
OPENED_AT = datetime(2027, 2, 19, 8, tzinfo=UTC)  # the opener opens the first email (sent with the 02-18 run)
# Who requests the first email's tracked pixel or link, through the web service (lifecycle.tracking):
# customer -> (what, User-Agent). Only the mail client's open counts (agent class human).
TRACKED = {
    "pixel_opener": ("pixel", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
                              "(KHTML, like Gecko) Mobile/15E148"),
    "mpp_prefetched": ("pixel", "Mozilla/5.0"),  # Apple Mail Privacy Protection's prefetch
    "link_scanned": ("link", "Mozilla/5.0 (compatible; Microsoft Defender SafeLinks)"),
}


def plant(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for name, (cid, birthday, tz, country, phone, consents) in PLANTED.items():
            conn.execute(
                sa.text("INSERT INTO shop.customers (customer_id, email, phone, first_name, last_name, country, "
                        "timezone, locale, birthday, created_at) VALUES (:id, :email, :phone, :first, 'Planted', "
                        ":country, :tz, 'en_GB', :birthday, :created)"),
                {"id": cid, "email": f"{name.replace('_', '.')}@birthday.example.com", "phone": phone,
                 "first": name.split("_")[0].title(), "country": country, "tz": tz, "birthday": birthday,
                 "created": CREATED},
            )
            for channel, status in consents.items():
                conn.execute(
                    sa.text("INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, "
                            "updated_at) VALUES (:id, :ch, :st, :t, 'test', :t)"),
                    {"id": cid, "ch": channel, "st": status, "t": CREATED},
                )
        conn.execute(
            sa.text("INSERT INTO shop.engagement_events (customer_id, message_id, channel, event, occurred_at) "
                    "VALUES (:id, NULL, 'email', 'open', :t)"),
            {"id": ID["opener"], "t": OPENED_AT},
        )


# ----------------------------------------------------------------------------- running it


def address(name: str) -> str:
    return f"{name.replace('_', '.')}@birthday.example.com"


def request_tracked(replay: Replay, start: datetime, end: datetime, result: dict) -> None:
    """After the run that sent the first emails (ending 2027-02-18): the TRACKED customers' mail
    clients, prefetchers and scanners request its pixel or first link from the web service's app
    (the shop's web front routes /o/ and /c/ there), at OPENED_AT."""
    if end != datetime(2027, 2, 18, tzinfo=UTC):
        return
    from starlette.testclient import TestClient

    from lifecycle.web_service import create_app

    with TestClient(create_app(replay.engine, clock=lambda: OPENED_AT), base_url="https://shop.example.com") as web:
        for name, (what, agent) in TRACKED.items():
            (mail,) = [m.message() for m in replay.smtp.messages
                       if address(name) in m.rcpt_tos and m.message()["X-Lifecycle-Step"] == "email"]
            html = mail.get_body(("html",)).get_content()  # as sent: tracked links and the pixel
            pixel = re.search(r'src="(https://shop\.example\.com/o/[^"]+)"', html)
            link = re.search(r'href="(https://shop\.example\.com/c/[^"]+)"', html)
            url = (pixel if what == "pixel" else link).group(1)
            response = web.get(url, headers={"User-Agent": agent}, follow_redirects=False)
            assert response.status_code == (200 if what == "pixel" else 302), (name, response.status_code)


def after_each_run(replay: Replay, start: datetime, end: datetime, result: dict) -> None:
    redeem(replay, start, end, result)
    request_tracked(replay, start, end, result)


def redeem(replay: Replay, start: datetime, end: datetime, result: dict) -> None:
    """The redeemer got their code in the run ending 2027-02-18; they use it a few days later."""
    if end != datetime(2027, 2, 18, tzinfo=UTC):
        return
    with replay.engine.begin() as conn:
        (code,) = conn.execute(
            sa.text("SELECT code FROM lifecycle.coupons WHERE journey = 'birthday' AND customer_id = CAST(:c AS text)"),
            {"c": ID["redeemer"]}).one()
        conn.execute(
            sa.text("INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, "
                    "coupon_code) VALUES (:o, :c, :t, 'placed', 80.00, 'EUR', :code)"),
            {"o": REDEEM_ORDER_ID, "c": ID["redeemer"], "t": REDEEMED_AT, "code": code},
        )


@pytest.fixture(scope="module")
def birthday_run(shop_db) -> JourneyRun:
    plant(shop_db[0])
    return journey_run(shop_db, "birthday", daily(ENDS), sms=True, clock=noon, after=after_each_run)


# ----------------------------------------------------------------------------- expected, from the shop tables


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def celebration(birthday: date, year: int) -> date:
    """This year's birthday; 29 February is celebrated on 28 February in non-leap years."""
    try:
        return birthday.replace(year=year)
    except ValueError:  # 29 February, non-leap year
        return date(year, 2, 28)


@dataclass
class Want:
    key: str
    customer_id: int
    entered_at: datetime
    status: str = "active"
    conversion: tuple | None = None  # (order_id, revenue, converted_at)
    messages: dict[str, tuple] = field(default_factory=dict)  # step -> (channel, status, reason, due, planned_for)


@dataclass
class Expected:
    enrollments: dict[str, Want]
    quarantined: list[tuple[str, datetime]]  # (key, run end)
    selected: list[tuple[datetime, int]]  # (run end, rows selected)
    sms_waiting_until: dict[str, datetime]  # key -> not_before of an SMS held for the recipient's daytime


def expected_birthday(engine: sa.Engine, codes: dict[int, set[str]]) -> Expected:
    """Play the journey's rules run by run over the shop tables (codes: the coupons the engine
    issued, per customer; only used to recognise a redeeming order)."""
    with engine.connect() as conn:
        customers = conn.execute(sa.text(
            "SELECT customer_id, email, phone, country, timezone, birthday, created_at FROM shop.customers "
            "WHERE birthday IS NOT NULL")).all()
        consent = {(c, ch): st for c, ch, st in conn.execute(sa.text(
            "SELECT customer_id, channel, status FROM shop.consents"))}
        suppressed = {(c, ch) for c, ch in conn.execute(sa.text(
            "SELECT customer_id::bigint, channel FROM lifecycle.suppressions"))}
        opens = conn.execute(sa.text(
            "SELECT customer_id, occurred_at FROM shop.engagement_events "
            "WHERE channel = 'email' AND event IN ('open', 'click')")).all()
        tracked = conn.execute(sa.text(  # every request our tracking recorded, with who made it
            "SELECT e.enrollment_key, m.step, en.kind, en.agent_class, en.occurred_at FROM lifecycle.engagement en "
            "JOIN lifecycle.messages m USING (message_id) JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE m.journey = 'birthday'")).all()
        orders = conn.execute(sa.text(
            "SELECT order_id, customer_id, ordered_at, total, coupon_code FROM shop.orders "
            "WHERE coupon_code IS NOT NULL AND status <> 'cancelled' ORDER BY ordered_at, order_id")).all()
    assert not suppressed, "a fresh shop has no suppressions"

    def blocked(cid: int, channel: str) -> tuple[str, str] | None:
        status = consent.get((cid, channel))
        if status is None:
            return "suppressed", "no consent"
        if status != "opted_in":
            return "suppressed", "consent withdrawn"
        return None

    people = {c.customer_id: c for c in customers}
    enrollments: dict[str, Want] = {}
    quarantined, selected, waiting = [], [], {}
    for as_of in ENDS:
        rows = []
        for c in customers:
            if c.created_at >= as_of:
                continue
            target = as_of.astimezone(zone(c.timezone)).date() + timedelta(days=DAYS_AHEAD)
            if celebration(c.birthday, target.year) == target:
                rows.append((f"{c.customer_id}:{target.year}", c))
        selected.append((as_of, len(rows)))
        new = []
        for key, c in rows:
            if not VALID_EMAIL.match(c.email or ""):
                quarantined.append((key, as_of))
            elif key not in enrollments:
                enrollments[key] = Want(key, c.customer_id, as_of)
                new.append(enrollments[key])

        # Exits before steps: an order with the enrollment's code, while valid, before as_of.
        for e in enrollments.values():
            if e.status != "active":
                continue
            for o in orders:
                if (o.coupon_code in codes.get(e.customer_id, ()) and e.entered_at <= o.ordered_at < as_of
                        and o.ordered_at < e.entered_at + COUPON_DAYS * DAY):
                    e.status, e.conversion = "converted", (str(o.order_id), o.total, o.ordered_at)
                    break

        # SMS that waited for daytime: the run's clock (noon UTC) decides whether the wait is over;
        # past due + max_lateness it is recorded expired instead (send-time lateness).
        clock = noon(as_of)
        for key, opens_at in list(waiting.items()):
            if opens_at > clock:
                continue
            e = enrollments[key]
            _, _, _, due, planned_for = e.messages["sms"]
            expires = due + SMS_LATENESS
            if e.status != "active":
                e.messages["sms"] = ("sms", "skipped", "enrollment converted (redeemed_coupon)", due, planned_for)
                del waiting[key]
            elif expires < clock:
                reason = f"late: not sent by {expires:%Y-%m-%d %H:%M} UTC (due {due:%Y-%m-%d %H:%M})"
                e.messages["sms"] = ("sms", "expired", reason, due, planned_for)
                del waiting[key]
            else:
                open_now, next_open = send_window(clock, people[e.customer_id].timezone)
                if open_now:
                    e.messages["sms"] = ("sms", "sent", None, due, planned_for)
                    del waiting[key]
                else:
                    waiting[key] = next_open

        for e in new:  # email and SMS, due now
            c = people[e.customer_id]
            status, reason = blocked(e.customer_id, "email") or ("sent", None)
            e.messages["email"] = ("email", status, reason, as_of, as_of)
            number, problem = normalise_number(c.phone, c.country)
            if blocked(e.customer_id, "sms"):
                status, reason = blocked(e.customer_id, "sms")
            elif not (c.phone or "").strip():
                status, reason = "skipped", "missing phone"
            elif problem:
                status, reason = "skipped", problem
            else:
                open_now, opens_at = send_window(noon(as_of), c.timezone)
                status, reason = ("sent", None) if open_now else ("planned", "SMS hours")
                if not open_now:
                    waiting[e.key] = opens_at
            e.messages["sms"] = ("sms", status, reason, as_of, as_of)

        for e in enrollments.values():  # the follow-up, 14 days on
            due = e.entered_at + FOLLOW_UP_AFTER
            if e.status != "active" or due != as_of:
                continue
            opened = e.messages["email"][1] == "sent" and (
                any(cid == e.customer_id and e.entered_at <= t < as_of for cid, t in opens)
                or any(key == e.key and step == "email" and kind in ("open", "click") and agent == "human" and t < as_of
                       for key, step, kind, agent, t in tracked))
            if not opened:
                status, reason = "skipped", "condition not met: opened_or_clicked_first_email"
            else:
                status, reason = blocked(e.customer_id, "email") or ("sent", None)
            e.messages["follow_up"] = ("email", status, reason, due, as_of)
    return Expected(enrollments, quarantined, selected, waiting)


@pytest.fixture(scope="module")
def codes(birthday_run) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for cid, code in birthday_run.query("SELECT customer_id::bigint, code FROM lifecycle.coupons WHERE journey = 'birthday'"):
        out.setdefault(cid, set()).add(code)
    return out


@pytest.fixture(scope="module")
def expected(birthday_run, codes) -> Expected:
    return expected_birthday(birthday_run.engine, codes)


# ----------------------------------------------------------------------------- the checks


def test_runs_select_and_quarantine_what_the_rules_pick(birthday_run, expected):
    assert [r["selected"] for r in birthday_run.results] == [n for _, n in expected.selected]
    quarantine = birthday_run.query(
        "SELECT q.enrollment_key, r.interval_end FROM lifecycle.quarantine q JOIN lifecycle.runs r "
        "USING (journey, run_id) WHERE q.journey = 'birthday'")
    assert_same(quarantine, expected.quarantined, "quarantine (key, run end)")
    statuses = dict(birthday_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = 'birthday' "
                                       "GROUP BY status"))
    assert statuses == {"ok": len(ENDS)}
    assert len(expected.enrollments) > len(PLANTED)  # random customers' birthdays are in the window too


def test_enrollments_once_per_customer_and_year_entered_at_the_runs_as_of(birthday_run, expected):
    actual = birthday_run.query(
        "SELECT enrollment_key, customer_id::bigint, entered_at, enrolled_at, status, holdout FROM lifecycle.enrollments "
        "WHERE journey = 'birthday'")
    wanted = [(e.key, e.customer_id, e.entered_at, e.entered_at, e.status, False) for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, holdout)")

    entered = {cid: t for _, cid, t, *_ in actual}
    at = lambda y, m, d: datetime(y, m, d, tzinfo=UTC)  # noqa: E731
    # 29 February 1992 -> 28 February 2027, found 7 days ahead (as is a 28 February birthday).
    assert entered[ID["leap_day"]] == entered[ID["feb_28"]] == at(2027, 2, 21)
    assert entered[ID["mar_1"]] == at(2027, 2, 22)
    # At 00:00 UTC it is 14:00 the same day in Kiritimati (UTC+14) and 13:00 the day before in
    # Pago Pago (UTC-11): same birthday, Pago Pago's week-ahead day comes one run later.
    assert entered[ID["kiritimati"]] == entered[ID["utc_twin"]] == at(2027, 2, 20)
    assert entered[ID["pago_pago"]] == at(2027, 2, 21)
    keys = {cid: k for k, cid, *_ in actual}
    assert keys[ID["leap_day"]] == f"{ID['leap_day']}:2027"


def test_messages_and_reasons(birthday_run, expected):
    actual = []
    for key, step, channel, status, reason, due, planned_for in birthday_run.query(
            "SELECT e.enrollment_key, m.step, m.channel, m.status, m.reason, m.due_at, m.planned_for "
            "FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE m.journey = 'birthday'"):
        if status == "planned" and reason and "SMS hours" in reason:
            reason = "SMS hours"
        actual.append((key, step, channel, status, reason, due, planned_for))
    wanted = [(e.key, step, *m) for e in expected.enrollments.values() for step, m in e.messages.items()]
    for status in sorted({r[3] for r in actual} | {r[3] for r in wanted}):
        assert_same([r for r in actual if r[3] == status], [r for r in wanted if r[3] == status],
                    f"messages with status {status!r} (key, step, channel, status, reason, due, planned run)")
    waiting = dict(birthday_run.query(
        "SELECT e.enrollment_key, m.not_before FROM lifecycle.messages m JOIN lifecycle.enrollments e "
        "USING (enrollment_id) WHERE m.journey = 'birthday' AND m.status = 'planned'"))
    assert waiting == expected.sms_waiting_until

    by_customer = {(e.customer_id, step): m[1:3] for e in expected.enrollments.values()
                   for step, m in e.messages.items()}
    assert by_customer[(ID["sms_ok"], "sms")] == ("sent", None)
    assert by_customer[(ID["sms_no_phone"], "sms")] == ("skipped", "missing phone")
    assert by_customer[(ID["sms_opted_out"], "sms")] == ("suppressed", "consent withdrawn")
    assert by_customer[(ID["leap_day"], "sms")] == ("suppressed", "no consent")
    assert by_customer[(ID["opener"], "follow_up")] == ("sent", None)
    assert by_customer[(ID["pixel_opener"], "follow_up")] == ("sent", None)  # opened, seen by our pixel
    for name in ("mpp_prefetched", "link_scanned"):  # no person opened it
        assert by_customer[(ID[name], "follow_up")] == ("skipped", "condition not met: opened_or_clicked_first_email")
    classes = birthday_run.query("SELECT m.customer_id::bigint, en.kind, en.agent_class, en.occurred_at "
                                 "FROM lifecycle.engagement en JOIN lifecycle.messages m USING (message_id)")
    assert sorted(classes) == sorted([(ID["pixel_opener"], "open", "human", OPENED_AT),
                                      (ID["mpp_prefetched"], "open", "privacy_proxy", OPENED_AT),
                                      (ID["link_scanned"], "click", "scanner", OPENED_AT)])
    assert by_customer[(ID["non_opener"], "follow_up")] == ("skipped", "condition not met: opened_or_clicked_first_email")
    assert (ID["redeemer"], "follow_up") not in by_customer  # converted before it came due


def test_coupons_one_per_enrollment_valid_30_days(birthday_run, expected):
    rows = birthday_run.query(
        "SELECT e.enrollment_key, c.code, c.step, c.percent_off, c.valid_from, c.valid_until "
        "FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = 'birthday'")
    assert sorted(r[0] for r in rows) == sorted(expected.enrollments)
    for key, code, step, pct, valid_from, valid_until in rows:
        e = expected.enrollments[key]
        assert code.startswith("BD") and len(code) == 18 and step == "email" and pct == Decimal("20")
        assert (valid_from, valid_until) == (e.entered_at, e.entered_at + COUPON_DAYS * DAY)
    assert len({r[1] for r in rows}) == len(rows)


def test_redeeming_the_code_converts(birthday_run, expected):
    conversions = birthday_run.query(
        "SELECT e.enrollment_key, c.condition, c.order_id, c.revenue, c.converted_at FROM lifecycle.conversions c "
        "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE c.journey = 'birthday'")
    wanted = [(e.key, "redeemed_coupon", *e.conversion) for e in expected.enrollments.values() if e.conversion]
    assert_same(conversions, wanted, "conversions (key, condition, order, revenue, at)")
    assert [r[0] for r in conversions] == [f"{ID['redeemer']}:2027"]
    assert conversions[0][2:] == (str(REDEEM_ORDER_ID), Decimal("80.00"), REDEEMED_AT)


def test_what_the_servers_received(birthday_run, expected, codes):
    email_of = dict(birthday_run.query("SELECT customer_id, email FROM shop.customers"))
    phone_of = {cid: normalise_number(p, country)[0]
                for cid, p, country in birthday_run.query("SELECT customer_id, phone, country FROM shop.customers")}
    sent = [(e.customer_id, step, m[0]) for e in expected.enrollments.values()
            for step, m in e.messages.items() if m[1] == "sent"]
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in birthday_run.emails],
                [(email_of[c], step) for c, step, ch in sent if ch == "email"], "emails (To, X-Lifecycle-Step)")
    assert_same([m["to"] for m in birthday_run.sms], [phone_of[c] for c, _, ch in sent if ch == "sms"],
                "SMS (To)")
    assert phone_of[ID["sms_ok"]] in {m["to"] for m in birthday_run.sms}

    customer_of_email = {v: k for k, v in email_of.items()}
    customer_of_phone = {v: k for k, v in phone_of.items() if v}
    for m in birthday_run.emails:
        (code,) = codes[customer_of_email[m["To"]]]
        text, html = text_and_html(m)
        assert code in text and code in html and "20% off" in text and "20% off" in m["Subject"] + text
        assert m["X-Lifecycle-Journey"] == "birthday" and m["List-Unsubscribe"]
    for m in birthday_run.sms:
        (code,) = codes[customer_of_phone[m["to"]]]
        assert code in m["body"] and "20% off" in m["body"] and m["body"].endswith("Reply STOP to opt out.")
    (planted_sms,) = [m for m in birthday_run.sms if m["to"] == phone_of[ID["sms_ok"]]]
    assert planted_sms["num_segments"] == "1" and len(planted_sms["body"]) <= 160

    leap = [m for m in birthday_run.emails if m["To"] == email_of[ID["leap_day"]]]
    assert [m["X-Lifecycle-Step"] for m in leap] == ["email"]
    assert "28 February" in text_and_html(leap[0])[0]


# ----------------------------------------------------------------------------- birthday_ask
# Customers with an order and no birthday on file are asked for it 3 days after their first
# order, then on that day's anniversaries: runs over the two weeks before the shop's anchor
# and the same two weeks a year later.
ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
ASK_AFTER = 3 * DAY
ASK_ENDS = [ANCHOR - i * DAY for i in range(14, -1, -1)] + [ANCHOR + (351 + i) * DAY for i in range(15)]
FIRST_ORDER = ANCHOR - 4 * DAY + timedelta(hours=6)  # ask due A-1d+6h: the run ending A, then A+365d
ASKED = {  # id: (birthday, first order status or None, email consent)
    900101: (None, "delivered", "opted_in"),
    900102: (date(1990, 5, 5), "delivered", "opted_in"),  # birthday on file: never asked
    900103: (None, None, "opted_in"),  # no order: never asked
    900104: (None, "cancelled", "opted_in"),  # only a cancelled order: never asked
    900105: (None, "delivered", None),  # asked, but no email consent: recorded, not sent
}


def add_years(t: datetime, years: int) -> datetime:
    try:
        return t.replace(year=t.year + years)
    except ValueError:  # 29 February -> 28 February
        return t.replace(year=t.year + years, day=28)


@pytest.fixture(scope="module")
def ask_run(shop_db) -> JourneyRun:
    engine = shop_db[0]
    with engine.begin() as conn:
        for cid, (birthday, order_status, consent) in ASKED.items():
            conn.execute(
                sa.text("INSERT INTO shop.customers (customer_id, email, first_name, last_name, country, timezone, "
                        "locale, birthday, created_at) VALUES (:id, :email, 'Ask', 'Planted', 'GB', 'Europe/London', "
                        "'en_GB', :b, :created)"),
                {"id": cid, "email": f"ask{cid}@birthday.example.com", "b": birthday, "created": CREATED},
            )
            if consent:
                conn.execute(
                    sa.text("INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, "
                            "updated_at) VALUES (:id, 'email', :st, :t, 'test', :t)"),
                    {"id": cid, "st": consent, "t": CREATED},
                )
            if order_status:
                conn.execute(
                    sa.text("INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency) "
                            "VALUES (:o, :c, :t, :s, 30.00, 'EUR')"),
                    {"o": 990_000_000 + cid, "c": cid, "t": FIRST_ORDER, "s": order_status},
                )
    return journey_run(shop_db, "birthday_ask", daily(ASK_ENDS))


def expected_asks(engine: sa.Engine) -> tuple[list[int], dict[str, tuple]]:
    """Selected rows per run, and key -> (customer, entered_at, message status, reason)."""
    with engine.connect() as conn:
        customers = {c: (email, birthday) for c, email, birthday in conn.execute(sa.text(
            "SELECT customer_id, email, birthday FROM shop.customers")).all()}
        consent = dict(conn.execute(sa.text("SELECT customer_id, status FROM shop.consents WHERE channel = 'email'")).all())
        orders = conn.execute(sa.text("SELECT customer_id, ordered_at FROM shop.orders WHERE status <> 'cancelled'")).all()
        first: dict[int, list[datetime]] = {}
        for cid, t in orders:
            first.setdefault(cid, []).append(t)
    selected, asks = [], {}
    for as_of in ASK_ENDS:
        n = 0
        for cid, times in first.items():
            email, birthday = customers[cid]
            before = [t for t in times if t < as_of]
            if birthday is not None or not before:
                continue
            base = min(before).astimezone(UTC) + ASK_AFTER
            for years in (as_of.year - base.year, as_of.year - base.year - 1):
                due = add_years(base, years)
                if years >= 0 and as_of - DAY < due <= as_of:
                    n += 1
                    key = f"{cid}:{years}"
                    if not VALID_EMAIL.match(email or "") or key in asks:
                        continue
                    status = consent.get(cid)
                    asks[key] = (cid, due, *(("sent", None) if status == "opted_in" else
                                             ("suppressed", "no consent" if status is None else "consent withdrawn")))
        selected.append(n)
    return selected, asks


def test_birthday_ask_at_most_once_a_year(ask_run):
    engine, results, emails = ask_run.engine, ask_run.results, ask_run.emails
    selected, asks = expected_asks(engine)
    assert [r["selected"] for r in results] == selected
    with engine.connect() as conn:
        actual = conn.execute(sa.text(
            "SELECT e.enrollment_key, e.customer_id::bigint, e.entered_at, m.status, m.reason FROM lifecycle.enrollments e "
            "JOIN lifecycle.messages m USING (enrollment_id) WHERE e.journey = 'birthday_ask' AND m.step = 'ask'")).all()
    assert_same(actual, [(k, *v) for k, v in asks.items()], "asks (key, customer, entered, status, reason)")
    with engine.connect() as conn:
        email_of = dict(conn.execute(sa.text("SELECT customer_id, email FROM shop.customers")).all())
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in emails],
                [(email_of[c], "ask") for c, _, st, _ in asks.values() if st == "sent"], "asks received (To, step)")
    assert all("/account/birthday" in text_and_html(m)[0] for m in emails)

    by_customer: dict[int, list[datetime]] = {}
    for _, cid, entered, _, _ in actual:
        by_customer.setdefault(cid, []).append(entered)
    assert sorted(by_customer[900101]) == [FIRST_ORDER + ASK_AFTER, FIRST_ORDER + ASK_AFTER + 365 * DAY]
    assert [(st, r) for k, c, _, st, r in actual if c == 900105] == [("suppressed", "no consent")] * 2
    assert not {900102, 900103, 900104} & set(by_customer)
    for times in by_customer.values():  # at most once a year
        times.sort()
        assert all(b - a >= 365 * DAY for a, b in zip(times, times[1:], strict=False))
    assert len(by_customer) > 2  # random customers too
