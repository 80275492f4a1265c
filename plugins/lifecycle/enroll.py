"""Enroll a run's valid rows in lifecycle.enrollments: the upsert, the holdout, one active per customer.

Set-based SQL in the warehouse, reading the run's staging table (lifecycle.stage) minus the
rows validation quarantined.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.plan import progress_sql, step_binds
from lifecycle.run_context import RunContext
from lifecycle.spec import JourneySpec
from lifecycle.stage import stage_table

# The run's quarantined rows, as a NOT IN list: a hashed subplan whatever the statistics of
# lifecycle.quarantine say (a NOT EXISTS planned on an empty table's statistics rescanned it per row).
QUARANTINED_ROWS = "SELECT q.row_number FROM lifecycle.quarantine q WHERE q.journey = :journey AND q.run_id = :run_id"
# Deterministic 0-99 bucket per (journey, customer): the same customer is always in
# (or out of) a journey's holdout, run after run.
HOLDOUT_BUCKET = "((('x' || substr(md5({journey} || ':' || {customer}), 1, 8))::bit(32)::int & 2147483647) % 100)"


def enroll(engine: Engine, spec: JourneySpec, run: RunContext) -> dict[str, int]:
    """Upsert the staged, non-quarantined rows; return how many entered and were refreshed."""
    bucket = HOLDOUT_BUCKET.format(journey=":journey", customer=f"s.{spec.customer_id}::text")
    current_step, next_step, next_due_at = progress_sql(spec, f"s.{spec.entered_at}::timestamptz")
    sql = f"""
        WITH upserted AS (
        INSERT INTO lifecycle.enrollments AS e
            (journey, mode, enrollment_key, customer_id, entered_at, enrolled_at, enrolled_run_id, holdout, context,
             context_as_of, current_step, next_step, next_due_at)
        SELECT :journey, :mode, s.{spec.entry_key}::text, s.{spec.customer_id}::text,
               s.{spec.entered_at}::timestamptz, :as_of, :run_id, {bucket} < :holdout,
               to_jsonb(s) - '_row', :as_of, {current_step}, {next_step}, {next_due_at}
        FROM {stage_table(run)} AS s
        WHERE s._row NOT IN ({QUARANTINED_ROWS})
          -- A row whose enrollment exists and would not change (the ON CONFLICT filter below) is
          -- left out here, set-based: through ON CONFLICT each such row took a speculative insert
          -- and a row lock (a WAL record), 224k of them every day for win_back at 1M customers.
          AND NOT EXISTS (
              SELECT 1 FROM lifecycle.enrollments x
              WHERE x.journey = :journey AND x.mode = :mode AND x.enrollment_key = s.{spec.entry_key}::text
                AND NOT (x.status = 'active' AND CAST(:as_of AS timestamptz) >= coalesce(x.context_as_of, x.enrolled_at)
                         AND x.context IS DISTINCT FROM to_jsonb(s) - '_row'))
        -- Enrollment ids in customer order (the id's own type: numbers as numbers), then entry key
        -- (unique): the same ids whatever order the segment returned its rows in. The customer and
        -- key indexes are then written in order, not at random, and so are the messages planned
        -- later in enrollment order; and every later per-enrollment lookup keyed by the customer
        -- (their orders by orders_customer_time, consent, suppressions) walks its index in order.
        -- (In entry-key text order, '10' before '9', the exit-heavy day's exits at 1M customers took
        -- 5.6-7.1 s, median 6.9, against 5.1-6.0, median 5.3, in segment order and 4.6-6.8, median
        -- 5.3, in customer order.) The sort also finishes the NOT EXISTS before the first row is
        -- inserted: on a first day (enrollments empty in the statistics) it is a nested loop over a
        -- seq scan of enrollments, which without the sort re-reads the pages this INSERT adds, per
        -- row (stopped after 12 min at 669k rows).
        ORDER BY s.{spec.customer_id}, s.{spec.entry_key}::text
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
        )
        SELECT count(*) FILTER (WHERE inserted) AS entered, count(*) FILTER (WHERE NOT inserted) AS refreshed
        FROM upserted  -- counted here: a big first day never travels to Python
    """
    with engine.begin() as conn:
        quarantined = _quarantine_second_enrollments(conn, spec, run) if spec.one_active_per_customer else 0
        counted = conn.execute(
            sa.text(sql), {**run.binds(), "run_id": run.run_id, "holdout": spec.holdout_percent,
                           "refresh_clock": spec.refresh_clock, **step_binds(spec)}
        ).one()
    return {"entered": counted.entered, "refreshed": counted.refreshed, "quarantined": quarantined}


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
                WHERE s._row NOT IN ({QUARANTINED_ROWS})
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
