"""behaviour_discount end to end: hourly runs over [A-51h, A-20h) on a fresh demo shop (the
`shop_db` fixture, its planted cases plus a few test-only rows), against a real SMTP server,
compared with the outcome derived here from the shop tables (never the segment SQL).

The rules as this test states them (the issue's, with the clock the segment documents):
a known customer's view of a product is a qualifying moment when the customer viewed that
product at least MIN_VIEWS times in the WINDOW ending at that view (both ends included). A run
(as_of = its interval end) selects, per customer and product, the earliest qualifying view in
[as_of - LOOKBACK, as_of) such that the customer placed no non-cancelled order in
[view - NO_ORDER, as_of), never placed a non-cancelled order containing the product before
as_of, and has no enrollment of the journey for the same product with a clock less than
COOLDOWN away. Key customer:product:<UTC date of the view>, clock = the view. One email at
the clock with a 10% code for that product valid 7 days (lifecycle.coupons.product_id); an
order that uses the code while it is valid and contains the product converts.
"""

from __future__ import annotations

import html
import re
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import babel.dates
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR
from lifecycle.render import money
from lifecycle.replay import run_interval
from lifecycle.smtp_sink import RecordingSMTPServer
from lifecycle.spec import load_spec

from .conftest import (
    DAY,
    HOUR,
    VALID_EMAIL,
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
    intervals_for,
    py,
    read_shop_frames,
    simulate,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "behaviour_discount"
MIN_VIEWS, WINDOW, NO_ORDER, COOLDOWN, LOOKBACK = 4, 7 * DAY, 30 * DAY, 30 * DAY, 24 * HOUR
MAX_LATENESS = 6 * HOUR
PERCENT_OFF, VALID = Decimal(10), 7 * DAY
MINUTE = timedelta(minutes=1)
CODE = re.compile(r"^BHV[0-9A-F]{16}$")


def window(anchor: datetime) -> tuple[datetime, datetime]:
    """The planted qualifying views lie in [A-50h, A-22h], the redemptions before A-25h; the
    first run also finds a test-only view from A-65h, too late."""
    return anchor - 51 * HOUR, anchor - 20 * HOUR


# ----------------------------------------------------------------------------- test-only rows
LATE, BAD_EMAIL = 900_001, 900_002


def plant_test_rows(engine: sa.Engine, anchor: datetime) -> None:
    """A qualifying view long before the first run (found late: expired) and one by a customer
    whose address is unusable (quarantined while the view is in the lookback)."""
    a = anchor
    views = []
    for cid, product_id, fourth in ((LATE, 12, a - 65 * HOUR + 17 * MINUTE), (BAD_EMAIL, 27, a - 40 * HOUR + 17 * MINUTE)):
        for i, at in enumerate((fourth - 3 * DAY, fourth - 2 * DAY, fourth - DAY, fourth)):
            views.append({"view_id": 9_000_000 + cid % 1000 * 10 + i, "customer_id": cid, "product_id": product_id,
                          "viewed_at": at, "session_id": f"bd-test-{cid}-{i}"})
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, created_at) "
            "VALUES (:cid, :email, 'Test', 'DE', 'Europe/Berlin', :created)"),
            [{"cid": LATE, "email": "bd.late@example.com", "created": a - 300 * DAY},
             {"cid": BAD_EMAIL, "email": "not-an-email", "created": a - 300 * DAY}])
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) "
            "VALUES (:cid, 'email', 'opted_in', 'test', :t)"),
            [{"cid": LATE, "t": a - 300 * DAY}, {"cid": BAD_EMAIL, "t": a - 300 * DAY}])
        conn.execute(sa.text(
            "INSERT INTO shop.page_views (view_id, customer_id, anonymous_id, session_id, product_id, category, "
            "viewed_at, seconds_on_page) SELECT :view_id, :customer_id, NULL, :session_id, :product_id, p.category, "
            ":viewed_at, 30 FROM shop.products p WHERE p.product_id = :product_id"), views)


# Orders placed between runs with the codes the engine issued: (insert after the run ending at
# A + offset, case, order id, ordered at A + offset, status, with the code's product?)
REDEMPTIONS = [
    (-31 * HOUR, "behaviour_discount_four_views", 990_000_001, -30 * HOUR + 5 * MINUTE, "placed", True),
    (-29 * HOUR, "behaviour_discount_order_31_days_ago", 990_000_002, -28 * HOUR + 5 * MINUTE, "placed", False),
    (-27 * HOUR, "behaviour_discount_cancelled_purchase", 990_000_003, -26 * HOUR + 5 * MINUTE, "cancelled", True),
]
OTHER_PRODUCT = 1  # CLO-01-T1, a T-shirt nobody in the redemptions viewed


