"""The frequency cap (LIFECYCLE_FREQUENCY_CAPS): at most N marketing messages per customer
and channel in a rolling window, across journeys, checked at send time; transactional
messages are never capped. Real PostgreSQL (embedded and service) and a real SMTP server."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import plan, run_audit, send, stage, validate
from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR, frequency_caps
from lifecycle.enroll import enroll
from lifecycle.exits import evaluate_exits
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec

CART = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
# A week of lateness: the first run plans every due reminder, so some customers have several.
LENIENT = dataclasses.replace(
    CART, steps=tuple(dataclasses.replace(s, max_lateness=timedelta(days=7)) for s in CART.steps)
)
OTHER = dataclasses.replace(LENIENT, journey="cart_copy")  # a second journey to the same people


@pytest.fixture()
def shop(shop_db):
    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    return engine, anchor


def run_and_send(engine, spec, end, server) -> None:
    run = RunContext(spec.journey, f"{spec.journey}-{end:%Y%m%d%H}", "live", end - timedelta(hours=1), end)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    validate.validate_stage(engine, spec, run)
    enroll(engine, spec, run)
    evaluate_exits(engine, spec, run)
    plan.plan_due_steps(engine, spec, run)
    for batch in plan.assign_batches(engine, spec, run):
        send.send_batch(engine, spec, batch, lambda name: EmailChannel("127.0.0.1", server.port),
                        clock=lambda: end)


def messages(engine, journey: str) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT customer_id, step, due_at, message_id, status, reason, sent_at FROM lifecycle.messages "
            "WHERE journey = :j ORDER BY customer_id, due_at, message_id"), {"j": journey}).all()


def test_one_email_a_day_keeps_the_earliest_and_suppresses_the_rest(shop, smtp_server, monkeypatch):
    engine, anchor = shop
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "email=1/1d")
    run_and_send(engine, LENIENT, anchor, smtp_server)

    rows = messages(engine, "cart_abandonment")
    capped = [r for r in rows if r.reason and r.reason.startswith("frequency cap")]
    assert capped, "the scenario needs customers with several reminders due at once"
    by_customer: dict[int, list] = {}
    for r in rows:
        by_customer.setdefault(r.customer_id, []).append(r)
    for customer, theirs in by_customer.items():
        sent = [r for r in theirs if r.status == "sent"]
        assert len(sent) <= 1, customer
        for r in theirs:
            if r in capped:  # capped only behind an earlier message that went out
                assert r.status == "suppressed"
                assert r.reason == "frequency cap: at most 1 marketing email per 1d per customer"
                assert sent and (sent[0].due_at, sent[0].message_id) < (r.due_at, r.message_id)
        assert all(r.sent_at == anchor for r in sent)  # the sender's clock, not the wall clock
    to = Counter(m.rcpt_tos[0] for m in smtp_server.messages)
    assert to and max(to.values()) == 1


def test_the_cap_spans_journeys_and_the_window_rolls(shop, smtp_server, monkeypatch):
    engine, anchor = shop
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "email=1/1d")
    run_and_send(engine, LENIENT, anchor, smtp_server)
    emailed = {r.customer_id for r in messages(engine, "cart_abandonment") if r.status == "sent"}
    assert emailed

    # Another journey an hour later: everyone emailed in the last day is capped.
    run_and_send(engine, OTHER, anchor + timedelta(hours=1), smtp_server)
    other = messages(engine, "cart_copy")
    assert other
    for r in other:
        if r.customer_id in emailed:
            assert (r.status, r.reason) == ("suppressed", "frequency cap: at most 1 marketing email per 1d per customer")
    assert not any(r.status == "sent" and r.customer_id in emailed for r in other)

    # A day and more later the window has rolled past those sends: a fresh journey goes out.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM lifecycle.messages WHERE journey = 'cart_copy'"))
        conn.execute(sa.text("DELETE FROM lifecycle.coupons WHERE journey = 'cart_copy'"))
        conn.execute(sa.text("DELETE FROM lifecycle.conversions WHERE journey = 'cart_copy'"))
        conn.execute(sa.text("DELETE FROM lifecycle.enrollments WHERE journey = 'cart_copy'"))
        conn.execute(sa.text("UPDATE lifecycle.messages SET sent_at = sent_at - interval '25 hours' "
                             "WHERE journey = 'cart_abandonment' AND status = 'sent'"))
    run_and_send(engine, OTHER, anchor + timedelta(hours=2), smtp_server)
    again = messages(engine, "cart_copy")
    first = {}
    for r in again:  # rows come ordered by customer, due_at, message_id
        first.setdefault(r.customer_id, r)
    firsts = [r for c, r in first.items() if c in emailed]
    assert any(r.status == "sent" for r in firsts)
    assert not any((r.reason or "").startswith("frequency cap") for r in firsts)


def test_transactional_messages_are_never_capped(shop, smtp_server, monkeypatch):
    engine, anchor = shop
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "email=1/1d")
    run_and_send(engine, dataclasses.replace(LENIENT, kind="transactional"), anchor, smtp_server)
    rows = messages(engine, "cart_abandonment")
    assert Counter(r.customer_id for r in rows if r.status == "sent").most_common(1)[0][1] > 1
    assert not any((r.reason or "").startswith("frequency cap") for r in rows)


def test_cap_setting_is_parsed_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "email=2/1d, sms=1/12h,push=3/1w")
    assert frequency_caps() == {"email": (2, timedelta(days=1)), "sms": (1, timedelta(hours=12)),
                                "push": (3, timedelta(weeks=1))}
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "")
    assert frequency_caps() == {}
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "email=2 per day")
    with pytest.raises(ValueError, match="'email=2 per day' is not <email|sms|push>=<count>/<window>"):
        frequency_caps()
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "fax=1/1d")
    with pytest.raises(ValueError, match="fax=1/1d"):
        frequency_caps()
