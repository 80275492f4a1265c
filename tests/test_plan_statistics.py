"""Planning stays linear when the lifecycle tables have stale statistics.

Autovacuum off on lifecycle.messages, its statistics taken while it held only another journey's
sent messages, then many open win_back messages (left behind by a run that died) added without
ANALYZE: the planner's estimates for open rows are then wrong, as on a daily journey's first day
in production (the pre-fix numbered-subquery UPDATE in assign_batches took a nested loop that
re-ran the numbering per row: minutes at 22k messages). Every statement the plan step runs (plan_due_steps and
assign_batches) is EXPLAINed just before it runs, on the same connection and with the same
parameters. Likewise the exit conditions, over many fresh active enrollments that the statistics
of lifecycle.enrollments do not know about (before: the conditions' `enrollments` CTE estimated at
one row and joined to itself in a nested loop, 68-255 s at 100k customers).

No plan may run a part once per row of another (the inner side of a nested loop, a correlated
subplan) that reads a growing table, a temp table made from one, or a CTE over one, whole. An
index lookup keyed by the outer row is fine: it reads the rows that match, not the table.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import plan, run_audit, stage, suppression
from lifecycle.conditions import materialise_condition
from lifecycle.config import SEGMENTS_DIR
from lifecycle.enroll import enroll
from lifecycle.exits import ACTIVE_ENROLLMENTS, evaluate_exits
from lifecycle.ids import typed_enrollments
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec

FILLER = 30_000  # open messages the statistics do not know about
EXPLAINABLE = ("insert", "update", "delete", "select", "with", "create temp table")
# Tables (and the temp tables made from them) that grow with the shop and the journeys' history:
# read whole once per row of something else, they make a step quadratic.
GROWING = {"messages", "enrollments", "coupons", "conversions", "quarantine", "orders", "order_items", "carts",
           "cart_items", "page_views", "customers", "engagement_events", "engagement",
           "_condition_enrollments", "_due", "_exit_hits", "_cond_hits", "_exit_msgs"}
CREATE_WITHOUT_QUERY = re.compile(r"(?i)create temp table \w+ \(")  # column list, nothing to plan
LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
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


def make_messages_stale(engine, anchor) -> None:
    """lifecycle.messages analysed while it held only sent messages of another journey, then
    FILLER open win_back messages (left behind by an earlier run) added without ANALYZE. Done
    after the run's stage step, which would analyse them (lifecycle.statistics)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.messages SET (autovacuum_enabled = off)")
        insert_filler(conn, "cart_abandonment", "sent", 2_000, anchor - timedelta(days=30))
        conn.exec_driver_sql("ANALYZE lifecycle.messages")
        insert_filler(conn, "win_back", "planned", FILLER, anchor - timedelta(days=30))


@pytest.fixture()
def stale_messages(shop_db):
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    yield engine, anchor
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.messages RESET (autovacuum_enabled)")
    reset_lifecycle(engine)


class NestedRescan(AssertionError):
    pass


def refuse_nested_rescans(conn, cursor, statement, parameters, context, executemany):
    """before_cursor_execute listener: EXPLAIN each query/DML statement on its cursor just before
    it runs, and stop it (it could run for minutes) if its plan re-scans a table per row."""
    code = LEADING_COMMENTS.sub("", statement)
    if executemany or not code.lower().startswith(EXPLAINABLE) or CREATE_WITHOUT_QUERY.match(code):
        return
    cursor.execute("EXPLAIN (FORMAT JSON) " + code, parameters)
    tree = cursor.fetchone()[0][0]["Plan"]
    if rescans := per_row_rescans(tree, _ctes_reading_tables(tree)):
        raise NestedRescan(f"{code.strip()}\n-> {rescans}\n{_outline(tree)}")


