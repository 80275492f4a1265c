"""Journey state in lifecycle.enrollments: enroll the valid rows, apply exit conditions.

All set-based SQL in the warehouse. Conditions are analyst SQL files that see a CTE
named `enrollments` (this journey's active enrollments) and return `enrollment_id`,
optionally with `occurred_at`, `order_id` and `revenue` (recorded as a conversion).
"""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.ids import typed_enrollments
from lifecycle.plan import _issue_coupons, insert_messages
from lifecycle.runs import RunContext
from lifecycle.spec import JourneySpec, Step
from lifecycle.sql import SegmentSQLError, condition_sql, execute_file_sql, shared_ctes
from lifecycle.stage import stage_table

# Deterministic 0-99 bucket per (journey, customer): the same customer is always in
# (or out of) a journey's holdout, run after run.
HOLDOUT_BUCKET = "((('x' || substr(md5({journey} || ':' || {customer}), 1, 8))::bit(32)::int & 2147483647) % 100)"


def enroll(engine: Engine, spec: JourneySpec, run: RunContext) -> dict[str, int]:
    """Upsert the staged, non-quarantined rows; return how many entered and were refreshed."""
    bucket = HOLDOUT_BUCKET.format(journey=":journey", customer=f"s.{spec.customer_id}::text")
    sql = f"""
        INSERT INTO lifecycle.enrollments AS e
            (journey, mode, enrollment_key, customer_id, entered_at, enrolled_at, enrolled_run_id, holdout, context,
             context_as_of)
        SELECT :journey, :mode, s.{spec.entry_key}::text, s.{spec.customer_id}::text,
               s.{spec.entered_at}::timestamptz, :as_of, :run_id, {bucket} < :holdout,
               to_jsonb(s) - '_row', :as_of
        FROM {stage_table(run)} AS s
        WHERE NOT EXISTS (SELECT 1 FROM lifecycle.quarantine q
                          WHERE q.journey = :journey AND q.run_id = :run_id AND q.row_number = s._row)
        ON CONFLICT (journey, mode, enrollment_key) DO UPDATE
            SET context = EXCLUDED.context, context_as_of = EXCLUDED.context_as_of, updated_at = now(),
                -- refresh_clock: the thing changed again (a cart updated after a reminder), so
                -- the steps not yet sent are timed from the new moment; sent steps never repeat.
                entered_at = CASE WHEN :refresh_clock THEN greatest(e.entered_at, EXCLUDED.entered_at)
                                  ELSE e.entered_at END
            -- Only a run at least as recent as the context's own data refreshes it: a backfill of
            -- an older interval must not overwrite what a later run saw.
            WHERE e.status = 'active'
              AND EXCLUDED.context_as_of >= coalesce(e.context_as_of, e.enrolled_at)
              AND e.context IS DISTINCT FROM EXCLUDED.context  -- unchanged rows are not rewritten
        RETURNING (xmax = 0) AS inserted
    """
    with engine.begin() as conn:
        quarantined = _quarantine_second_enrollments(conn, spec, run) if spec.one_active_per_customer else 0
        flags = conn.execute(
            sa.text(sql), {**run.binds(), "run_id": run.run_id, "holdout": spec.holdout_percent,
                           "refresh_clock": spec.refresh_clock}
        ).scalars().all()
    entered = sum(1 for f in flags if f)
    return {"entered": entered, "refreshed": len(flags) - entered, "quarantined": quarantined}


ONE_ACTIVE = "one_active_per_customer"


