"""The send task's window statements read the window's rows, never the batch's or the table's.

A batch's messages share one claim token. The statement that records a window's outcomes used to
be planned from the token (estimated at one row by the statistics, which had seen no token):
a scan of every row holding it, joined to the window in a nested loop, so each window read all
the windows claimed before it (70 ms per window at 1,000 messages under load; quadratic in the
batch). Both statements now reach their rows through the primary key. EXPLAIN ANALYZE runs them
the way the send task does, late in a batch, on statistics taken before any claim.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import send
from lifecycle.channels.base import Outcome

MESSAGES, WINDOW = 1_000, 50
AT = datetime(2026, 11, 20, 12, tzinfo=UTC)


def plant_batch(conn) -> list[int]:
    """MESSAGES planned emails in one batch, the statistics taken before any was claimed."""
    conn.execute(sa.text(
        "WITH e AS (INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
        "enrolled_run_id) SELECT 'cart_abandonment', 'windows-' || i, i, :t, :t, 'r' FROM generate_series(1, :n) i "
        "RETURNING enrollment_id, customer_id) "
        "INSERT INTO lifecycle.messages (idempotency_key, journey, enrollment_id, customer_id, step, channel, template, "
        "kind, status, due_at, planned_for, planned_run_id, run_id, batch_no) "
        "SELECT 'windows:' || e.enrollment_id, 'cart_abandonment', e.enrollment_id, e.customer_id, 'reminder_1', "
        "'email', 'cart_abandonment/reminder_1', 'marketing', 'planned', :t, :t, 'r', 'r', 0 FROM e"),
        {"n": MESSAGES, "t": AT})
    conn.exec_driver_sql("ANALYZE lifecycle.messages")
    return conn.execute(sa.text("SELECT message_id FROM lifecycle.messages WHERE idempotency_key LIKE 'windows:%' "
                                "ORDER BY message_id")).scalars().all()


def rows_read_from_messages(plan: dict) -> int:
    """The most rows any one node of the plan read from lifecycle.messages (kept and filtered out,
    over all its loops)."""
    most = 0
    if plan.get("Relation Name") == "messages":
        most = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get("Actual Loops", 1)
    return max([most, *(rows_read_from_messages(child) for child in plan.get("Plans", []))])


def explained(conn, sql: str, params: dict) -> dict:
    (document,) = conn.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql), params).scalar_one()
    return document if isinstance(document, dict) else json.loads(document)[0]


class Row:
    def __init__(self, message_id: int):
        self.message_id = message_id


def test_claim_and_record_read_only_the_window_late_in_a_batch(empty_shop):
    token = secrets.token_hex(8)
    with empty_shop.connect() as conn, conn.begin() as transaction:  # rolled back: the shop stays empty
        ids = plant_batch(conn)
        windows = [ids[start:start + WINDOW] for start in range(0, len(ids), WINDOW)]
        for window in windows[:-2]:  # most of the batch claimed and recorded with the batch's token
            send._claim(conn, window, token)
        late, last = windows[-3], windows[-2]
        record = explained(conn, send.MARK_WINDOW_SQL, {
            "ids": late, "outcomes": ["sent"] * WINDOW, "reasons": [None] * WINDOW, "pids": ["p"] * WINDOW,
            "details": ["{}"] * WINDOW, "token": token, "sent_at": AT, "max_attempts": send.MAX_ATTEMPTS})
        claim = explained(conn, send.CLAIM_WINDOW_SQL, {"ids": last, "token": token, "mids": [None] * WINDOW})
        both = explained(conn, send.RECORD_AND_CLAIM_SQL, {  # what the send loop runs between two windows
            **send._mark_binds(token, [(Row(i), Outcome("sent"), None) for i in last], AT),
            "claim_ids": windows[-1], "claim_mids": [None] * WINDOW})
        statuses = conn.execute(sa.text("SELECT status, count(*) FROM lifecycle.messages GROUP BY status")).all()
        transaction.rollback()
    assert dict(statuses) == {"claimed": MESSAGES - 2 * WINDOW, "sent": 2 * WINDOW}
    for plan in (record, claim, both):
        assert rows_read_from_messages(plan["Plan"]) <= 2 * WINDOW, json.dumps(plan["Plan"], indent=1)


def test_a_window_whose_channel_cannot_open_is_left_planned_not_claimed(empty_shop, smtp_server):
    """The next window is claimed together with the outcomes of the one before only once its
    channels are open: a channel that cannot be configured (here SMS, mid-batch) fails the task
    with that window still planned, not claimed (which the retry would record `outcome unknown`)."""
    from lifecycle.channels.email import EmailChannel, OutboundEmail
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.spec import load_spec

    def channel_for(name: str):
        if name == "sms":
            raise ValueError("Airflow connection 'lifecycle_sms' is not defined")
        return EmailChannel("127.0.0.1", smtp_server.port)

    with empty_shop.begin() as conn:
        ids = plant_batch(conn)[:4]
        conn.execute(sa.text("UPDATE lifecycle.messages SET channel = 'sms' WHERE message_id = ANY(:ids)"),
                     {"ids": ids[2:]})
        rows = conn.execute(sa.text("SELECT message_id, channel, customer_id, journey, step FROM lifecycle.messages "
                                    "WHERE message_id = ANY(:ids) ORDER BY message_id"), {"ids": ids}).all()
    try:
        email = [OutboundEmail(to=f"c{r.message_id}@example.com", subject="Hi", text="x\n", html="<p>x</p>",
                               message_id=f"<{r.message_id}@x>") for r in rows]
        windows = [list(zip(rows[:2], email[:2], strict=True)), list(zip(rows[2:], email[2:], strict=True))]
        spec = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
        with pytest.raises(ValueError, match="lifecycle_sms"):
            send.send_rendered(empty_shop, spec, windows, channel_for, clock=lambda: AT)
        with empty_shop.connect() as conn:
            statuses = dict(conn.execute(sa.text("SELECT message_id, status FROM lifecycle.messages "
                                                 "WHERE message_id = ANY(:ids)"), {"ids": ids}).all())
    finally:
        reset_lifecycle(empty_shop)
    assert [statuses[i] for i in ids] == ["sent", "sent", "planned", "planned"]
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == [f"c{i}@example.com" for i in ids[:2]]