def per_row_rescans(node: dict, table_ctes: set[str]) -> list[str]:
    """Parts of the plan run once per row of another part (the inner side of a Nested Loop, a
    correlated SubPlan) that read a table, a temp table or a CTE over one whole, not by lookup."""
    found = []
    if node["Node Type"] == "Nested Loop":
        inner = next(p for p in node["Plans"] if p.get("Parent Relationship") == "Inner")
        if _rescans(inner, table_ctes):
            found.append(_outline(inner))
    for child in node.get("Plans", []):
        if child.get("Parent Relationship") == "SubPlan" and not _hashed(node, child) and _rescans(child, table_ctes):
            found.append(_outline(child))
        found += per_row_rescans(child, table_ctes)
    return found


def _hashed(parent: dict, subplan: dict) -> bool:
    """A hashed SubPlan (`x NOT IN (SELECT ...)` that fits in memory) runs once and is probed per
    row: its parent's conditions name it `hashed SubPlan n`."""
    conditions = " ".join(str(v) for k, v in parent.items() if k != "Plans")
    return f"hashed {subplan.get('Subplan Name', '?')}" in conditions


def _ctes_reading_tables(node: dict) -> set[str]:
    """CTEs (InitPlans named `CTE x`) whose plan reads a growing table whole: rescanning one re-reads
    its rows."""
    found = set()
    for child in node.get("Plans", []):
        name = child.get("Subplan Name", "")
        if name.startswith("CTE ") and _rescans(child, found, whole=True):
            found.add(name[4:])
        found |= _ctes_reading_tables(child)
    return found


def _rescans(node: dict, table_ctes: set[str], whole: bool = False) -> bool:
    if node.get("Parent Relationship") == "InitPlan" and not whole:  # runs once, whatever the loop around it
        return False
    if node.get("Relation Name") in GROWING and not _lookup(node):
        return True
    if node["Node Type"] == "CTE Scan" and node.get("CTE Name") in table_ctes:
        return True
    return any(_rescans(child, table_ctes, whole) for child in node.get("Plans", []))


def _lookup(scan: dict) -> bool:
    """An index scan keyed by the outer row: its condition names another relation's column
    (the scanned table's own columns appear unqualified)."""
    conds = [scan.get("Index Cond", ""), *(c.get("Index Cond", "") for c in scan.get("Plans", []))]
    return any(OUTER_COLUMN.search(c) for c in conds)


def _outline(node: dict, depth: int = 0) -> str:
    if "Relation Name" in node:
        what = f" on {node['Relation Name']} {node.get('Index Name', '')} {node.get('Index Cond', '')}".rstrip()
    else:
        what = f" of {node['CTE Name']}" if "CTE Name" in node else ""
    line = "  " * depth + node["Node Type"] + what + f" rows={node['Plan Rows']}"
    return "\n".join([line, *(_outline(c, depth + 1) for c in node.get("Plans", []))])


def test_no_plan_step_nests_a_loop_over_messages_with_stale_statistics(stale_messages):
    engine, anchor = stale_messages
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run = RunContext(spec.journey, "cold", "live", anchor - timedelta(days=1), anchor)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    enroll(engine, spec, run)  # (validation left out: it quarantines nothing here and costs its import)
    evaluate_exits(engine, spec, run)
    make_messages_stale(engine, anchor)

    sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans)
    try:
        plan.plan_due_steps(engine, spec, run)
        batches = plan.assign_batches(engine, spec, run)
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans)
    assert batches, "the cold day plans win-back emails"