def _quarantine_second_enrollments(conn: sa.Connection, spec: JourneySpec, run: RunContext) -> int:
    """`one_active_per_customer`: a staged row that would open a second active enrollment for a
    customer (one is already active, or another new row of this run came first) is quarantined
    with the reason, not enrolled. Of two new rows, the earlier `entered_at` wins, then the
    smaller entry key. Rows that refresh the active enrollment (same key) are not affected.
    Ids are compared as text, so integer and text customer ids both work."""
    conn.execute(
        sa.text("DELETE FROM lifecycle.quarantine WHERE journey = :journey AND run_id = :run_id "
                "AND reasons[1] LIKE :prefix"),
        {"journey": run.journey, "run_id": run.run_id, "prefix": ONE_ACTIVE + ":%"},
    )
    result = conn.execute(
        sa.text(
            f"""
            WITH new_rows AS (  -- valid rows whose key has never been enrolled: they would open one
                SELECT s._row, s.{spec.customer_id}::text AS customer, s.{spec.entry_key}::text AS entry_key,
                       row_number() OVER (PARTITION BY s.{spec.customer_id}::text
                                          ORDER BY s.{spec.entered_at}::timestamptz, s.{spec.entry_key}::text,
                                                   s._row) AS nth
                FROM {stage_table(run)} AS s
                WHERE NOT EXISTS (SELECT 1 FROM lifecycle.quarantine q
                                  WHERE q.journey = :journey AND q.run_id = :run_id AND q.row_number = s._row)
                  AND NOT EXISTS (SELECT 1 FROM lifecycle.enrollments e
                                  WHERE e.journey = :journey AND e.mode = :mode
                                    AND e.enrollment_key = s.{spec.entry_key}::text)
            ), active AS (
                SELECT customer_id::text AS customer, min(enrollment_key) AS entry_key
                FROM lifecycle.enrollments
                WHERE journey = :journey AND mode = :mode AND status = 'active'
                GROUP BY customer_id
            ), refused AS (
                SELECT n._row,
                       CASE WHEN a.entry_key IS NOT NULL
                            THEN :one || ': the customer already has an active enrollment (' || a.entry_key
                                 || ') in this journey; this row waits until it ends'
                            ELSE :one || ': another row for this customer enrolls in this run ('
                                 || first_value(n.entry_key) OVER (PARTITION BY n.customer ORDER BY n.nth) || ')'
                       END AS reason,
                       n.nth, a.entry_key AS active_key
                FROM new_rows n LEFT JOIN active a USING (customer)
            )
            INSERT INTO lifecycle.quarantine
                (journey, run_id, mode, row_number, enrollment_key, customer_id, reasons, row_data)
            SELECT :journey, :run_id, :mode, s._row, s.{spec.entry_key}::text, s.{spec.customer_id}::text,
                   ARRAY[r.reason], to_jsonb(s) - '_row'
            FROM refused r JOIN {stage_table(run)} AS s USING (_row)
            WHERE r.active_key IS NOT NULL OR r.nth > 1
            """
        ),
        {**run.binds(), "run_id": run.run_id, "one": ONE_ACTIVE},
    )
    if result.rowcount:
        conn.execute(
            sa.text("UPDATE lifecycle.runs SET rows_quarantined = (SELECT count(*) FROM lifecycle.quarantine q "
                    "WHERE q.journey = :journey AND q.run_id = :run_id) WHERE journey = :journey AND run_id = :run_id"),
            {"journey": run.journey, "run_id": run.run_id},
        )
    return result.rowcount


def with_enrollments_cte(condition: str, enrollments_select: str) -> str:
    """Put the `enrollments` CTE in front of a condition (merging with its own WITH)."""
    cte = f"enrollments AS ({enrollments_select}){shared_ctes(condition)}"
    # leading comments (the analyst's explanation) may come before the WITH
    match = re.match(r"(?is)^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*with(\s+recursive)?\s", condition)
    if match:
        return f"WITH{match.group(1) or ''} {cte}, {condition[match.end():]}"
    return f"WITH {cte} {condition}"


def materialise_condition(conn: sa.Connection, name: str, enrollments_select: str, binds: dict, into: str) -> set[str]:
    """Run condition `name` into temp table `into`; return the optional columns it provides."""
    path, condition = condition_sql(name)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {into}")
    execute_file_sql(
        conn, path, f"CREATE TEMP TABLE {into} ON COMMIT DROP AS {with_enrollments_cte(condition, enrollments_select)}",
        binds,
    )
    columns = set(conn.execute(sa.text(f"SELECT * FROM {into} LIMIT 0")).keys())
    if "enrollment_id" not in columns:
        raise SegmentSQLError(f"{path.name}: a condition must return an enrollment_id column (it returns {sorted(columns)})")
    return columns & {"occurred_at", "order_id", "revenue"}


# The condition's `enrollments` CTE (ids.typed_enrollments gives customer_id the shop's type).
ACTIVE_ENROLLMENTS = (
    "FROM lifecycle.enrollments e "
    "WHERE e.journey = :journey AND e.mode = :mode AND e.status = 'active' AND e.entered_at <= :as_of"
)


