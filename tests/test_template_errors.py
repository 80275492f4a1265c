"""A template that does not render never burns a message (issue 10 item 2).

Nothing was delivered, so the message stays `planned` (its reason says it waits for a template
fix), the rest of the batch goes out, and the send task fails with the template's file, line and
error. Once the template is fixed, the retry Airflow runs sends it, once. Real PostgreSQL, a real
SMTP server, the cart_abandonment journey planned by the engine itself.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle
from test_guarantees import LENIENT, channel_to, plan_interval

from lifecycle import send


def by_step(engine) -> dict[str, list[tuple[str, str | None]]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT step, status, reason FROM lifecycle.messages ORDER BY message_id")).all()
    steps: dict[str, list] = {}
    for step, status, reason in rows:
        steps.setdefault(step, []).append((status, reason))
    return steps


def test_a_broken_template_leaves_its_messages_planned_and_a_retry_after_the_fix_sends_them(
        shop_db, smtp_server, templates):
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    _, batches = plan_interval(engine, anchor)
    planned = by_step(engine)
    assert len(planned) >= 2, planned  # a broken step and at least one other
    broken_step = max(planned, key=lambda s: len(planned[s]))
    html = templates / f"cart_abandonment/{broken_step}.html"
    good = html.read_text()
    lines = good.splitlines()
    lines[3] = lines[3] + " {% if customer.first_name %} unclosed"  # a Jinja syntax error on line 4
    html.write_text("\n".join(lines) + "\n")

    def send_all():
        for batch in batches:
            send.send_batch(engine, LENIENT, batch, channel_to(smtp_server),
                            clock=lambda b=batch: datetime.fromisoformat(b["as_of"]))

    with pytest.raises(send.TemplateBroken) as failed:
        send_all()
    # The task's error names the template, the file and the line.
    assert f"cart_abandonment/{broken_step}.html, line" in str(failed.value)
    assert "left planned" in str(failed.value)
    after = by_step(engine)
    waiting = [reason for status, reason in after[broken_step] if status == "planned"]
    assert waiting and {status for status, _ in after[broken_step]} <= {"planned", "suppressed", "skipped"}
    assert all(reason.startswith("waiting for a template fix: template cart_abandonment/") for reason in waiting)
    sent_others = sum(status == "sent" for step, v in after.items() if step != broken_step for status, _ in v)
    assert len(smtp_server.messages) == sent_others > 0  # the rest of the batch went out

    html.write_text(good)  # the analyst fixes the template; Airflow retries the task
    send_all()

    final = by_step(engine)
    assert sum(status == "sent" for status, _ in final[broken_step]) == len(waiting)
    assert len(smtp_server.messages) == sent_others + len(waiting)  # each once
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE status IN ('planned', 'failed')"))
        assert left.scalar() == 0