def redeem(engine: sa.Engine, planted, anchor: datetime, end: datetime) -> None:
    for after, name, order_id, at, status, with_product in REDEMPTIONS:
        if end != anchor + after:
            continue
        case = planted[name]
        with engine.begin() as conn:
            code = conn.execute(sa.text("SELECT code FROM lifecycle.coupons WHERE journey = :j AND customer_id = CAST(:c AS text)"),
                                {"j": JOURNEY, "c": case.customer_id}).scalar()
            if code is None:  # the case did not get its code: the tests about it fail on their own
                continue
            lines = [(OTHER_PRODUCT, 1)] + ([(case.product_id, 1)] if with_product else [])
            prices = dict(conn.execute(sa.text("SELECT product_id, price FROM shop.products WHERE product_id = ANY(:p)"),
                                       {"p": [p for p, _ in lines]}).all())
            conn.execute(sa.text(
                "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, coupon_code) "
                "VALUES (:o, :c, :t, :s, :total, 'EUR', :code)"),
                {"o": order_id, "c": case.customer_id, "t": anchor + at, "s": status, "code": code,
                 "total": sum(prices[p] * q for p, q in lines) - (prices[case.product_id] / 10 if with_product else 0)})
            conn.execute(sa.text("INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
                                 "VALUES (:o, :p, :q, :u)"),
                         [{"o": order_id, "p": p, "q": q, "u": prices[p]} for p, q in lines])


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def bd_run(shop_db) -> JourneyRun:
    engine, planted, anchor = shop_db
    plant_test_rows(engine, anchor)
    spec = load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")
    intervals = intervals_for(*window(anchor), HOUR)
    with engine.connect() as conn:
        suppressed_before = dict(conn.execute(sa.text(
            "SELECT customer_id::bigint, reason FROM lifecycle.suppressions WHERE channel = 'email'")).all())
    results = []
    t0 = time.perf_counter()
    with RecordingSMTPServer() as smtp:
        for start, end in intervals:
            results.append(run_interval(engine, spec, start, end, lambda name: EmailChannel("127.0.0.1", smtp.port)))
            redeem(engine, planted, anchor, end)
        received = list(smtp.messages)
    seconds = time.perf_counter() - t0
    shop = Shop(engine, planted, read_shop_frames(engine))  # after the run: with the redeeming orders
    return JourneyRun(JOURNEY, spec, shop, intervals, results, received, suppressed_before, seconds)


# ----------------------------------------------------------------------------- expected outcome


def coupons(run: JourneyRun) -> dict[str, tuple]:
    """enrollment key -> (code, product_id, percent_off, valid_from, valid_until, step), as the engine issued them."""
    rows = run.query("SELECT e.enrollment_key, c.code, c.product_id::bigint, c.percent_off, c.valid_from, c.valid_until, "
                     "c.step FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id) "
                     "WHERE c.journey = :journey AND c.mode = 'live'")
    return {r[0]: tuple(r[1:]) for r in rows}


