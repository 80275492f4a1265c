"""Task logs an operator can read (issue 10 item 13), captured from real `dag.test()` runs:
one summary line per task, no Great Expectations noise, reasons grouped by a stable code."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest
import sqlalchemy as sa
import test_dags

from lifecycle.tasklog import reason_code

slow = pytest.mark.slow  # runs DAGs through Airflow (dag.test)
meta_server = test_dags.meta_server  # the fixtures test_dags' runs use, shared rather than copied
airflow_env = test_dags.airflow_env


def lines(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@slow
def test_each_task_logs_one_summary_line_and_great_expectations_stays_quiet(airflow_env, caplog):
    engine, planted, anchor, smtp, bag = airflow_env
    caplog.set_level(logging.INFO)  # Airflow's default task log level
    assert bag.dags["cart_abandonment"].test(logical_date=anchor).state == "success"

    ours = lines(caplog, "lifecycle.dag_factory")
    with engine.connect() as conn:
        run = conn.execute(sa.text("SELECT run_id, rows_selected, rows_valid, rows_quarantined FROM lifecycle.runs "
                                   "WHERE journey = 'cart_abandonment' ORDER BY started_at DESC, run_id LIMIT 1")).one()
        statuses = dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM lifecycle.messages WHERE run_id = :r AND channel = 'email' "
            "AND batch_no = 0 GROUP BY status"), {"r": run.run_id}).all())
        late = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE planned_run_id = :r "
                                    "AND status = 'expired' AND reason LIKE 'late: %'"), {"r": run.run_id}).scalar()
    assert late > 0, "the demo shop has carts whose reminders are too late to send"
    assert (f"selected {run.rows_selected}, valid {run.rows_valid}, "
            f"quarantined {run.rows_quarantined}, held no") in ours
    assert any(re.fullmatch(r"segment selected \d+ rows", m) for m in ours)
    (plan,) = [m for m in ours if m.startswith("planned ")]
    assert plan.startswith(f"planned {sum(statuses.values())} messages to send: email {sum(statuses.values())} "
                           "in 1 batch;") and f"expired {late} (late {late})" in plan, plan
    (batch,) = [m for m in ours if m.startswith("batch ")]
    assert batch.startswith(f"batch 1/1 (email): {sum(statuses.values())} messages: sent {statuses['sent']}")
    assert statuses["sent"] == len(smtp.messages) > 0
    assert any(m.startswith("run ok: interval ") and m.endswith(f"messages: expired {late}, sent {statuses['sent']}, "
                                                                 f"suppressed {statuses.get('suppressed', 0)}")
               for m in ours), ours

    gx = [r for r in caplog.records if r.name.startswith("great_expectations")]
    assert gx == [], f"{len(gx)} Great Expectations lines, e.g. {gx[0].name}: {gx[0].getMessage()}"


@slow
def test_a_batch_line_groups_what_was_not_sent_by_reason_code(airflow_env, caplog):
    engine, planted, anchor, smtp, bag = airflow_env
    caplog.set_level(logging.INFO)
    assert bag.dags["win_back"].test(logical_date=anchor).state == "success"

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT channel, batch_no, status, reason FROM lifecycle.messages WHERE journey = 'win_back' "
            "AND run_id IS NOT NULL AND status <> 'sent'")).all()
    assert rows, "the demo shop plants win_back customers who are not mailed"
    batches = {m for m in lines(caplog, "lifecycle.dag_factory") if m.startswith("batch ")}
    for (channel, batch_no, status), codes in _codes(rows).items():
        line = next(m for m in batches if m.startswith(f"batch {batch_no + 1}/") and f"({channel})" in m)
        expected = ", ".join(f"{c} {n}" for c, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])))
        assert f"{status} {sum(codes.values())} ({expected})" in line, line


def _codes(rows) -> dict:
    grouped: dict = {}
    for channel, batch_no, status, reason in rows:
        grouped.setdefault((channel, batch_no, status), Counter())[reason_code(reason)] += 1
    return grouped


@pytest.mark.parametrize(("reason", "code"), [
    ("late: not sent by 2026-11-20 10:00 UTC (due 2026-11-19 10:00)", "late"),
    ("frequency cap: at most 1 marketing email per 1d per customer", "frequency cap"),
    ("suppressed: unsubscribed", "unsubscribed"),
    ("no consent", "no consent"),
    ("enrollment converted (placed_order)", "enrollment converted"),
    ("outcome unknown: the attempt that claimed it died before confirming", "outcome unknown"),
    ("failed after retries: SMTP 451 try later", "failed after retries"),
    ("hard bounce: SMTP RCPT 550 5.1.1 no such user", "hard bounce"),
    ("push service HTTP 503 (retry-after 30)", "push service HTTP"),
    ("push service https://push.example.net redirected the request", "push service redirected the request"),
    ("subscription gone (410)", "subscription gone"),
    (None, "no reason"),
])
def test_reason_codes_drop_the_detail_that_differs_per_message(reason, code):
    assert reason_code(reason) == code


def test_the_demo_prints_a_progress_line_per_journey_while_it_runs(capsys):
    from lifecycle_demo.cli import PROGRESS_EVERY, demo_progress

    clock = iter([1.0, PROGRESS_EVERY + 2.0, PROGRESS_EVERY + 3.0, 2 * PROGRESS_EVERY + 4.0, 99.0])
    last = t0 = 0.0
    for done in range(1, 6):
        last = demo_progress("cart_abandonment", done, 5, t0, last, now=lambda: next(clock))
    assert capsys.readouterr().out.splitlines() == [
        f"  cart_abandonment         2/5 runs  ({PROGRESS_EVERY + 2:.0f}s)",
        f"  cart_abandonment         4/5 runs  ({2 * PROGRESS_EVERY + 4:.0f}s)",
    ]  # the fifth run is the journey's own final line


@slow
def test_the_dispatcher_says_how_many_waiting_messages_it_found(airflow_env, caplog):
    engine, planted, anchor, smtp, bag = airflow_env
    caplog.set_level(logging.INFO)
    assert bag.dags["lifecycle_dispatch"].test(logical_date=anchor).state == "success"
    assert "waiting or left behind: 0 messages to send" in lines(caplog, "lifecycle.dag_factory")