@pytest.fixture()
def stale_enrollments(shop_db):
    """lifecycle.enrollments analysed while it held only another journey's completed
    enrollments, then FILLER active win_back enrollments added without ANALYZE (a big first day:
    the planner estimates the journey's active enrollments at a row or so)."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.enrollments SET (autovacuum_enabled = off)")
        insert_filler(conn, "cart_abandonment", "sent", 2_000, anchor - timedelta(days=30))
        conn.exec_driver_sql("ANALYZE lifecycle.enrollments")
        conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, mode, enrollment_key, customer_id, entered_at, enrolled_at, "
            "enrolled_run_id, context) SELECT 'win_back', 'live', 'filler:' || i, i % 600 + 1, :t, :t, 'filler', "
            "jsonb_build_object('last_order_id', i) FROM generate_series(1, :n) i"),
            {"t": anchor - timedelta(days=2), "n": FILLER})
    yield engine, anchor
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.enrollments RESET (autovacuum_enabled)")
    reset_lifecycle(engine)


def test_no_exit_condition_nests_a_loop_over_enrollments_with_stale_statistics(stale_enrollments):
    """win_back's exits (purchased_since_entry reads `enrollments` twice, chose_to_stay once) over
    FILLER fresh active enrollments: before, the CTE over them was estimated at one row and joined
    to itself in a nested loop (68-255 s at 100k customers)."""
    engine, anchor = stale_enrollments
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run = RunContext(spec.journey, "exits", "live", anchor - timedelta(days=1), anchor)
    run_audit.start_run(engine, run)
    sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans)
    try:
        exits = evaluate_exits(engine, spec, run)
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans)
    assert exits["purchased_since_entry"] > 0, "filler customers who ordered in the last two days convert"


@pytest.fixture()
def stale_sunsets(shop_db):
    """lifecycle.suppressions and lifecycle.engagement analysed while empty, then FILLER sunsets,
    each customer with a sent message and a human click on it after the sunset began (our own
    tracking), added without ANALYZE: the planner thinks both tables hold a row or so."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    tables = ("suppressions", "engagement")
    with engine.begin() as conn:
        for table in tables:
            conn.exec_driver_sql(f"ALTER TABLE lifecycle.{table} SET (autovacuum_enabled = off)")
        conn.exec_driver_sql("ANALYZE lifecycle.suppressions, lifecycle.engagement")
        insert_filler(conn, "win_back", "sent", FILLER, anchor - timedelta(days=30))
        conn.execute(sa.text(
            "INSERT INTO lifecycle.engagement (message_id, journey, step, channel, customer_id, kind, url, occurred_at) "
            "SELECT message_id, journey, step, channel, customer_id, 'click', 'https://shop.example.com/', :t "
            "FROM lifecycle.messages WHERE journey = 'win_back'"), {"t": anchor - timedelta(days=5)})
        conn.execute(sa.text(
            "INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source, since) "
            "SELECT DISTINCT customer_id, 'email', 'no_response', 'win_back', :t FROM lifecycle.messages "
            "WHERE journey = 'win_back'"), {"t": anchor - timedelta(days=10)})
    yield engine, anchor
    with engine.begin() as conn:
        for table in tables:
            conn.exec_driver_sql(f"ALTER TABLE lifecycle.{table} RESET (autovacuum_enabled)")
        conn.exec_driver_sql("TRUNCATE lifecycle.engagement")
    reset_lifecycle(engine)


def test_lifting_sunsets_on_tracked_clicks_never_nests_a_loop_over_them(stale_sunsets):
    """lift_sunsets (start of planning: every sunset; each send batch: its recipients) finds each
    sunset's first human click of our own (lifecycle.engagement) by customer and channel: with
    statistics that know neither table's rows, by an index lookup per sunset (index
    engagement_human_clicks), never a scan of every click per sunset (a plain join's plan here)."""
    engine, anchor = stale_sunsets
    sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans)
    try:
        with engine.begin() as conn:
            batch = [str(c) for c in range(1, 501)]
            assert suppression.lift_sunsets(conn, anchor, batch) == 500
        with engine.begin() as conn:
            assert suppression.lift_sunsets(conn, anchor) == FILLER - 500
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans)
    with engine.connect() as conn:
        why = dict(conn.execute(sa.text(
            "SELECT CASE WHEN lifted_ref LIKE 'message %' THEN lifted_reason || ' message' ELSE lifted_reason END, "
            "count(*) FROM lifecycle.suppressions GROUP BY 1")).all())
    # (a few of the demo's customers ordered before their click)
    assert why["clicked message"] > FILLER * 0.9 and set(why) <= {"clicked message", "ordered"}


