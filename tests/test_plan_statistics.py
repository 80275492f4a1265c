"""Planning stays linear when lifecycle.messages has stale statistics.

Autovacuum off on lifecycle.messages, its statistics taken while it held only another journey's
sent messages, then many open win_back messages (left behind by a run that died) added without
ANALYZE: the planner's estimates for open rows are then wrong, as on a daily journey's first day
in production (the pre-fix numbered-subquery UPDATE in assign_batches took a nested loop that
re-ran the numbering per row: minutes at 22k messages). Every statement the plan step runs (plan_due_steps and
assign_batches) is EXPLAINed just before it runs, on the same connection and with the same
parameters, and no plan may take a nested loop that re-scans lifecycle.messages per outer row.
An index lookup on the inner side is fine: it reads the rows that match, not the table.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import plan, run_audit, stage, validate
from lifecycle.config import SEGMENTS_DIR
from lifecycle.enroll import enroll
from lifecycle.exits import evaluate_exits
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec

FILLER = 30_000  # open messages the statistics do not know about
EXPLAINABLE = ("insert", "update", "delete", "select", "with", "create temp table")
OUTER_COLUMN = re.compile(r"\b[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\b")


def insert_filler(conn, journey: str, status: str, n: int, at) -> None:
    """n (completed) enrollments of `journey`, each with one message in `status`."""
    conn.execute(sa.text(
        "WITH e AS (INSERT INTO lifecycle.enrollments (journey, mode, enrollment_key, customer_id, entered_at, "
        "enrolled_at, enrolled_run_id, status) SELECT :j, 'live', 'filler:' || i, i, :t, :t, 'filler', 'completed' "
        "FROM generate_series(1, :n) i RETURNING enrollment_id, customer_id) "
        "INSERT INTO lifecycle.messages (idempotency_key, journey, mode, enrollment_id, customer_id, step, "
        "channel, status, due_at, planned_for, planned_run_id) "
        "SELECT :j || ':filler:' || e.enrollment_id, :j, 'live', e.enrollment_id, e.customer_id, 'email_1', "
        "'email', :s, :t, :t, 'filler' FROM e"), {"j": journey, "s": status, "t": at, "n": n})


@pytest.fixture()
def stale_messages(shop_db):
    """lifecycle.messages analysed while it held only sent messages of another journey, then
    FILLER open win_back messages (left behind by an earlier run) added without ANALYZE."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.messages SET (autovacuum_enabled = off)")
        insert_filler(conn, "cart_abandonment", "sent", 2_000, anchor - timedelta(days=30))
        conn.exec_driver_sql("ANALYZE lifecycle.messages")
        insert_filler(conn, "win_back", "planned", FILLER, anchor - timedelta(days=30))
    yield engine, anchor
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.messages RESET (autovacuum_enabled)")
    reset_lifecycle(engine)


class NestedRescan(AssertionError):
    pass


def refuse_nested_rescans(conn, cursor, statement, parameters, context, executemany):
    """before_cursor_execute listener: EXPLAIN each query/DML statement on its cursor just before
    it runs, and stop it (it could run for minutes) if its plan re-scans lifecycle.messages."""
    code = "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))
    if executemany or not code.lstrip().lower().startswith(EXPLAINABLE):
        return
    cursor.execute("EXPLAIN (FORMAT JSON) " + code, parameters)
    tree = cursor.fetchone()[0][0]["Plan"]
    if rescans := nested_rescans_of_messages(tree):
        raise NestedRescan(f"{code.strip()}\n-> {rescans}\n{_outline(tree)}")


def nested_rescans_of_messages(node: dict) -> list[str]:
    """Nested Loop nodes whose inner side re-reads lifecycle.messages (whole, or a subquery over it)."""
    found = []
    if node["Node Type"] == "Nested Loop":
        inner = next(p for p in node["Plans"] if p.get("Parent Relationship") == "Inner")
        if _rescans_messages(inner):
            found.append(_outline(inner))
    for child in node.get("Plans", []):
        found += nested_rescans_of_messages(child)
    return found


def _rescans_messages(node: dict) -> bool:
    if node.get("Relation Name") == "messages" and not _lookup(node):
        return True
    return any(_rescans_messages(child) for child in node.get("Plans", []))


def _lookup(scan: dict) -> bool:
    """An index scan keyed by the outer row: its condition names another relation's column
    (the scanned table's own columns appear unqualified)."""
    conds = [scan.get("Index Cond", ""), *(c.get("Index Cond", "") for c in scan.get("Plans", []))]
    return any(OUTER_COLUMN.search(c) for c in conds)


def _outline(node: dict, depth: int = 0) -> str:
    scan = f" on {node['Relation Name']} {node.get('Index Name', '')} {node.get('Index Cond', '')}".rstrip()
    line = "  " * depth + node["Node Type"] + (scan if "Relation Name" in node else "") + f" rows={node['Plan Rows']}"
    return "\n".join([line, *(_outline(c, depth + 1) for c in node.get("Plans", []))])


def test_no_plan_step_nests_a_loop_over_messages_with_stale_statistics(stale_messages):
    engine, anchor = stale_messages
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run = RunContext(spec.journey, "cold", "live", anchor - timedelta(days=1), anchor)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    validate.validate_stage(engine, spec, run, approve_volume=True)
    enroll(engine, spec, run)
    evaluate_exits(engine, spec, run)

    sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans)
    try:
        plan.plan_due_steps(engine, spec, run)
        batches = plan.assign_batches(engine, spec, run)
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans)
    assert batches, "the cold day plans win-back emails"
