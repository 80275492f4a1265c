"""review_request end to end: daily runs over [A-12d, A) on the demo shop, against a real
SMTP server, compared with the outcome derived here from the shop tables."""

from __future__ import annotations

import html
from datetime import datetime

import pytest

from .conftest import (
    ANCHOR,
    DAY,
    Candidate,
    Conversion,
    ExitRule,
    Expected,
    JourneyRun,
    Shop,
    StepRule,
    check_conversions,
    check_enrollments,
    check_messages,
    check_quarantine,
    check_runs,
    check_smtp,
    intervals_for,
    intervals_from_ends,
    journey_run,
    py,
    simulate,
    text_and_html,
)

JOURNEY = "review_request"
WINDOW = (ANCHOR - 12 * DAY, ANCHOR)
SOFT_DELAY, HARD_DELAY = 10 * DAY, 21 * DAY  # after delivery; any hard product means the longer wait
LOOKBACK = 3 * DAY  # a run picks up requests that came due this long before it
STEPS = [StepRule("request", 0 * DAY), StepRule("reminder", 5 * DAY)]
MAX_LATENESS = 2 * DAY


def expected_review_request(shop: Shop, ends: list[datetime], suppressed_before: dict[int, str]) -> Expected:
    """Each delivered, non-cancelled order: a request at delivery + 10d (soft/consumable only) or
    + 21d (any hard product), a reminder 5 days later; it is picked up while due <= as_of < due + 3d
    and the order has no review yet. Exits, first match wins: a 1-2 star review -> service_recovery,
    4-5 stars -> thank_you, any other review -> silent exit."""
    f = shop.frames
    kinds = f["order_items"].merge(f["products"][["product_id", "product_type"]], on="product_id")
    has_hard = kinds.groupby("order_id").product_type.agg(lambda t: bool((t == "hard").any()))
    orders = f["orders"][f["orders"].delivered_at.notna() & (f["orders"].status != "cancelled")]
    requests = []  # (order_id, customer_id, due)
    for o in orders.itertuples(index=False):
        if int(o.order_id) in has_hard.index:
            delay = HARD_DELAY if has_hard[int(o.order_id)] else SOFT_DELAY
            requests.append((int(o.order_id), int(o.customer_id), py(o.delivered_at) + delay))
    reviews: dict[int, list[tuple[datetime, int]]] = {}
    for r in f["reviews"].itertuples(index=False):
        reviews.setdefault(int(r.order_id), []).append((py(r.created_at), int(r.rating)))

    def reviews_before(order_id: int, as_of: datetime) -> list[tuple[datetime, int]]:
        return sorted(r for r in reviews.get(order_id, ()) if r[0] < as_of)

    def select(interval_start: datetime, as_of: datetime):
        for order_id, customer_id, due in requests:
            if as_of - LOOKBACK < due <= as_of and not reviews_before(order_id, as_of):
                yield Candidate(str(order_id), customer_id, due, shop.email_of[customer_id])

    def review_exit(condition: str, rating_ok):
        def check(e, as_of: datetime):
            hits = [created for created, rating in reviews_before(int(e.key), as_of) if rating_ok(rating)]
            return Conversion(condition, min(hits)) if hits else None
        return check

    exits = [
        ExitRule("left_negative_review", "service_recovery", review_exit("left_negative_review", lambda r: r <= 2)),
        ExitRule("left_positive_review", "thank_you", review_exit("left_positive_review", lambda r: r >= 4)),
        ExitRule("left_any_review", None, review_exit("left_any_review", lambda r: True)),
    ]
    return simulate(
        shop, intervals_from_ends(ends, DAY), select=select, steps=STEPS, exits=exits,
        max_lateness=MAX_LATENESS, suppressed_before=suppressed_before,
    )


@pytest.fixture(scope="module")
def review_run(shop) -> JourneyRun:
    return journey_run(shop, JOURNEY, intervals_for(*WINDOW, DAY))


@pytest.fixture(scope="module")
def expected(review_run) -> Expected:
    return expected_review_request(review_run.shop, [end for _, end in review_run.intervals],
                                   review_run.suppressed_before)


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_orders(review_run, expected):
    assert len(review_run.intervals) == 12
    check_runs(review_run, expected)


def test_messages_match_expected(review_run, expected):
    assert {m.status for m in expected.messages} >= {"sent", "suppressed", "expired"}
    check_messages(review_run, expected)


def test_smtp_received_exactly_the_sent_messages(review_run, expected):
    steps = {step for _, step in expected.sent_emails(review_run.shop)}
    assert steps == {"request", "reminder", "thank_you", "service_recovery"}
    check_smtp(review_run, expected)