def test_conditions_on_tracked_engagement_never_nest_a_loop_over_it(stale_enrollments):
    """opened_or_clicked_first_email (birthday's follow_up) over FILLER fresh enrollments, each
    with a first email and a human open of it, none of which the statistics know about: the
    engine's engagement_since_entry CTE (tracked opens by message, provider events by customer)
    reads neither table once per enrollment."""
    engine, anchor = stale_enrollments
    with engine.begin() as conn:  # lifecycle.engagement analysed while empty, then rows it does not know of
        conn.exec_driver_sql("ALTER TABLE lifecycle.engagement SET (autovacuum_enabled = off)")
        conn.exec_driver_sql("ANALYZE lifecycle.engagement")
        conn.execute(sa.text(
            "WITH m AS (INSERT INTO lifecycle.messages (idempotency_key, journey, mode, enrollment_id, customer_id, "
            "step, channel, status, due_at, planned_for, planned_run_id) SELECT 'probe:' || enrollment_id, journey, "
            "mode, enrollment_id, customer_id, 'email', 'email', 'sent', entered_at, entered_at, 'filler' "
            "FROM lifecycle.enrollments WHERE journey = 'win_back' AND status = 'active' "
            "RETURNING message_id, journey, mode, step, channel, customer_id, due_at) "
            "INSERT INTO lifecycle.engagement (message_id, journey, mode, step, channel, customer_id, kind, occurred_at) "
            "SELECT message_id, journey, mode, step, channel, customer_id, 'open', due_at + interval '1 hour' FROM m"))
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run = RunContext(spec.journey, "cond", "live", anchor - timedelta(days=1), anchor)
    sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans)
    try:
        with engine.begin() as conn:
            scope = typed_enrollments(conn, ACTIVE_ENROLLMENTS)
            materialise_condition(conn, "opened_or_clicked_first_email", scope, run.binds(spec), "_cond_hits")
            hits = conn.execute(sa.text("SELECT count(*) FROM _cond_hits")).scalar_one()
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans)
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE lifecycle.engagement RESET (autovacuum_enabled)")
    assert hits == FILLER


def enrollment_updates(engine) -> tuple[int, int]:
    """(updates, of which HOT) of lifecycle.enrollments so far, this backend's pending counts flushed."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return tuple(conn.execute(sa.text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = 'lifecycle' AND relname = 'enrollments'")).one())


def staged_and_enrolled(engine, spec, label: str, end, every: timedelta) -> tuple[RunContext, dict]:
    """A run of `spec` for the interval `every` up to `end`, started, staged and enrolled (validation
    left out: it quarantines nothing here and costs its import); its RunContext and enroll's counts."""
    run = RunContext(spec.journey, label, "live", end - every, end)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    return run, enroll(engine, spec, run)


