"""The guarantees in DESIGN.md, on real PostgreSQL (embedded and service) and a real SMTP server.

At most once under retries, a worker killed mid-batch and duplicate/concurrent runs;
consent checked at send time; late steps expire; nothing lost; hard bounces suppress.
Each test uses the cart_abandonment journey on the shared module shop, and resets the
lifecycle tables first so tests stay independent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import plan, run_audit, send, stage, validate
from lifecycle.channels.base import ChannelUnavailable
from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR
from lifecycle.enroll import enroll
from lifecycle.exits import evaluate_exits
from lifecycle.replay import run_interval
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec

# Everything runs on the embedded server; what depends on a separate server over TCP (a worker killed
# mid-send, a retry after a partial batch, two runs of one interval at once: connections and
# concurrency) also runs on the PostgreSQL service (SERVICE_TOO).
SHOP_SERVERS = ("embedded",)
SERVICE_TOO = pytest.mark.shop_servers("embedded", "service")

SPEC = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
# The same journey with a week of allowed lateness, so that a first (cold) run plans every
# due reminder instead of expiring them: it gives the delivery tests enough messages.
LENIENT = dataclasses.replace(
    SPEC, steps=tuple(dataclasses.replace(s, max_lateness=timedelta(days=7)) for s in SPEC.steps)
)
TERMINAL = {"sent", "failed", "skipped", "suppressed", "expired"}


@pytest.fixture()
def shop(shop_db):
    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    return engine, planted, anchor


def at(batch):
    """The sender's clock in these simulations: the run's as_of."""
    return lambda: datetime.fromisoformat(batch["as_of"])


def channel_to(server):
    return lambda name: EmailChannel("127.0.0.1", server.port)


def plan_interval(engine, end, run_id="run-a", spec=LENIENT):
    """Stage → validate → enroll → exits → plan → batches for the hour ending at `end`."""
    run = RunContext(spec.journey, run_id, "live", end - timedelta(hours=1), end)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    validate.validate_stage(engine, spec, run)
    enroll(engine, spec, run)
    evaluate_exits(engine, spec, run)
    plan.plan_due_steps(engine, spec, run)
    return run, plan.assign_batches(engine, spec, run)


def statuses(engine) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.message_id: (r.status, r.reason) for r in conn.execute(
            sa.text("SELECT message_id, status, reason FROM lifecycle.messages"))}


def planned_recipients(engine, batches) -> list[str]:
    """Who should receive the planned messages: read from the shop's own consent table."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT c.email FROM lifecycle.messages m JOIN shop.customers c ON c.customer_id::text = m.customer_id "
                    "JOIN shop.consents k ON k.customer_id::text = m.customer_id AND k.channel = 'email' "
                    "AND k.status = 'opted_in' "
                    "WHERE m.status = 'planned' AND m.run_id = :r ORDER BY m.message_id"),
            {"r": batches[0]["run_id"]},
        ).scalars().all()


def received(server) -> list[str]:
    return [rcpt for m in server.messages for rcpt in m.rcpt_tos]


@SERVICE_TOO
def test_retry_after_partial_batch_sends_each_message_once(shop, smtp_server):
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    expected = planned_recipients(engine, batches)
    assert len(expected) >= 3
    smtp_server.fail_nth[3] = "451 4.3.0 mailbox busy, try again later"

    with pytest.raises(send.RetryBatch):  # first attempt: 451 on the 3rd message
        for batch in batches:
            send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
    assert len(smtp_server.messages) == len(expected) - 1
    for batch in batches:  # the retry Airflow would run
        send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))

    assert sorted(received(smtp_server)) == sorted(expected)  # everyone exactly once
    with engine.connect() as conn:
        retried = conn.execute(sa.text("SELECT status, attempts FROM lifecycle.messages WHERE attempts = 2")).all()
    assert retried == [("sent", 2)]