def test_enrollments_and_exits(review_run, expected):
    statuses = {(e.status, e.exit_reason) for e in expected.enrollments.values()}
    assert {("converted", "left_negative_review"), ("converted", "left_positive_review"),
            ("converted", "left_any_review"), ("completed", None), ("active", None)} <= statuses
    check_enrollments(review_run, expected)


def test_conversions(review_run, expected):
    check_conversions(review_run, expected)


def test_quarantine(review_run, expected):
    check_quarantine(review_run, expected)


# ----------------------------------------------------------------------------- planted cases


def order_facts(run: JourneyRun, order_id: int):
    return run.query("SELECT delivered_at FROM shop.orders WHERE order_id = :o", o=order_id)[0].delivered_at


def planted_order(run: JourneyRun, name: str) -> tuple[int, str]:
    case = run.planted[name]
    (order_id,) = case.order_ids
    return order_id, case.email


def test_soft_goods_requested_ten_days_after_delivery(review_run):
    order_id, address = planted_order(review_run, "review_soft")
    delivered = order_facts(review_run, order_id)
    assert review_run.messages_of(str(order_id)) == {"request": ("sent", None, delivered + 10 * DAY, ANCHOR - 3 * DAY)}
    assert len(review_run.find_received(address, "request")) == 1


def test_hard_good_requested_twenty_one_days_after_delivery(review_run):
    order_id, address = planted_order(review_run, "review_hard")
    delivered = order_facts(review_run, order_id)
    assert delivered == ANCHOR - 24 * DAY
    assert review_run.messages_of(str(order_id)) == {"request": ("sent", None, delivered + 21 * DAY, ANCHOR - 3 * DAY)}
    assert review_run.enrollment_rows()[str(order_id)].entered_at == delivered + 21 * DAY
    assert len(review_run.find_received(address, "request")) == 1


def test_reminder_five_days_after_request(review_run):
    order_id, address = planted_order(review_run, "review_reminder")
    due = order_facts(review_run, order_id) + 10 * DAY
    assert review_run.messages_of(str(order_id)) == {
        "request": ("sent", None, due, due), "reminder": ("sent", None, due + 5 * DAY, due + 5 * DAY)}
    received = review_run.steps_received_by(address)
    assert received == ["request", "reminder"]


@pytest.mark.parametrize(
    ("name", "rating", "condition", "exit_step"),
    [
        ("review_positive", 5, "left_positive_review", "thank_you"),
        ("review_negative", 1, "left_negative_review", "service_recovery"),
        ("review_neutral", 3, "left_any_review", None),
    ],
)
def test_review_exits(review_run, name, rating, condition, exit_step):
    order_id, address = planted_order(review_run, name)
    case = review_run.planted[name]
    created, got_rating = review_run.query(
        "SELECT created_at, rating FROM shop.reviews WHERE review_id = :r", r=case.review_id)[0]
    assert (got_rating, created) == (rating, ANCHOR - 2 * DAY)
    enrollment = review_run.enrollment_rows()[str(order_id)]
    assert (enrollment.status, enrollment.exit_reason, enrollment.exited_at) == ("converted", condition, created)
    assert review_run.conversion_rows()[str(order_id)] == (case.customer_id, condition, None, None, created)
    msgs = review_run.messages_of(str(order_id))
    due = order_facts(review_run, order_id) + 10 * DAY
    wanted = {"request": ("sent", None, due, due)}
    if exit_step:
        wanted[exit_step] = ("sent", None, created, created + DAY)  # found by the first run after the review
    assert msgs == wanted
    received = review_run.steps_received_by(address)
    assert received == ["request"] + ([exit_step] if exit_step else [])


@pytest.mark.parametrize("name", ["review_before_request", "review_undelivered"])
def test_never_enrolled(review_run, name):
    order_id, address = planted_order(review_run, name)
    assert str(order_id) not in review_run.enrollment_rows()
    assert not review_run.steps_received_by(address)


# ----------------------------------------------------------------------------- the email itself


def test_request_email_lists_the_products_to_review(review_run):
    order_id, address = planted_order(review_run, "review_hard")
    items = review_run.query(
        "SELECT p.name, p.image_url FROM shop.order_items oi JOIN shop.products p USING (product_id) "
        "WHERE oi.order_id = :o", o=order_id,
    )
    assert len(items) == 2
    (message,) = review_run.find_received(address, "request")
    text, body = text_and_html(message)
    for name, image_url in items:
        assert html.escape(name) in body and image_url in body
    assert str(order_id) in text
    assert message["List-Unsubscribe"] and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_every_marketing_email_has_one_click_unsubscribe(review_run):
    assert review_run.received
    for message in review_run.emails:
        assert "<https://" in message["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
