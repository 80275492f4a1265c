"""cart_abandonment end to end: hourly runs over [A-5d, A) on the demo shop, against a real
SMTP server, compared with the outcome derived here from the shop tables."""

from __future__ import annotations

import html
from datetime import datetime

import pytest

from .conftest import (
    ANCHOR,
    DAY,
    HOUR,
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
    py,
    simulate,
    text_and_html,
)

JOURNEY = "cart_abandonment"
WINDOW = (ANCHOR - 5 * DAY, ANCHOR)
STEPS = [StepRule("reminder_1", 1 * HOUR), StepRule("reminder_2", 24 * HOUR), StepRule("reminder_3", 48 * HOUR)]
MAX_LATENESS = 6 * HOUR
WAIT = 1 * HOUR  # a cart is abandoned once it has been left alone this long
LOOKBACK = 48 * HOUR  # how far back a run looks for carts


def expected_cart_abandonment(shop: Shop, ends: list[datetime], suppressed_before: dict[int, str]) -> Expected:
    """Carts with at least one item whose customer placed no (non-cancelled) order after the
    cart's last change, each cart seen as it was at the run's as_of: the lines added before
    as_of (a line's added_at, else the cart's updated_at), last change = updated_at if that is
    before as_of, else the last line added before as_of. Clock: that last change, moving when
    the cart changes again. Reminders at +1h/+24h/+48h; an order exits with a thank-you and a
    conversion for that order."""
    f = shop.frames
    lines: dict[int, list[datetime | None]] = {}
    for line in f["cart_items"].itertuples(index=False):
        lines.setdefault(int(line.cart_id), []).append(py(line.added_at))
    carts = f["carts"][f["carts"].customer_id.notna()]
    carts = [
        (int(c.cart_id), int(c.customer_id), py(c.updated_at))
        for c in carts.itertuples(index=False)
        if int(c.cart_id) in lines and int(c.customer_id) in shop.email_of
    ]

    def last_change_as_of(cart_id: int, updated_at: datetime, as_of: datetime) -> datetime | None:
        added = [a or updated_at for a in lines[cart_id]]
        if not any(a < as_of for a in added):
            return None  # empty at as_of
        return updated_at if updated_at < as_of else max(a for a in added if a < as_of)

    def select(interval_start: datetime, as_of: datetime):
        for cart_id, customer_id, updated_at in carts:
            changed = last_change_as_of(cart_id, updated_at, as_of)
            if changed and as_of - LOOKBACK <= changed < as_of - WAIT and not shop.first_order_between(
                customer_id, changed, as_of
            ):
                yield Candidate(str(cart_id), customer_id, changed, shop.email_of[customer_id])

    return simulate(
        shop, intervals_from_ends(ends, HOUR), select=select, steps=STEPS,
        exits=[purchased_since_entry(shop)],
        max_lateness=MAX_LATENESS, suppressed_before=suppressed_before, refresh_clock=True,
    )


@pytest.fixture(scope="module")
def cart_run(shop) -> JourneyRun:
    return journey_run(shop, JOURNEY, intervals_for(*WINDOW, HOUR))


@pytest.fixture(scope="module")
def expected(cart_run) -> Expected:
    return expected_cart_abandonment(cart_run.shop, [end for _, end in cart_run.intervals], cart_run.suppressed_before)


# ----------------------------------------------------------------------------- bulk comparison


def test_window_is_covered_hourly(cart_run):
    assert len(cart_run.intervals) == 5 * 24
    assert cart_run.intervals[0][0] == WINDOW[0] and cart_run.intervals[-1][1] == WINDOW[1]


def test_runs_select_the_expected_carts(cart_run, expected):
    check_runs(cart_run, expected)


def test_messages_match_expected(cart_run, expected):
    statuses = {m.status for m in expected.messages}
    assert {"sent", "suppressed", "expired"} <= statuses, "the window should exercise sent, suppressed and expired"
    check_messages(cart_run, expected)


def test_smtp_received_exactly_the_sent_messages(cart_run, expected):
    assert sum(expected.sent_emails(cart_run.shop).values()) > 20
    check_smtp(cart_run, expected)


def test_enrollments_and_exits(cart_run, expected):
    check_enrollments(cart_run, expected)