@SERVICE_TOO
def test_killed_worker_leaves_unknown_outcome_never_resent(shop, smtp_server):
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    expected = planned_recipients(engine, batches)
    with engine.connect() as conn:
        victim, victim_email = conn.execute(sa.text(
            "SELECT m.message_id, c.email FROM lifecycle.messages m JOIN shop.customers c ON c.customer_id::text = m.customer_id "
            "WHERE m.status = 'planned' AND c.email = :e"), {"e": expected[0]}).one()
    # The dead attempt claimed this message (same code path the send task uses), then died
    # before recording what the provider said.
    assert send.claim_message(engine, victim, "dead-attempt")

    for batch in batches:
        send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))

    status, reason = statuses(engine)[victim]
    assert status == "failed" and reason.startswith("outcome unknown")
    assert sorted(received(smtp_server)) == sorted(e for e in expected if e != victim_email)


# A send task in a process of its own, as Airflow runs it: LENIENT cart_abandonment, every batch.
SEND_TASK = textwrap.dedent("""
    import dataclasses, json, sys
    from datetime import datetime, timedelta
    import sqlalchemy as sa
    from lifecycle import send
    from lifecycle.channels.email import EmailChannel
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.spec import load_spec

    url, port, batches = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    spec = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
    spec = dataclasses.replace(spec, steps=tuple(dataclasses.replace(s, max_lateness=timedelta(days=7))
                                                 for s in spec.steps))
    engine = sa.create_engine(url)
    for batch in batches:
        send.send_batch(engine, spec, batch, lambda name: EmailChannel("127.0.0.1", port),
                        clock=lambda: datetime.fromisoformat(batch["as_of"]))
""")


@SERVICE_TOO
def test_worker_killed_mid_window_leaves_at_most_a_window_unknown_and_never_resends(shop, smtp_server):
    """The send task claims N messages per statement (LIFECYCLE_SEND_WINDOW). Killed (SIGKILL)
    while the server has the 5th message of windows of 3: the 2nd window's three claims are
    recorded `outcome unknown` by the retry and never sent again (two of them reached the
    server, one never did); everything else goes out exactly once."""
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    expected = planned_recipients(engine, batches)
    assert len(expected) >= 8, expected
    child: list[subprocess.Popen] = []
    accept = smtp_server.handler.handle_DATA

    async def killing_data(server, session, envelope):
        reply = await accept(server, session, envelope)  # the server has the message ...
        if smtp_server.data_attempts == 5:
            os.kill(child[0].pid, signal.SIGKILL)  # ... and the sender dies before reading the reply
            child[0].wait()
        return reply

    smtp_server.handler.handle_DATA = killing_data
    plugins = str(Path(send.__file__).resolve().parents[1])
    env = {**os.environ, "LIFECYCLE_SEND_WINDOW": "3", "PYTHONPATH": plugins}
    child.append(subprocess.Popen(
        [sys.executable, "-c", SEND_TASK, engine.url.render_as_string(hide_password=False), str(smtp_server.port),
         json.dumps(batches)], env=env))
    assert child[0].wait(timeout=120) == -signal.SIGKILL
    first_attempt = received(smtp_server)
    assert len(first_attempt) == 5
    with engine.connect() as conn:
        claimed = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE status = 'claimed'")).scalar()
    assert claimed == 3  # the window in flight, and nothing more

    smtp_server.handler.handle_DATA = accept
    for batch in batches:  # the retry Airflow runs
        send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))

    with engine.connect() as conn:
        ids = dict(conn.execute(sa.text(  # every message's Message-ID header, stored with its claim
            "SELECT internet_message_id, status || ': ' || coalesce(reason, '') FROM lifecycle.messages "
            "WHERE status IN ('sent', 'failed')")).all())
        open_rows = conn.execute(sa.text(
            "SELECT count(*) FROM lifecycle.messages WHERE status IN ('planned', 'claimed')")).scalar()
    got = Counter(m.message()["Message-ID"] for m in smtp_server.messages)
    first = [m.message()["Message-ID"] for m in smtp_server.messages[:5]]
    unknown = {i for i, what in ids.items() if what.startswith("failed: outcome unknown")}
    sent = {i for i, what in ids.items() if what.startswith("sent")}
    assert open_rows == 0 and len(unknown) == 3 and len(sent) + 2 == len(got)
    assert max(got.values()) == 1  # no message twice
    assert set(first[3:]) <= unknown  # reached the server, recorded unknown, never sent again
    never_handed_over = unknown - set(first)
    assert len(never_handed_over) == 1  # the window's third message: recorded, not sent (the trade-off)
    assert set(got) == sent | set(first) and not never_handed_over & set(got)
    with engine.connect() as conn:
        lost = conn.execute(sa.text(
            "SELECT c.email FROM lifecycle.messages m JOIN shop.customers c ON c.customer_id::text = m.customer_id "
            "WHERE m.internet_message_id = :i"), {"i": never_handed_over.pop()}).scalar_one()
    assert Counter(received(smtp_server)) == Counter(expected) - Counter([lost])  # the rest, each once


