"""One message per enrollment, step and channel, held by indexes on numbers (migration 026).

The unique text idempotency key `[dry:]journey:enrollment_key:step:channel` was replaced by a
unique index on (enrollment_id, step, channel), plus one primary message per step whatever the
channel (messages_one_per_step). These tests plan through the real code paths (plan.insert_messages,
send.plan_fallback) on the embedded PostgreSQL and check what the rows say.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import plan, send
from lifecycle.config import SEGMENTS_DIR
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec

JOURNEY = "win_back"


@pytest.fixture()
def enrolled(shop_db):
    """Two live win_back enrollments and a dry one with the same entry key; yields what plans."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    with engine.begin() as conn:
        ids = conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, mode, enrollment_key, customer_id, entered_at, enrolled_at, "
            "enrolled_run_id) VALUES (:j, 'live', 'c1', '1', :t, :t, 'r'), (:j, 'live', 'c2', '2', :t, :t, 'r'), "
            "(:j, 'dry', 'c1', '1', :t, :t, 'r') RETURNING enrollment_id"), {"j": JOURNEY, "t": anchor}).scalars().all()
    spec = load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql")
    yield engine, spec, anchor, ids
    reset_lifecycle(engine)


def plan_step(engine, spec, anchor, mode: str, enrollment_ids: list[int], channel: str = "email") -> dict[str, int]:
    """Plan spec's first step for the given enrollments through plan.insert_messages."""
    run = RunContext(JOURNEY, f"manual__{mode}__{channel}", mode, anchor - timedelta(days=1), anchor)
    step = spec.steps[0]
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TEMP TABLE _due ON COMMIT DROP AS "
            "SELECT enrollment_id, enrollment_key, customer_id, holdout, entered_at AS due_at, "
            "CAST(NULL AS text) AS skip_reason, CAST(:channel AS text) AS channel "
            "FROM lifecycle.enrollments WHERE enrollment_id = ANY(:ids)"), {"channel": channel, "ids": enrollment_ids})
        return plan.insert_messages(conn, spec, run, "_due", step=step.name, template=step.template,
                                    lateness=step.max_lateness)


def messages(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT enrollment_id, step, channel, mode, idempotency_key, fallback_of FROM lifecycle.messages "
            "ORDER BY message_id")).all()


def test_planning_a_step_twice_inserts_it_once_and_keys_it_as_before(enrolled):
    engine, spec, anchor, (live_1, live_2, dry_1) = enrolled
    assert plan_step(engine, spec, anchor, "live", [live_1, live_2]) == {"planned": 2}
    assert plan_step(engine, spec, anchor, "live", [live_1, live_2]) == {}  # nothing new
    assert plan_step(engine, spec, anchor, "dry", [dry_1]) == {"planned": 1}  # its own enrollment, its own row
    step = spec.steps[0].name
    rows = messages(engine)
    assert [(r.enrollment_id, r.step, r.channel) for r in rows] == [
        (live_1, step, "email"), (live_2, step, "email"), (dry_1, step, "email")]
    # the idempotency key still names the message: the Message-ID and providers' keys come from it
    assert [r.idempotency_key for r in rows] == [
        f"{JOURNEY}:c1:{step}:email", f"{JOURNEY}:c2:{step}:email", f"dry:{JOURNEY}:c1:{step}:email"]


def test_a_second_channel_for_a_planned_step_is_refused_unless_it_is_a_fallback(enrolled):
    engine, spec, anchor, (live_1, _, _) = enrolled
    plan_step(engine, spec, anchor, "live", [live_1], channel="email")
    # the same step again on another channel, as a primary message: one per step whatever the channel
    assert plan_step(engine, spec, anchor, "live", [live_1], channel="sms") == {}
    (email,) = messages(engine)
    with engine.begin() as conn:
        first = conn.execute(sa.text("SELECT message_id FROM lifecycle.messages")).scalar_one()
        send.plan_fallback(conn, first, "sms", "no mailbox")
        send.plan_fallback(conn, first, "sms", "no mailbox")  # a retried send task: still one fallback
        send.plan_fallback(conn, first, "email", "loop")  # back to the step's own channel: it exists
    rows = messages(engine)
    assert [(r.channel, r.fallback_of) for r in rows] == [("email", None), ("sms", first)]
    assert rows[1].idempotency_key == email.idempotency_key.removesuffix(":email") + ":sms"


def test_the_same_step_and_channel_is_refused_even_under_another_key(enrolled):
    """The rule is the row's (enrollment, step, channel), not the text of its key: a writer that
    spelled the key differently still cannot send the step twice."""
    engine, spec, anchor, (live_1, _, _) = enrolled
    plan_step(engine, spec, anchor, "live", [live_1])
    step = spec.steps[0].name
    with engine.begin() as conn:
        inserted = conn.execute(sa.text(
            "INSERT INTO lifecycle.messages (idempotency_key, journey, mode, enrollment_id, customer_id, step, "
            "channel, status, due_at, planned_for, planned_run_id, fallback_of) "
            "SELECT 'another:spelling', journey, mode, enrollment_id, customer_id, step, channel, 'planned', "
            "due_at, planned_for, planned_run_id, message_id FROM lifecycle.messages "
            "ON CONFLICT DO NOTHING")).rowcount
    assert inserted == 0
    assert [(r.enrollment_id, r.step, r.channel) for r in messages(engine)] == [(live_1, step, "email")]
