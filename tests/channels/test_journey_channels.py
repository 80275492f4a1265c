"""A journey over push (falling back to email) and SMS, end to end through the engine, against
the local push service (decrypts, checks VAPID), the Twilio-shaped server and a real SMTP
server. Who gets what is derived in the test from the shop's own tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lifecycle import plan, run_audit, send, stage, validate
from lifecycle.channels.email import EmailChannel
from lifecycle.channels.push import PushChannel
from lifecycle.channels.sms import SMSChannel, normalise_number
from lifecycle.config import SEGMENTS_DIR
from lifecycle.enroll import enroll
from lifecycle.replay import run_interval
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec
from lifecycle_demo.sinks.push_server import PushServer, demo_key_lookup
from lifecycle_demo.sinks.twilio_server import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, TwilioServer

HEADER = """/* ---
journey: channel_probe
schedule: hourly
entry_key: cart_id
entered_at: cart_updated_at
max_lateness: 7d
params: {lookback_hours: 48, wait_hours: 1}
steps:
  - {name: reminder_1, after: 1h, channel: [push, email], template: cart_abandonment/reminder_1, ttl: 2h, urgency: high}
  - {name: reminder_2, after: 24h, channel: sms, template: cart_abandonment/reminder_2}
--- */
"""
NOON = lambda day: datetime(day.year, day.month, day.day, 12, tzinfo=UTC)  # noqa: E731


@pytest.fixture()
def setup(shop_db, smtp_server, tmp_path):
    engine, planted, anchor = shop_db
    body = (SEGMENTS_DIR / "cart_abandonment.sql").read_text().split("--- */", 1)[1]
    (tmp_path / "channel_probe.sql").write_text(HEADER + body)
    spec = load_spec(tmp_path / "channel_probe.sql")
    push, sms = PushServer(key_lookup=demo_key_lookup(engine, seed=11)), TwilioServer()
    push.start()
    sms.start()
    reset_lifecycle(engine)
    with engine.begin() as conn:
        # The shop's subscriptions point at a made-up push host; route them to the local one.
        conn.execute(sa.text("UPDATE shop.push_subscriptions SET revoked_at = NULL, "
                             "endpoint = :origin || '/push/' || regexp_replace(endpoint, '^.*/', '')"),
                     {"origin": push.origin})
    vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    channels = {
        "email": lambda: EmailChannel("127.0.0.1", smtp_server.port),
        "push": lambda: PushChannel(vapid, "mailto:ops@shop.example.com"),
        "sms": lambda: SMSChannel(sms.base_url, DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, from_number="+15005550006",
                                  backoff=0.01, settle=0.01),
    }
    yield engine, anchor, spec, lambda name: channels[name](), push, sms, smtp_server
    push.stop()
    sms.stop()


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def can_receive_push(engine) -> set[int]:
    """Customers with a live subscription and push consent, read from the shop tables."""
    return {r[0] for r in rows(engine, """
        SELECT DISTINCT s.customer_id FROM shop.push_subscriptions s
        JOIN shop.consents k ON k.customer_id = s.customer_id AND k.channel = 'push' AND k.status = 'opted_in'
        WHERE s.revoked_at IS NULL""")}


def test_push_first_then_email_and_sms_in_daytime_only(setup):
    engine, anchor, spec, channel_for, push, sms, smtp = setup
    noon = NOON(anchor)
    run_interval(engine, spec, anchor - timedelta(hours=1), anchor, channel_for, clock=lambda: noon)

    # reminder_1 goes by push to whoever can receive push, by email to everyone else.
    reminder_1 = rows(engine, "SELECT customer_id::bigint, channel, status FROM lifecycle.messages WHERE step = 'reminder_1'")
    pushable = can_receive_push(engine)
    recipients = {c for c, _, _ in reminder_1}
    assert recipients & pushable and recipients - pushable
    # Everyone who can receive push gets push; the rest email; those who can receive neither
    # are recorded on the primary channel with the reason, never sent.
    assert {c for c, ch, _ in reminder_1 if ch == "email"}.isdisjoint(pushable)
    assert all(st == "sent" for c, ch, st in reminder_1 if ch == "push" and c in pushable)
    assert all(st in ("suppressed", "skipped") for c, ch, st in reminder_1 if ch == "push" and c not in pushable)
    sent_push = [c for c, ch, st in reminder_1 if ch == "push" and st == "sent"]
    assert len(push.received) == len(sent_push) > 0
    first = push.received[0]
    assert first.headers["urgency"] == "high" and first.headers["ttl"] == "7200"
    assert first.payload["title"].endswith("is waiting") and first.payload["url"].startswith("https://")
    assert first.claims["aud"] == push.origin and first.claims["sub"] == "mailto:ops@shop.example.com"

    # reminder_2 is an SMS: sent where it is daytime at noon UTC, waiting elsewhere.
    sms_rows = rows(engine, """
        SELECT m.status, m.not_before, m.reason, c.timezone, c.phone, c.country, m.payload
        FROM lifecycle.messages m JOIN shop.customers c ON c.customer_id::text = m.customer_id
        WHERE m.step = 'reminder_2' AND m.channel = 'sms'""")
    assert sms_rows
    for status, not_before, reason, tz, phone, country, payload in sms_rows:
        number, problem = normalise_number(phone, country)
        local_hour = noon.astimezone(ZoneInfo(tz or "UTC")).hour
        if status == "sent":
            assert 8 <= local_hour < 21 and number and payload["segments"] >= 1
        elif status == "planned":
            assert not (8 <= local_hour < 21) and not_before > noon and "SMS hours" in reason
    sent_numbers = sorted(m["to"] for m in sms.messages)
    assert sent_numbers == sorted(normalise_number(p, c)[0] for s, _, _, _, p, c, _ in sms_rows if s == "sent")


def test_waiting_sms_goes_out_when_the_recipients_day_starts(setup):
    engine, anchor, spec, channel_for, push, sms, smtp = setup
    night = anchor.replace(hour=2)  # 02:00 UTC: night in Europe and the Americas
    run_interval(engine, spec, anchor - timedelta(hours=1), anchor, channel_for, clock=lambda: night)
    waiting = rows(engine, "SELECT message_id, not_before FROM lifecycle.messages WHERE channel = 'sms' "
                           "AND status = 'planned' AND not_before IS NOT NULL")
    assert waiting
    latest = max(nb for _, nb in waiting)
    # A later run after every wait is over sends them, exactly once each.
    run_interval(engine, spec, anchor, anchor + timedelta(hours=1), channel_for, clock=lambda: latest)
    statuses = dict(rows(engine, "SELECT message_id, status FROM lifecycle.messages WHERE message_id = ANY(:ids)",
                         ids=[i for i, _ in waiting]))
    assert set(statuses.values()) == {"sent"}
    assert len(sms.messages) == len({m["sid"] for m in sms.messages})


def test_stop_reply_suppresses_sms_and_a_gone_subscription_falls_back_to_email(setup):
    engine, anchor, spec, channel_for, push, sms, smtp = setup
    noon = NOON(anchor)
    run = RunContext(spec.journey, "probe", "live", anchor - timedelta(hours=1), anchor)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    validate.validate_stage(engine, spec, run)
    enroll(engine, spec, run)
    plan.plan_due_steps(engine, spec, run)
    batches = plan.assign_batches(engine, spec, run)
    # From what was planned: one push recipient whose subscription turns out to be gone, and
    # every SMS recipient replies STOP.
    target, endpoint = rows(engine, """
        SELECT m.customer_id, s.endpoint FROM lifecycle.messages m
        JOIN shop.push_subscriptions s ON s.customer_id::text = m.customer_id AND s.revoked_at IS NULL
        WHERE m.channel = 'push' AND m.status = 'planned' ORDER BY m.message_id LIMIT 1""")[0]
    push.gone.add(endpoint.rsplit("/", 1)[1])
    for phone, country in rows(engine, "SELECT c.phone, c.country FROM lifecycle.messages m "
                                       "JOIN shop.customers c ON c.customer_id::text = m.customer_id WHERE m.channel = 'sms'"):
        number, _ = normalise_number(phone, country)
        if number:
            sms.stop_numbers.add(number)

    for batch in batches:
        send.send_batch(engine, spec, batch, channel_for, clock=lambda: noon)

    status, reason = rows(engine, "SELECT status, reason FROM lifecycle.messages WHERE customer_id = CAST(:c AS text) "
                                  "AND step = 'reminder_1' AND channel = 'push'", c=target)[0]
    assert status == "failed" and reason.startswith("subscription gone")
    revoked = rows(engine, "SELECT endpoint FROM shop.push_subscriptions WHERE revoked_at IS NOT NULL")
    assert [r[0] for r in revoked] == [endpoint]  # exactly that endpoint
    fallback = rows(engine, "SELECT channel, status, fallback_of IS NOT NULL FROM lifecycle.messages "
                            "WHERE customer_id = CAST(:c AS text) AND step = 'reminder_1' AND channel = 'email'", c=target)
    assert fallback == [("email", "planned", True)]

    stopped = rows(engine, "SELECT customer_id, reason FROM lifecycle.messages WHERE channel = 'sms' "
                           "AND status = 'failed'")
    suppressed = {r[0] for r in rows(engine, "SELECT customer_id FROM lifecycle.suppressions "
                                             "WHERE channel = 'sms' AND reason = 'provider_opt_out'")}
    assert stopped and {c for c, _ in stopped} == suppressed and all("21610" in r for _, r in stopped)
    assert sms.messages == []

    # The next run sends the fallback email, once.
    email = rows(engine, "SELECT email FROM shop.customers WHERE customer_id = :c", c=target)[0][0]
    run_interval(engine, spec, anchor, anchor + timedelta(hours=1), channel_for, clock=lambda: noon)
    assert [r for m in smtp.messages for r in m.rcpt_tos].count(email) == 1