def exit_pick_order(columns: set[str]) -> str:
    """ORDER BY terms (after enrollment_id) that pick the first qualifying event of a condition.

    Ties (README, "Ties"): of two events at the same instant the smaller order id came first.
    Ids made of digits compare as numbers, also when the column is text ('9' before '10'; zero-
    padded, never cast, so any length works), the rest in the column's own type. Every column the
    pick returns is in the ORDER BY, so rows that still tie are identical: any plan, same result.
    """
    terms = []
    if "occurred_at" in columns:
        terms.append("occurred_at NULLS LAST")
    if "order_id" in columns:
        terms += ["CASE WHEN order_id::text ~ '^[0-9]{1,40}$' THEN lpad(order_id::text, 40, '0') END NULLS LAST",
                  "order_id NULLS LAST"]
    if "revenue" in columns:
        terms.append("revenue NULLS LAST")
    return ", ".join(terms) or "enrollment_id"


def evaluate_exits(engine: Engine, spec: JourneySpec, run: RunContext) -> dict[str, int]:
    """Apply exit rules in header order; first match wins. Returns exits per condition."""
    counts = {}
    for rule in spec.exits:
        with engine.begin() as conn:
            active = typed_enrollments(conn, ACTIVE_ENROLLMENTS)
            extra = materialise_condition(conn, rule.when, active, {**run.binds(spec), **rule.params}, "_exit_hits")
            # The first qualifying event is the one attributed (its order and revenue).
            order = exit_pick_order(extra)
            pick = ", ".join(
                col if col in extra else f"CAST(NULL AS {typ}) AS {col}"
                for col, typ in (("occurred_at", "timestamptz"), ("order_id", "text"), ("revenue", "numeric"))
            )
            exited = conn.execute(
                sa.text(
                    f"""
                    WITH hit AS (
                        SELECT DISTINCT ON (enrollment_id) enrollment_id, {pick}
                        FROM _exit_hits ORDER BY enrollment_id, {order}
                    ), upd AS (
                        UPDATE lifecycle.enrollments e
                           SET status = :status, exit_reason = :reason,
                               exited_at = least(coalesce(hit.occurred_at, :as_of), :as_of),
                               next_step = NULL, next_due_at = NULL, updated_at = now()
                          FROM hit
                         WHERE e.enrollment_id = hit.enrollment_id AND e.status = 'active'
                     RETURNING e.enrollment_id, e.customer_id, e.holdout, e.exited_at, hit.order_id::text AS order_id,
                               hit.revenue
                    ), conv AS (
                        INSERT INTO lifecycle.conversions
                            (enrollment_id, journey, mode, customer_id, condition, order_id, revenue,
                             converted_at, holdout)
                        SELECT enrollment_id, :journey, :mode, customer_id, :reason, order_id, revenue,
                               exited_at, holdout
                        FROM upd WHERE :status = 'converted'
                        ON CONFLICT (enrollment_id) DO NOTHING
                    )
                    SELECT enrollment_id, exited_at FROM upd
                    """
                ),
                {**run.binds(), "status": rule.status, "reason": rule.reason},
            ).all()
            if rule.channel and exited:
                conn.execute(
                    sa.text("CREATE TEMP TABLE _exit_msgs ON COMMIT DROP AS "
                            "SELECT e.enrollment_id, e.enrollment_key, e.customer_id, e.holdout, "
                            "e.exited_at AS due_at, CAST(NULL AS text) AS skip_reason, "
                            "CAST(:channel AS text) AS channel "
                            "FROM lifecycle.enrollments e WHERE e.enrollment_id = ANY(:ids)"),
                    {"ids": [r.enrollment_id for r in exited], "channel": rule.channel},
                )
                insert_messages(
                    conn, spec, run, "_exit_msgs", step=rule.message_step,
                    template=rule.template, lateness=spec.max_lateness,
                )
                if rule.coupon:  # `then: {coupon: ...}`: a code with the exit message (a reward), as for a step's
                    _issue_coupons(conn, spec, run, Step(
                        name=rule.message_step, after=timedelta(0), channels=(rule.channel,),
                        template=rule.template, max_lateness=spec.max_lateness, coupon=rule.coupon))
        counts[rule.reason] = len(exited)
    return counts