def expected_behaviour_discount(run: JourneyRun) -> Expected:
    shop = run.shop
    f = shop.frames
    with run.engine.connect() as conn:
        views = pd.read_sql(sa.text("SELECT customer_id, product_id, viewed_at FROM shop.page_views "
                                    "WHERE customer_id IS NOT NULL AND product_id IS NOT NULL"), conn)
    seen: dict[tuple[int, int], list[datetime]] = defaultdict(list)
    for v in views.itertuples(index=False):
        seen[int(v.customer_id), int(v.product_id)].append(py(v.viewed_at))
    # every qualifying view: MIN_VIEWS views of the product in the WINDOW ending at it (ends included)
    moments: list[tuple[datetime, int, int]] = []
    for (cid, pid), times in seen.items():
        times.sort()
        moments += [(t, cid, pid) for t in times if sum(1 for u in times if t - WINDOW <= u <= t) >= MIN_VIEWS]
    moments.sort()

    bought: dict[tuple[int, int], list[datetime]] = defaultdict(list)  # (customer, product) -> non-cancelled orders
    live = f["orders"][f["orders"].status != "cancelled"]
    ordered_at = {int(o.order_id): (int(o.customer_id), py(o.ordered_at)) for o in live.itertuples(index=False)}
    for item in f["order_items"].itertuples(index=False):
        if int(item.order_id) in ordered_at:
            cid, at = ordered_at[int(item.order_id)]
            bought[cid, int(item.product_id)].append(at)

    enrolled: dict[tuple[int, int], list[datetime]] = defaultdict(list)  # rows with a usable address enter

    def select(_start: datetime, as_of: datetime):
        picked: dict[tuple[int, int], datetime] = {}
        for t, cid, pid in moments:
            if not as_of - LOOKBACK <= t < as_of or (cid, pid) in picked:
                continue
            if any(t - NO_ORDER <= o.ordered_at < as_of for o in shop.orders_of.get(cid, ())):
                continue
            if any(at < as_of for at in bought[cid, pid]):
                continue
            if any(abs(e - t) < COOLDOWN for e in enrolled[cid, pid]):
                continue
            picked[cid, pid] = t
        for (cid, pid), t in picked.items():
            email = shop.email_of[cid]
            if VALID_EMAIL.match(email or ""):
                enrolled[cid, pid].append(t)
            yield Candidate(f"{cid}:{pid}:{t.astimezone(UTC):%Y-%m-%d}", cid, t, email)

    codes = coupons(run)
    items_of: dict[int, set[int]] = defaultdict(set)
    for item in f["order_items"].itertuples(index=False):
        items_of[int(item.order_id)].add(int(item.product_id))
    coded = f["orders"][f["orders"].coupon_code.notna() & (f["orders"].status != "cancelled")]

    def redeemed(e, as_of: datetime):
        if e.key not in codes:
            return None
        code, product_id, _, valid_from, valid_until, _ = codes[e.key]
        hits = sorted((py(o.ordered_at), int(o.order_id), Decimal(str(o.total))) for o in coded.itertuples(index=False)
                      if o.coupon_code == code and valid_from <= py(o.ordered_at) < min(valid_until, as_of)
                      and int(e.key.split(":")[1]) in items_of[int(o.order_id)])
        if hits:
            at, order_id, total = hits[0]
            return Conversion("behaviour_discount_redeemed", at, str(order_id), total)
        return None

    return simulate(
        shop, run.intervals, select=select, steps=[StepRule("offer", timedelta(0))],
        exits=[ExitRule("behaviour_discount_redeemed", None, redeemed)],
        max_lateness=MAX_LATENESS, complete_after=VALID, suppressed_before=run.suppressed_before,
    )


@pytest.fixture(scope="module")
def expected(bd_run) -> Expected:
    return expected_behaviour_discount(bd_run)


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_rows(bd_run, expected):
    assert len(bd_run.intervals) == 31
    check_runs(bd_run, expected)


def test_enrollments(bd_run, expected):
    assert len(expected.enrollments) >= 9  # 8 planted + the late test row
    check_enrollments(bd_run, expected)


def test_messages_match_expected(bd_run, expected):
    statuses = {m.status for m in expected.messages}
    assert {"sent", "suppressed", "expired"} <= statuses, statuses
    check_messages(bd_run, expected)


def test_smtp_received_exactly_the_sent_messages(bd_run, expected):
    check_smtp(bd_run, expected)


def test_conversions(bd_run, expected):
    assert sum(e.status == "converted" for e in expected.enrollments.values()) >= 1
    check_conversions(bd_run, expected)


def test_quarantine(bd_run, expected):
    assert expected.quarantined, "the test-only unusable address should be quarantined"
    check_quarantine(bd_run, expected)


def test_one_product_code_per_planned_offer(bd_run, expected):
    """A code for every offer that was planned (not for one found too late), limited to the
    enrollment's product, 10% off, valid 7 days from the clock; unique and unguessable-looking."""
    issued = coupons(bd_run)
    wanted = {
        e.key: (int(e.key.split(":")[1]), PERCENT_OFF, e.entered_at, e.entered_at + VALID, "offer")
        for e in expected.enrollments.values() if e.messages["offer"].status != "expired"
    }
    assert_same([(k, *v[1:]) for k, v in issued.items()], [(k, *v) for k, v in wanted.items()],
                "coupons (key, product, percent, valid from, valid until, step)")
    codes = [v[0] for v in issued.values()]
    assert len(set(codes)) == len(codes) and all(CODE.match(c) for c in codes), codes


# ----------------------------------------------------------------------------- planted cases