@SERVICE_TOO
def test_same_interval_twice_and_concurrently_sends_once(shop, smtp_server):
    engine, _, anchor = shop
    first = run_interval(engine, LENIENT, anchor - timedelta(hours=1), anchor, channel_to(smtp_server), run_id="scheduled")
    sent_first = len(smtp_server.messages)
    assert first["messages"].get("sent") == sent_first > 0

    again = run_interval(engine, LENIENT, anchor - timedelta(hours=1), anchor, channel_to(smtp_server), run_id="rerun")
    assert again["messages"] == {} and len(smtp_server.messages) == sent_first

    # Two runs of the next interval at once: both plan, both try to send every batch.
    end = anchor + timedelta(hours=30)
    _, batches_a = plan_interval(engine, end, "run-a")
    _, batches_b = plan_interval(engine, end, "run-b")  # takes over every open message
    errors = []

    def deliver(batches):
        try:
            for batch in batches:
                send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(b,)) for b in (batches_a, batches_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rcpts = received(smtp_server)
    assert len(rcpts) > sent_first
    with engine.connect() as conn:
        sent_rows = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE status = 'sent'")).scalar()
        per_key = conn.execute(sa.text("SELECT max(n) FROM (SELECT count(*) n FROM lifecycle.messages "
                                       "GROUP BY journey, enrollment_id, step, channel) x")).scalar()
    assert sent_rows == len(rcpts) and per_key == 1


def test_consent_is_checked_at_send_time(shop, smtp_server):
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    with engine.begin() as conn:
        customer = conn.execute(sa.text("SELECT customer_id FROM lifecycle.messages WHERE status = 'planned' "
                                        "ORDER BY message_id LIMIT 1")).scalar()
        email = conn.execute(sa.text("SELECT email FROM shop.customers WHERE customer_id = :c"), {"c": customer}).scalar()
        # The customer opts out after the plan was made, before the send task runs.
        conn.execute(sa.text("UPDATE shop.consents SET status = 'opted_out' "
                             "WHERE customer_id = :c AND channel = 'email'"), {"c": customer})
    try:
        for batch in batches:
            send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
    finally:  # the shop is shared by this module's tests
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE shop.consents SET status = 'opted_in' "
                                 "WHERE customer_id = :c AND channel = 'email'"), {"c": customer})
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, reason FROM lifecycle.messages WHERE customer_id = CAST(:c AS text)"),
                           {"c": customer}).one()
    assert tuple(row) == ("suppressed", "consent withdrawn")
    assert email not in received(smtp_server) and received(smtp_server)


def test_overdue_steps_expire_instead_of_sending_late(shop, smtp_server):
    engine, planted, _ = shop
    case = planted["cart_full_sequence"]
    with engine.connect() as conn:
        updated = conn.execute(sa.text("SELECT updated_at FROM shop.carts WHERE cart_id = :c"),
                               {"c": case.cart_id}).scalar()
    # The first run that sees the cart ends more than 31h after it went quiet: reminder_1
    # (due +1h) and reminder_2 (due +24h) are both more than the allowed 6h late.
    end = (updated + timedelta(hours=31)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    run_interval(engine, SPEC, end - timedelta(hours=1), end, channel_to(smtp_server))
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text(
            "SELECT m.step, m.status || ':' || coalesce(m.reason, '') FROM lifecycle.messages m "
            "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE e.enrollment_key = :k"),
            {"k": str(case.cart_id)}).all())
    assert set(rows) == {"reminder_1", "reminder_2"}
    assert all(v.startswith("expired:late: due") for v in rows.values()), rows
    assert case.email not in received(smtp_server)