def test_conversions(cart_run, expected):
    assert any(e.status == "converted" for e in expected.enrollments.values())
    check_conversions(cart_run, expected)


def test_quarantine(cart_run, expected):
    assert expected.quarantined, "the planted invalid address should be quarantined"
    check_quarantine(cart_run, expected)


# ----------------------------------------------------------------------------- planted cases


def test_full_sequence_gets_three_reminders_on_time(cart_run):
    case = cart_run.planted["cart_full_sequence"]
    updated = ANCHOR - 4 * DAY - 2 * HOUR
    msgs = cart_run.messages_of(str(case.cart_id))
    assert set(msgs) == {"reminder_1", "reminder_2", "reminder_3"}
    # reminder_1 is planned by the run that enrols the cart (updated_at < as_of - 1h first holds at A-4d);
    # the others by the run ending exactly at their due time.
    assert msgs == {
        "reminder_1": ("sent", None, updated + HOUR, ANCHOR - 4 * DAY),
        "reminder_2": ("sent", None, updated + 24 * HOUR, updated + 24 * HOUR),
        "reminder_3": ("sent", None, updated + 48 * HOUR, updated + 48 * HOUR),
    }
    assert cart_run.received_by_step()[case.email, "reminder_1"] == 1
    assert cart_run.received_by_step()[case.email, "reminder_3"] == 1
    assert cart_run.enrollment_rows().get(str(case.cart_id)).status == "active"


def test_bought_after_first_reminder_gets_thank_you_and_no_more_reminders(cart_run):
    case = cart_run.planted["cart_bought_after_first_reminder"]
    (order_id,) = case.order_ids
    ordered_at, total = cart_run.query("SELECT ordered_at, total FROM shop.orders WHERE order_id = :o", o=order_id)[0]
    msgs = cart_run.messages_of(str(case.cart_id))
    assert set(msgs) == {"reminder_1", "thank_you"}
    assert msgs["reminder_1"][0] == "sent" and msgs["reminder_1"][2] == ANCHOR - 3 * DAY + HOUR
    assert msgs["thank_you"][0] == "sent" and msgs["thank_you"][2] == ordered_at
    # reminder_1 by the run that enrols the cart (A-3d+2h); the thank-you by the first run after the order.
    assert (msgs["reminder_1"][3], msgs["thank_you"][3]) == (ANCHOR - 3 * DAY + 2 * HOUR, ANCHOR - 3 * DAY + 6 * HOUR)
    enrollment = cart_run.enrollment_rows().get(str(case.cart_id))
    assert (enrollment.status, enrollment.exit_reason, enrollment.exited_at) == (
        "converted", "purchased_since_entry", ordered_at)
    assert cart_run.conversion_rows()[str(case.cart_id)][1:4] == ("purchased_since_entry", str(order_id), total)
    got = cart_run.received_by_step()
    assert (got[case.email, "reminder_1"], got[case.email, "thank_you"], got[case.email, "reminder_2"]) == (1, 1, 0)
    received_steps = cart_run.steps_received_by(case.email)
    assert received_steps == ["reminder_1", "thank_you"]


def test_cart_updated_after_a_reminder_moves_the_clock_and_shows_the_new_item(cart_run):
    case = cart_run.planted["cart_updated_after_reminder"]
    first, again = ANCHOR - 3 * DAY + 2 * HOUR, ANCHOR - 2 * DAY - 4 * HOUR
    msgs = cart_run.messages_of(str(case.cart_id))
    # reminder 1 on the first picture of the cart; the rest timed from the second change (not first + 24h/48h)
    assert msgs == {
        "reminder_1": ("sent", None, first + HOUR, first + 2 * HOUR),  # enrolled once left alone > 1h
        "reminder_2": ("sent", None, again + 24 * HOUR, again + 24 * HOUR),
        "reminder_3": ("sent", None, again + 48 * HOUR, again + 48 * HOUR),
    }
    enrollment = cart_run.enrollment_rows().get(str(case.cart_id))
    assert (enrollment.status, enrollment.entered_at) == ("active", again)
    names = [n for (n,) in cart_run.query(
        "SELECT p.name FROM shop.cart_items ci JOIN shop.products p USING (product_id) "
        "WHERE ci.cart_id = :c ORDER BY ci.added_at", c=case.cart_id)]
    assert len(names) == 2
    (one,) = cart_run.find_received(case.email, "reminder_1")
    (two,) = cart_run.find_received(case.email, "reminder_2")
    assert names[0] in text_and_html(one)[0] and names[1] not in text_and_html(one)[0]  # the cart as it was then
    assert all(n in text_and_html(two)[0] for n in names)  # ... and as it is after the change
    assert cart_run.steps_received_by(case.email) == ["reminder_1", "reminder_2", "reminder_3"]


