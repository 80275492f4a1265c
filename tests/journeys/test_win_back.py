"""win_back end to end: daily runs over [A-26d, A) on the demo shop (long enough to see the
planted winback_full_sequence from its first email to its suppression), against a real
SMTP server, compared with the outcome derived here from the shop tables."""

from __future__ import annotations

from datetime import datetime

import pytest

from .conftest import (
    ANCHOR,
    DAY,
    Candidate,
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
    purchased_since_entry,
    simulate,
    text_and_html,
)

JOURNEY = "win_back"
WITH_CHANNEL = ("channel", "status", "reason", "due_at", "planned_for")  # a message, as the tests below read it
WINDOW = (ANCHOR - 26 * DAY, ANCHOR)
LAPSED = 90 * DAY
STEPS = [
    StepRule("email_1", 0 * DAY),
    StepRule("email_2", 7 * DAY),
    StepRule("email_3", 14 * DAY),
    StepRule("stop_emailing", 21 * DAY, action=True),
]
MAX_LATENESS = 2 * DAY


def expected_win_back(shop: Shop, ends: list[datetime], suppressed_before: dict[int, str]) -> Expected:
    """Customers whose last non-cancelled order is at least 90 days old. Key customer:last order;
    clock = the later of (last order + 90d) and the start of the first run that sees them.
    Emails at +0/+7d/+14d, suppressed (no_response) at +21d; an order exits with a thank-you."""
    customers = sorted(shop.email_of)

    def select(interval_start: datetime, as_of: datetime):
        for customer_id in customers:
            last = shop.last_order_before(customer_id, as_of)
            if last and last.ordered_at <= as_of - LAPSED:
                yield Candidate(f"{customer_id}:{last.order_id}", customer_id,
                                max(last.ordered_at + LAPSED, interval_start), shop.email_of[customer_id])

    return simulate(
        shop, intervals_from_ends(ends, DAY), select=select, steps=STEPS,
        exits=[purchased_since_entry(shop)],
        max_lateness=MAX_LATENESS, suppressed_before=suppressed_before,
    )


@pytest.fixture(scope="module")
def winback_run(shop) -> JourneyRun:
    return journey_run(shop, JOURNEY, intervals_for(*WINDOW, DAY))


@pytest.fixture(scope="module")
def expected(winback_run) -> Expected:
    return expected_win_back(winback_run.shop, [end for _, end in winback_run.intervals], winback_run.suppressed_before)


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_customers(winback_run, expected):
    assert len(winback_run.intervals) == 26
    check_runs(winback_run, expected)


def test_messages_match_expected(winback_run, expected):
    steps = {m.step for m in expected.messages if m.status == "sent"}
    assert steps == {"email_1", "email_2", "email_3", "stop_emailing", "thank_you"}
    check_messages(winback_run, expected)


def test_smtp_received_exactly_the_sent_messages(winback_run, expected):
    check_smtp(winback_run, expected)
    assert "stop_emailing" not in {step for _, step in winback_run.received_by_step()}


def test_enrollments_and_exits(winback_run, expected):
    check_enrollments(winback_run, expected)


def test_conversions(winback_run, expected):
    assert any(e.status == "converted" for e in expected.enrollments.values())
    check_conversions(winback_run, expected)


def test_quarantine(winback_run, expected):
    check_quarantine(winback_run, expected)


def test_stop_emailing_suppresses_the_customers(winback_run, expected):
    """Every customer whose stop_emailing step ran (and who was not suppressed already) has a
    no_response email suppression written by win_back."""
    wanted = {
        m.customer_id for m in expected.messages
        if m.step == "stop_emailing" and m.status == "sent" and m.customer_id not in winback_run.suppressed_before
    }
    assert wanted
    actual = winback_run.query(
        "SELECT customer_id::bigint, channel, reason FROM lifecycle.suppressions WHERE source = :journey"
    )
    assert sorted(actual) == sorted((c, "email", "no_response") for c in wanted)


def test_coupons_issued_for_each_first_email(winback_run, expected):
    """One coupon per email_1 that was not expired, valid for 14 days from the due time."""
    wanted = {(m.key, m.due_at, m.due_at + 14 * DAY) for m in expected.messages
              if m.step == "email_1" and m.status != "expired"}
    actual = winback_run.query(
        "SELECT e.enrollment_key, c.valid_from, c.valid_until, c.percent_off, c.code "
        "FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id) "
        "WHERE c.journey = :journey AND c.step = 'email_1'"
    )
    assert {(k, f, u) for k, f, u, _, _ in actual} == wanted
    assert len(actual) == len(wanted)
    assert {float(p) for *_, p, _ in actual} == {15.0}
    assert all(code.startswith("WB") for *_, code in actual)


# ----------------------------------------------------------------------------- planted cases