@pytest.mark.slow  # 30 hourly runs
def test_nothing_lost_every_message_ends_sent_or_with_a_reason(shop, smtp_server):
    engine, _, anchor = shop
    smtp_server.reject["planted.cart_recent@example.com"] = "550 5.1.1 no such user"
    t = anchor - timedelta(hours=30)
    while t < anchor:
        run_interval(engine, SPEC, t, t + timedelta(hours=1), channel_to(smtp_server))
        t += timedelta(hours=1)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, reason FROM lifecycle.messages")).all()
        sent = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE status = 'sent'")).scalar()
    assert rows and {s for s, _ in rows} <= TERMINAL
    assert all(reason for s, reason in rows if s != "sent")
    assert sent == len(smtp_server.messages)


def test_hard_bounce_is_recorded_and_suppresses_later_sends(shop, smtp_server):
    engine, planted, anchor = shop
    case = planted["cart_recent"]
    smtp_server.reject[case.email] = "550 5.1.1 no such user"
    run_interval(engine, SPEC, anchor - timedelta(hours=1), anchor, channel_to(smtp_server))
    with engine.connect() as conn:
        status, reason = conn.execute(sa.text(
            "SELECT status, reason FROM lifecycle.messages WHERE customer_id = CAST(:c AS text)"), {"c": case.customer_id}).one()
        suppression = conn.execute(sa.text(
            "SELECT channel, reason FROM lifecycle.suppressions WHERE customer_id = CAST(:c AS text)"), {"c": case.customer_id}).one()
    assert status == "failed" and reason.startswith("hard bounce: SMTP RCPT 550")
    assert tuple(suppression) == ("email", "hard_bounce")
    # The next reminder (due +24h) is suppressed, not attempted.
    later = anchor + timedelta(hours=23)
    run_interval(engine, SPEC, later - timedelta(hours=1), later, channel_to(smtp_server))
    with engine.connect() as conn:
        second = conn.execute(sa.text("SELECT status, reason FROM lifecycle.messages WHERE customer_id = CAST(:c AS text) "
                                      "AND step = 'reminder_2'"), {"c": case.customer_id}).one()
    assert tuple(second) == ("suppressed", "suppressed: hard_bounce")
    assert case.email not in received(smtp_server)


def test_a_backfilled_message_sent_after_its_window_expires_instead(shop, smtp_server):
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor, spec=SPEC)  # an old interval, replayed "today"
    planned = count_status(engine, "planned")
    assert planned > 0
    for batch in batches:  # the production sender's clock: the wall clock, days after anchor + 6h
        send.send_batch(engine, SPEC, batch, channel_to(smtp_server), clock=lambda: anchor + timedelta(days=3))
    with engine.connect() as conn:
        reasons = conn.execute(sa.text("SELECT reason FROM lifecycle.messages WHERE status = 'expired' "
                                       "AND reason LIKE 'late: not sent by%'")).scalars().all()
    assert len(reasons) == planned and smtp_server.messages == []


def test_a_channel_that_cannot_be_configured_leaves_messages_planned(shop, smtp_server):
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    planned = count_status(engine, "planned")

    def misconfigured(name):
        raise RuntimeError("Airflow connection 'lifecycle_smtp' is not defined")

    with pytest.raises(RuntimeError, match="lifecycle_smtp"):
        for batch in batches:
            send.send_batch(engine, LENIENT, batch, misconfigured, clock=at(batch))
    # Nothing was claimed, so nothing is "outcome unknown": the retry sends them all.
    assert count_status(engine, "claimed") == 0 and count_status(engine, "failed") == 0
    for batch in batches:
        send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
    assert count_status(engine, "planned") == 0 and len(smtp_server.messages) > 0
    assert planned >= len(smtp_server.messages)