def test_a_first_day_writes_each_new_enrollment_once(shop_db):
    """The enrollment INSERT already carries the current and next step this run's plan gives each
    new enrollment, so planning rewrites none of them: the advance reads them and finds nothing to
    change (before, it rewrote every new enrollment right after it was inserted, a HOT update each).
    Each message and its coupon name the enrollment they were planned for."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run, enrolled = staged_and_enrolled(engine, spec, "cold", anchor, timedelta(days=1))
    entered = enrolled["entered"]
    before = enrollment_updates(engine)
    plan.plan_due_steps(engine, spec, run)
    updated, _ = (after - b for after, b in zip(enrollment_updates(engine), before, strict=True))
    with engine.connect() as conn:
        advanced = conn.execute(sa.text("SELECT count(*) FROM lifecycle.enrollments WHERE journey = 'win_back' "
                                        "AND current_step = 'email_1' AND next_step = 'email_2' "
                                        "AND next_due_at = entered_at + interval '7 days'")).scalar_one()
        # what the advance would record from each enrollment's messages: the latest step planned
        as_planned = conn.execute(sa.text(
            "SELECT count(*) FROM lifecycle.enrollments e WHERE e.journey = 'win_back' AND e.current_step = "
            "(SELECT m.step FROM lifecycle.messages m WHERE m.enrollment_id = e.enrollment_id "
            " ORDER BY m.due_at DESC, m.message_id DESC LIMIT 1)")).scalar_one()
        orphans = conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM lifecycle.messages m WHERE NOT EXISTS (SELECT 1 FROM lifecycle.enrollments e "
            "WHERE e.enrollment_id = m.enrollment_id AND e.journey = m.journey AND e.customer_id = m.customer_id)), "
            "(SELECT count(*) FROM lifecycle.coupons c WHERE NOT EXISTS (SELECT 1 FROM lifecycle.messages m "
            "WHERE m.enrollment_id = c.enrollment_id AND m.step = c.step AND m.customer_id = c.customer_id))")).one()
        coupons = conn.execute(sa.text("SELECT count(*) FROM lifecycle.coupons")).scalar_one()
    assert entered > 20 and advanced == as_planned == entered
    assert updated == 0, f"planning rewrote {updated} of the {entered} new enrollments"
    # (no foreign keys check it since migration 022: each message and coupon names its own enrollment)
    assert tuple(orphans) == (0, 0) and coupons == entered
    reset_lifecycle(engine)


def test_enrolling_a_next_day_never_nests_a_loop_over_enrollments_or_quarantine(stale_enrollments):
    """enroll's statements (the one-active check, the upsert that leaves unchanged rows out) over
    FILLER active enrollments the statistics do not know about: no per-row rescan of
    lifecycle.enrollments or lifecycle.quarantine (the quarantined rows are a hashed list)."""
    engine, anchor = stale_enrollments
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run = RunContext(spec.journey, "enroll", "live", anchor - timedelta(days=1), anchor)
    run_audit.start_run(engine, run)
    stage.stage_segment(engine, spec, run)
    with engine.begin() as conn:  # statistics of an empty quarantine, then rows they do not know about
        conn.exec_driver_sql("ANALYZE lifecycle.quarantine")
        conn.execute(sa.text(
            "INSERT INTO lifecycle.quarantine (journey, run_id, mode, row_number, reasons, row_data) "
            "SELECT 'win_back', 'other', 'live', i, ARRAY['filler'], '{}' FROM generate_series(1, :n) i"), {"n": FILLER})
    sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans)
    try:
        entered = enroll(engine, spec, run)["entered"]
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans)
    assert entered > 20


def test_an_enrollment_that_exits_in_its_first_run_has_no_current_step(shop_db):
    """Its enrollment assumed this run's plan would give it its first step; an exit before the plan
    records the step last planned instead: none (and the plan then gives it none)."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    run, _ = staged_and_enrolled(engine, spec, "exit", anchor, timedelta(days=1))
    with engine.begin() as conn:
        customer, entered_at = conn.execute(sa.text(
            "SELECT customer_id, entered_at FROM lifecycle.enrollments WHERE journey = 'win_back' "
            "ORDER BY enrollment_id LIMIT 1")).one()
        conn.execute(sa.text("INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency) "
                             "VALUES (990000001, CAST(:c AS bigint), :at, 'delivered', 42.00, 'EUR')"),
                     {"c": customer, "at": entered_at + timedelta(seconds=1)})
    try:
        assert sum(evaluate_exits(engine, spec, run).values()) == 1
        plan.plan_due_steps(engine, spec, run)
        with engine.connect() as conn:
            exited = conn.execute(sa.text(
                "SELECT status, current_step, next_step FROM lifecycle.enrollments "
                "WHERE journey = 'win_back' AND customer_id = :c"), {"c": customer}).one()
            steps = conn.execute(sa.text(
                "SELECT array_agg(step ORDER BY message_id) FROM lifecycle.messages "
                "WHERE journey = 'win_back' AND customer_id = :c"), {"c": customer}).scalar_one()
        assert tuple(exited) == ("converted", None, None)
        assert steps == [spec.exits[0].message_step]  # the exit's thank-you, no step of the journey
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.exec_driver_sql("DELETE FROM shop.orders WHERE order_id = 990000001")


def messages_read_by_advance(engine, spec, run) -> int:
    """How many times the advance of `run` reads lifecycle.messages (loops of its plan nodes on
    that table), from EXPLAIN ANALYZE of the statement as it ran, repeated and rolled back."""
    seen = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "current and next step" in statement:
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        plan._advance_enrollments(engine, spec, run)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    [(statement, parameters)] = seen
    with engine.connect() as conn:  # not committed: rolled back
        tree = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).scalar()

    def loops(node) -> int:
        own = node.get("Actual Loops", 0) if node.get("Relation Name") == "messages" else 0
        return own + sum(loops(child) for child in node.get("Plans", []))

    return loops(tree[0]["Plan"])