def case_key(case, clock: datetime, product_id: int | None = None) -> str:
    return f"{case.customer_id}:{product_id or case.product_id}:{clock.astimezone(UTC):%Y-%m-%d}"


def clock_of(case, anchor: datetime, name: str = "clock") -> datetime:
    return anchor + timedelta(seconds=dict(case.details)[name])


def messages_of(run: JourneyRun, key: str) -> list[tuple]:
    return run.query("SELECT m.step, m.status, m.reason, m.due_at, m.planned_for FROM lifecycle.messages m "
                     "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.journey = :journey "
                     "AND e.enrollment_key = :key", key=key)


def enrollments_of(run: JourneyRun, customer_id: int) -> dict[str, tuple]:
    return {k: r for k, r in run.enrollment_rows().items() if r.customer_id == customer_id}


def test_exactly_four_views_get_a_code_for_the_product(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_four_views"]
    clock = clock_of(case, anchor)
    assert clock == anchor - 40 * HOUR + 17 * MINUTE
    (view_count,) = bd_run.query("SELECT count(*) FROM shop.page_views WHERE customer_id = :c AND product_id = :p",
                                 c=case.customer_id, p=case.product_id)[0]
    assert view_count == 4
    key = case_key(case, clock)
    # sent by the first run after the 4th view; the code is good for the shoes only
    assert [tuple(m) for m in messages_of(bd_run, key)] == [("offer", "sent", None, clock, anchor - 39 * HOUR)]
    assert coupons(bd_run)[key][1:] == (case.product_id, PERCENT_OFF, clock, clock + VALID, "offer")
    assert bd_run.steps_received_by(case.email) == ["offer"]


def test_redeeming_the_code_with_the_product_converts(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_four_views"]
    key = case_key(case, clock_of(case, anchor))
    ordered_at, total = bd_run.query("SELECT ordered_at, total FROM shop.orders WHERE order_id = 990000001")[0]
    row = bd_run.enrollment_rows()[key]
    assert (row.status, row.exit_reason, row.exited_at) == ("converted", "behaviour_discount_redeemed", ordered_at)
    assert bd_run.conversion_rows()[key] == (case.customer_id, "behaviour_discount_redeemed", "990000001", total,
                                             ordered_at)


@pytest.mark.parametrize("name", ["behaviour_discount_order_31_days_ago", "behaviour_discount_cancelled_purchase"])
def test_code_on_an_order_without_the_product_or_cancelled_does_not_convert(bd_run, shop_db, name):
    """31 days: the code was used on an order without the product. Cancelled purchase: the
    product was ordered with the code, but the order was cancelled. Both got their offer."""
    _, planted, anchor = shop_db
    case = planted[name]
    clock = clock_of(case, anchor)
    key = case_key(case, clock)
    assert bd_run.query("SELECT count(*) FROM shop.orders WHERE customer_id = :c AND coupon_code IS NOT NULL",
                        c=case.customer_id)[0][0] == 1
    assert [tuple(m) for m in messages_of(bd_run, key)] == [("offer", "sent", None, clock, clock + 43 * MINUTE)]
    assert bd_run.enrollment_rows()[key].status == "active"
    assert key not in bd_run.conversion_rows()


@pytest.mark.parametrize("name", [
    "behaviour_discount_three_views",  # 3 views: not enough
    "behaviour_discount_spread_out",  # 4 views, but over more than 7 days
    "behaviour_discount_recent_order",  # ordered something 25 days before
    "behaviour_discount_bought_product_before",  # bought this product 200 days before
    "behaviour_discount_ordered_after_views",  # ordered between the 4th view and the next run
])
def test_not_selected(bd_run, shop_db, name):
    _, planted, _ = shop_db
    case = planted[name]
    assert not enrollments_of(bd_run, case.customer_id)
    assert not bd_run.steps_received_by(case.email)
    views = bd_run.query("SELECT count(*) FROM shop.page_views WHERE customer_id = :c AND product_id = :p",
                         c=case.customer_id, p=case.product_id)[0][0]
    assert views == (3 if name.endswith("three_views") else 4)


def test_four_views_exactly_seven_days_apart_count(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_exactly_seven_days"]
    clock = clock_of(case, anchor)
    first = bd_run.query("SELECT min(viewed_at) FROM shop.page_views WHERE customer_id = :c", c=case.customer_id)[0][0]
    assert clock - first == WINDOW
    key = case_key(case, clock)
    assert list(enrollments_of(bd_run, case.customer_id)) == [key]
    assert [tuple(m) for m in messages_of(bd_run, key)] == [("offer", "sent", None, clock, anchor - 23 * HOUR)]


def test_one_code_per_customer_and_product_in_30_days(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_cooldown"]
    clock = clock_of(case, anchor)
    times = sorted(t for (t,) in bd_run.query("SELECT viewed_at FROM shop.page_views WHERE customer_id = :c",
                                              c=case.customer_id))
    assert len(times) == 5 and times[-1] == anchor - 25 * HOUR + 17 * MINUTE
    assert sum(1 for t in times if times[-1] - WINDOW <= t) >= MIN_VIEWS  # the 5th view qualifies too ...
    assert list(enrollments_of(bd_run, case.customer_id)) == [case_key(case, clock)]  # ... but gets nothing
    assert bd_run.steps_received_by(case.email) == ["offer"]


def test_two_products_get_two_codes(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_two_products"]
    details = dict(case.details)
    keys = {case_key(case, clock_of(case, anchor)),
            case_key(case, clock_of(case, anchor, "second_clock"), details["second_product"])}
    assert set(enrollments_of(bd_run, case.customer_id)) == keys
    issued = coupons(bd_run)
    assert {issued[k][1] for k in keys} == {case.product_id, details["second_product"]}
    assert len({issued[k][0] for k in keys}) == 2
    names = dict(bd_run.query("SELECT product_id, name FROM shop.products WHERE product_id = ANY(:p)",
                              p=[case.product_id, details["second_product"]]))
    emails = bd_run.find_received(case.email, "offer")
    assert len(emails) == 2
    shown = {(pid, issued[k][0]) for k in keys for pid in [issued[k][1]]}
    for pid, code in shown:  # each email carries one product with its own code
        (message,) = [m for m in emails if code in text_and_html(m)[0]]
        assert names[pid] in message["Subject"]


def test_no_consent_gets_a_code_recorded_but_no_email(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_no_consent"]
    key = case_key(case, clock_of(case, anchor))
    assert [(s, r) for _, s, r, *_ in messages_of(bd_run, key)] == [("suppressed", "no consent")]
    assert key in coupons(bd_run)
    assert not bd_run.steps_received_by(case.email)


def test_found_too_late_is_expired_without_a_code(bd_run, shop_db):
    _, _, anchor = shop_db
    clock = anchor - 65 * HOUR + 17 * MINUTE
    key = f"{LATE}:12:{clock:%Y-%m-%d}"
    first_run = window(anchor)[0] + HOUR
    assert [tuple(m)[:2] + tuple(m)[3:] for m in messages_of(bd_run, key)] == [("offer", "expired", clock, first_run)]
    assert key not in coupons(bd_run)
    assert not bd_run.steps_received_by("bd.late@example.com")


def test_unusable_address_is_quarantined_never_enrolled(bd_run):
    rows = {(k, r) for k, r, _ in bd_run.quarantine_rows() if k.startswith(f"{BAD_EMAIL}:")}
    assert len(rows) == 1 and next(iter(rows))[1] == ("email: not a valid address",)
    assert not enrollments_of(bd_run, BAD_EMAIL)


def test_the_email_shows_the_product_prices_code_and_expiry(bd_run, shop_db):
    _, planted, anchor = shop_db
    case = planted["behaviour_discount_four_views"]
    key = case_key(case, clock_of(case, anchor))
    code, product_id, _, _, valid_until, _ = coupons(bd_run)[key]
    name, image_url, price = bd_run.query("SELECT name, image_url, price FROM shop.products WHERE product_id = :p",
                                          p=product_id)[0]
    sale = (price * (100 - PERCENT_OFF) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    (message,) = bd_run.find_received(case.email, "offer")
    text, body = text_and_html(message)
    # the last day as the customer reads it: in their time zone, in their locale's long format
    tz, locale = bd_run.query("SELECT timezone, locale FROM shop.customers WHERE customer_id = :c",
                              c=case.customer_id)[0]
    expiry = babel.dates.format_date(valid_until.astimezone(ZoneInfo(tz)).date(), "long", locale=locale)
    for part, esc in ((text, str), (body, html.escape)):
        for shown in (name, money(price), money(sale), code, expiry, "10%"):
            assert esc(shown) in part, (shown, part[:2000])
    assert f'src="{image_url}"' in body
    assert name in message["Subject"] and "10%" in message["Subject"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