def test_messages_on_a_channel_removed_from_the_journey_are_retired_with_a_reason(shop):
    engine, _, anchor = shop
    plan_interval(engine, anchor)
    waiting = count_status(engine, "planned")
    sms_only = dataclasses.replace(LENIENT, exits=(), steps=tuple(dataclasses.replace(s, channels=("sms",))
                                                                 for s in LENIENT.steps))
    run = RunContext(SPEC.journey, "after-edit", "live", anchor, anchor + timedelta(hours=1))
    assert plan.assign_batches(engine, sms_only, run) == []
    with engine.connect() as conn:
        reasons = conn.execute(sa.text("SELECT DISTINCT reason FROM lifecycle.messages WHERE status = 'skipped' "
                                       "AND reason LIKE 'channel%'")).scalars().all()
    assert waiting > 0 and reasons == ["channel email is no longer in the journey"]
    assert count_status(engine, "planned") == 0


def count_status(engine, status: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE status = :s"),
                            {"s": status}).scalar()


def test_an_older_backfill_never_overwrites_a_newer_context(shop):
    """Runs refresh an active enrollment's context (e.g. the cart's items); a backfill of an
    earlier interval, run afterwards, must not put the older picture back."""
    engine, planted, anchor = shop
    customer = planted["cart_recent"].customer_id

    def enroll_as_of(as_of, items: int) -> None:
        run = RunContext(SPEC.journey, f"ctx-{as_of:%d%H}", "live", as_of - timedelta(hours=1), as_of)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {stage.stage_table(run)}")
            conn.execute(sa.text(
                f"CREATE TABLE {stage.stage_table(run)} AS SELECT 1::bigint AS _row, 'cart-x'::text AS cart_id, "
                "CAST(:c AS bigint) AS customer_id, CAST(:t AS timestamptz) AS cart_updated_at, "
                "CAST(:n AS int) AS item_count"), {"c": customer, "t": anchor - timedelta(days=1), "n": items})
        enroll(engine, SPEC, run)

    def context():
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT context->>'item_count', context_as_of FROM lifecycle.enrollments "
                                        "WHERE enrollment_key = 'cart-x'")).one()

    enroll_as_of(anchor - timedelta(hours=5), items=1)    # first seen
    enroll_as_of(anchor - timedelta(hours=1), items=3)    # a later run: the cart grew
    assert context() == ("3", anchor - timedelta(hours=1))
    enroll_as_of(anchor - timedelta(hours=3), items=2)    # a backfill of an earlier hour, run now
    assert context() == ("3", anchor - timedelta(hours=1))
    enroll_as_of(anchor, items=4)                         # the next live run refreshes again
    assert context() == ("4", anchor)


# --------------------------------------------------------------- errors that are not the message's
def nothing_attempted(engine) -> bool:
    """No message was claimed, sent or failed, and none used up an attempt: all left planned
    (apart from the send-time checks' suppressions and skips)."""
    with engine.connect() as conn:
        statuses, attempts = conn.execute(sa.text(
            "SELECT array_agg(DISTINCT status), sum(attempts) FROM lifecycle.messages")).one()
    return "planned" in statuses and set(statuses) <= {"planned", "suppressed", "skipped"} and attempts == 0


def test_smtp_refusing_our_sender_fails_the_task_and_leaves_the_batch_planned(shop, smtp_server):
    """A 5xx at MAIL FROM is about our account, not a recipient: nobody is failed or suppressed,
    the task fails and its retry (once the account is fixed) sends everyone once."""
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    expected = planned_recipients(engine, batches)
    smtp_server.handler.mail_reply = "553 5.7.1 Sender address rejected: account suspended"

    with pytest.raises(send.RetryBatch, match="MAIL FROM"):
        for batch in batches:
            send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
    assert nothing_attempted(engine)  # nothing claimed, failed or burnt
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lifecycle.suppressions")).scalar() == 0

    smtp_server.handler.mail_reply = None
    for batch in batches:
        send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
    assert sorted(received(smtp_server)) == sorted(expected)