def test_full_sequence_three_emails_then_suppressed(winback_run):
    case = winback_run.planted["winback_full_sequence"]
    entered = ANCHOR - 25 * DAY  # last order A-115d + 90d
    (enrollment,) = [r for k, r in winback_run.enrollment_rows().items() if r.customer_id == case.customer_id]
    assert enrollment.entered_at == entered and enrollment.status == "active"
    msgs = winback_run.messages_of(customer_id=case.customer_id, columns=WITH_CHANNEL)
    assert {step: (ch, status, due, run_end) for step, (ch, status, _, due, run_end) in msgs.items()} == {
        "email_1": ("email", "sent", entered, entered),
        "email_2": ("email", "sent", entered + 7 * DAY, entered + 7 * DAY),
        "email_3": ("email", "sent", entered + 14 * DAY, entered + 14 * DAY),
        "stop_emailing": ("email", "sent", entered + 21 * DAY, entered + 21 * DAY),
    }
    assert msgs["stop_emailing"][2].startswith("action:")
    assert winback_run.query(
        "SELECT channel, reason FROM lifecycle.suppressions WHERE customer_id = CAST(:c AS text)", c=case.customer_id
    ) == [("email", "no_response")]
    received = winback_run.steps_received_by(case.email)
    assert received == ["email_1", "email_2", "email_3"]


def test_converts_exits_with_thank_you_and_conversion(winback_run):
    case = winback_run.planted["winback_converts"]
    first_order, second_order = case.order_ids
    ordered_at, total = winback_run.query(
        "SELECT ordered_at, total FROM shop.orders WHERE order_id = :o", o=second_order)[0]
    key = f"{case.customer_id}:{first_order}"
    enrollment = winback_run.enrollment_rows()[key]
    assert enrollment.entered_at == ANCHOR - 4 * DAY
    assert (enrollment.status, enrollment.exit_reason, enrollment.exited_at) == (
        "converted", "purchased_since_entry", ordered_at)
    assert winback_run.conversion_rows()[key][1:] == ("purchased_since_entry", str(second_order), total, ordered_at)
    msgs = winback_run.messages_of(customer_id=case.customer_id, columns=WITH_CHANNEL)
    assert {s: (st, due) for s, (_, st, _, due, _) in msgs.items()} == {
        "email_1": ("sent", ANCHOR - 4 * DAY), "thank_you": ("sent", ordered_at)}
    received = winback_run.steps_received_by(case.email)
    assert received == ["email_1", "thank_you"]


def test_enters_when_ninety_days_run_out(winback_run):
    case = winback_run.planted["winback_enters"]
    (key,) = [k for k, r in winback_run.enrollment_rows().items() if r.customer_id == case.customer_id]
    assert key == f"{case.customer_id}:{case.order_ids[0]}"
    msgs = winback_run.messages_of(customer_id=case.customer_id, columns=WITH_CHANNEL)
    assert {s: (st, due, end) for s, (_, st, _, due, end) in msgs.items()} == {
        "email_1": ("sent", ANCHOR - 2 * DAY, ANCHOR - 2 * DAY)}


def test_recent_buyer_never_enrolled(winback_run):
    case = winback_run.planted["winback_recent_buyer"]
    assert not [r for r in winback_run.enrollment_rows().values() if r.customer_id == case.customer_id]
    assert not winback_run.messages_of(customer_id=case.customer_id, columns=WITH_CHANNEL)


# ----------------------------------------------------------------------------- the email itself


def test_first_email_carries_the_coupon_code(winback_run):
    case = winback_run.planted["winback_full_sequence"]
    (code,) = winback_run.query(
        "SELECT c.code FROM lifecycle.coupons c WHERE c.journey = :journey AND c.customer_id = CAST(:c AS text)",
        c=case.customer_id,
    )[0]
    (message,) = winback_run.find_received(case.email, "email_1")
    text, body = text_and_html(message)
    assert code in text and code in body
    assert message["List-Unsubscribe"] and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_every_first_email_carries_its_own_coupon(winback_run):
    codes = dict(winback_run.query(
        "SELECT ct.email, c.code FROM lifecycle.coupons c JOIN shop.customers ct ON ct.customer_id::text = c.customer_id "
        "WHERE c.journey = :journey AND c.step = 'email_1'"
    ))
    firsts = [m for m in winback_run.emails if m["X-Lifecycle-Step"] == "email_1"]
    assert len(firsts) > 50
    for message in firsts:
        text, body = text_and_html(message)
        code = codes[message["To"]]
        assert code in text and code in body
        assert not [c for c in codes.values() if c != code and c in text]

def test_every_marketing_email_has_one_click_unsubscribe(winback_run):
    assert winback_run.received
    for message in winback_run.emails:
        assert "<https://" in message["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