def test_an_enrollment_past_its_last_step_is_read_again_when_it_can_change(shop_db):
    """product_recommendations' one step is planned on the first day: from then on the advance
    leaves its enrollments alone (no message lookups) until they can complete, or until the
    journey gains a step, which becomes their next."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    spec = load_spec(SEGMENTS_DIR / "product_recommendations.sql")

    def planned(as_of, journey_spec, label):
        if label == "cold":
            run, _ = staged_and_enrolled(engine, spec, label, as_of, timedelta(days=7))
        else:  # a later day: nothing new enrolls, only the plan step runs
            run = RunContext(spec.journey, label, "live", as_of - timedelta(days=7), as_of)
            run_audit.start_run(engine, run)
        plan.plan_due_steps(engine, journey_spec, run)
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT status, current_step, next_step, next_due_at - entered_at AS wait, count(*) AS n "
                "FROM lifecycle.enrollments WHERE journey = :j GROUP BY 1, 2, 3, 4"), {"j": spec.journey}).all()

    [first] = planned(anchor, spec, "cold")
    assert first.n > 20 and tuple(first)[:4] == ("active", "picked_for_you", None, None)
    quiet = RunContext(spec.journey, "quiet", "live", anchor, anchor + timedelta(days=1))
    assert messages_read_by_advance(engine, spec, quiet) == 0  # the next day: nothing can change for them
    reminder = dataclasses.replace(spec.steps[0], name="reminder", after=timedelta(days=3))
    [gained] = planned(anchor + timedelta(days=1), dataclasses.replace(spec, steps=(*spec.steps, reminder)), "gained")
    assert tuple(gained) == ("active", "picked_for_you", "reminder", timedelta(days=3), first.n)
    [done] = planned(anchor + timedelta(days=7), spec, "done")  # the step is gone again: past it, and 7 days on
    assert tuple(done) == ("completed", "picked_for_you", None, None, first.n)


def refuse_nested_rescans_over_due(conn, cursor, statement, *args):
    """refuse_nested_rescans for the statements that find and plan the due steps (their `_due`):
    the other tables' statistics are whatever this module's earlier tests left."""
    if "_due" in statement:
        refuse_nested_rescans(conn, cursor, statement, *args)


def test_the_next_run_plans_on_statistics_taken_when_the_tables_were_empty(shop_db):
    """A fresh install's statistics say lifecycle.messages is empty; a big first day fills it, and
    the next run can start before anything analyses it again: autoanalyze has not come round, and
    the activity counters statistics.py reads reach the shared statistics only when the backend
    that wrote the rows is idle. The run's stage step sees the table outgrew its statistics and
    analyses it, so the plan step looks up each candidate's messages instead of scanning them all
    per candidate (the 1M benchmark's next hour of cart_abandonment: 0.1 s, or 8.7 s when that
    happened)."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    spec = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lifecycle.messages SET (autovacuum_enabled = off)")
        conn.exec_driver_sql("ANALYZE lifecycle.messages")  # empty
        insert_filler(conn, "win_back", "sent", FILLER, anchor - timedelta(days=30))  # the big first day
    with engine.begin() as conn:  # as if its counters had not been flushed yet
        conn.exec_driver_sql("SELECT pg_stat_reset_single_table_counters('lifecycle.messages'::regclass)")
    try:
        run, _ = staged_and_enrolled(engine, spec, "next", anchor, timedelta(hours=1))
        sa.event.listen(engine, "before_cursor_execute", refuse_nested_rescans_over_due)
        try:
            assert plan.plan_due_steps(engine, spec, run)["reminder_1"]["planned"] > 0
        finally:
            sa.event.remove(engine, "before_cursor_execute", refuse_nested_rescans_over_due)
        with engine.connect() as conn:
            known = conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = 'lifecycle.messages'::regclass"))
            assert known.scalar_one() >= FILLER
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE lifecycle.messages RESET (autovacuum_enabled)")
        reset_lifecycle(engine)