@pytest.mark.parametrize("login", [("shop", "wrong-password"), None], ids=["wrong-password", "tls-refused"])
def test_smtp_auth_or_tls_failure_fails_the_task_with_nothing_claimed(shop, login):
    """AUTH refused (a real AUTH exchange) or STARTTLS not possible: the channel never opens,
    the messages stay planned for the retry."""
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    with RecordingSMTPServer(credentials=("shop", "right-password")) as server:
        def channel(name):
            if login is None:  # the server offers no STARTTLS
                return EmailChannel("127.0.0.1", server.port, starttls=True)
            return EmailChannel("127.0.0.1", server.port, login=login[0], password=login[1])

        with pytest.raises(ChannelUnavailable):
            for batch in batches:
                send.send_batch(engine, LENIENT, batch, channel, clock=at(batch))
        assert nothing_attempted(engine) and server.messages == []

        for batch in batches:  # fixed credentials: the retry sends them
            send.send_batch(engine, LENIENT, batch,
                            lambda name: EmailChannel("127.0.0.1", server.port, login="shop",
                                                      password="right-password"), clock=at(batch))
        assert server.messages and count_status(engine, "planned") == 0


def test_a_name_email_headers_cannot_carry_fails_that_message_only(shop, smtp_server):
    """reminder_1's subject shows the first name: names with characters email.policy refuses in
    a header fail their own message with the character named, before any claim; the rest go."""
    engine, _, anchor = shop
    _, batches = plan_interval(engine, anchor)
    with engine.connect() as conn:
        victims = conn.execute(sa.text(
            "SELECT m.customer_id, c.first_name FROM lifecycle.messages m "
            "JOIN shop.customers c ON c.customer_id::text = m.customer_id "  # lifecycle ids are text
            "JOIN lifecycle.consent k ON k.customer_id::text = m.customer_id AND k.channel = 'email' AND k.opted_in "
            "WHERE m.status = 'planned' AND m.step = 'reminder_1' AND NOT EXISTS (SELECT 1 FROM "
            "lifecycle.suppressions s WHERE s.customer_id = m.customer_id) ORDER BY m.message_id LIMIT 4")).all()
    assert len(victims) == 4
    breaks = ["\u2028", "\x0b", "\x1c", "\x85"]
    try:
        with engine.begin() as conn:
            for (customer_id, _), ch in zip(victims, breaks, strict=True):
                conn.execute(sa.text("UPDATE shop.customers SET first_name = :n WHERE customer_id::text = :c"),
                             {"n": f"Ann{ch}Lee", "c": customer_id})
        for batch in batches:  # no exception: the batch goes on
            send.send_batch(engine, LENIENT, batch, channel_to(smtp_server), clock=at(batch))
    finally:
        with engine.begin() as conn:
            for customer_id, name in victims:
                conn.execute(sa.text("UPDATE shop.customers SET first_name = :n WHERE customer_id::text = :c"),
                             {"n": name, "c": customer_id})
    with engine.connect() as conn:
        failed = dict(conn.execute(sa.text(
            "SELECT customer_id, reason FROM lifecycle.messages WHERE status = 'failed' "
            "AND reason LIKE 'cannot compose%'")).all())
        never_claimed = conn.execute(sa.text(
            "SELECT sum(attempts) FROM lifecycle.messages WHERE reason LIKE 'cannot compose%'")).scalar()
        unknown = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE reason LIKE 'outcome unknown%' "
                                       "OR status = 'claimed'")).scalar()
    assert failed == {c: f"cannot compose the email: Subject contains U+{ord(ch):04X}, a line break email "
                         "headers cannot carry" for (c, _), ch in zip(victims, breaks, strict=True)}
    assert never_claimed == 0 and unknown == 0 and count_status(engine, "planned") == 0
    assert len(received(smtp_server)) == count_status(engine, "sent") > 0