def test_consent_withdrawn_gets_nothing(cart_run):
    case = cart_run.planted["cart_consent_withdrawn"]
    msgs = cart_run.messages_of(str(case.cart_id))
    assert set(msgs) == {"reminder_1", "reminder_2", "reminder_3"}
    assert {(s, r) for s, r, *_ in msgs.values()} == {("suppressed", "consent withdrawn")}
    assert not cart_run.find_received(case.email, "reminder_1")
    assert not cart_run.steps_received_by(case.email)


def test_no_consent_row_gets_nothing(cart_run):
    case = cart_run.planted["cart_no_consent_row"]
    msgs = cart_run.messages_of(str(case.cart_id))
    assert set(msgs) == {"reminder_1", "reminder_2"}  # reminder_3 is due at A+18h
    assert {(s, r) for s, r, *_ in msgs.values()} == {("suppressed", "no consent")}
    assert not cart_run.steps_received_by(case.email)


def test_invalid_email_is_quarantined_never_enrolled(cart_run):
    case = cart_run.planted["cart_invalid_email"]
    rows = [(k, r) for k, r, _ in cart_run.quarantine_rows() if k == str(case.cart_id)]
    assert rows and set(rows) == {(str(case.cart_id), ("email: not a valid address",))}
    assert cart_run.enrollment_rows().get(str(case.cart_id)) is None
    assert not cart_run.steps_received_by("not-an-email")


def test_empty_cart_never_enrolled(cart_run):
    case = cart_run.planted["cart_empty"]
    assert cart_run.enrollment_rows().get(str(case.cart_id)) is None
    assert not [q for q in cart_run.quarantine_rows() if q[0] == str(case.cart_id)]


def test_recent_cart_gets_first_reminder_in_last_run(cart_run):
    case = cart_run.planted["cart_recent"]
    assert cart_run.enrollment_rows().get(str(case.cart_id)).enrolled_at == ANCHOR
    assert cart_run.messages_of(str(case.cart_id)) == {"reminder_1": ("sent", None, ANCHOR - HOUR, ANCHOR)}
    assert len(cart_run.find_received(case.email, "reminder_1")) == 1


def test_order_before_the_cart_does_not_exit(cart_run):
    case = cart_run.planted["cart_ordered_before"]
    enrollment = cart_run.enrollment_rows().get(str(case.cart_id))
    assert (enrollment.status, enrollment.entered_at) == ("active", ANCHOR - 10 * HOUR)
    msgs = cart_run.messages_of(str(case.cart_id))
    assert set(msgs) == {"reminder_1"} and msgs["reminder_1"][0] == "sent"
    assert str(case.cart_id) not in cart_run.conversion_rows()


# ----------------------------------------------------------------------------- the email itself


def test_reminder_email_shows_every_cart_item(cart_run):
    case = cart_run.planted["cart_full_sequence"]
    items = cart_run.query(
        "SELECT p.name, p.image_url FROM shop.cart_items ci JOIN shop.products p USING (product_id) "
        "WHERE ci.cart_id = :c", c=case.cart_id,
    )
    assert len(items) == 2
    # the context names the items by reference (no card, no shop price); the email gets the cards
    context = cart_run.enrollment_rows()[str(case.cart_id)].context
    assert all(set(i) == {"product_id", "quantity", "unit_price"} for i in context["items"]), context["items"]
    assert len(context["items"]) == 2
    (message,) = cart_run.find_received(case.email, "reminder_1")
    text, body = text_and_html(message)
    for name, image_url in items:
        assert name in text
        assert html.escape(name) in body
        assert image_url in body
    assert message["List-Unsubscribe"] and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_every_marketing_email_has_one_click_unsubscribe(cart_run):
    assert cart_run.received
    for message in cart_run.emails:
        assert "<https://" in message["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

