-- `lifecycle report` (report.journey_summary): per journey of one mode (live or dry), who entered,
-- what was sent, who converted or left, what was quarantined, and the conversions' revenue.
-- Optional filters (NULL: none; report.SUMMARY_SQL is this statement without them): one journey, and a
-- period [since, until) that each count reads by its own clock: runs (and their quarantined rows) by the
-- end of their interval, enrollments by entered_at, messages by planned_for (the as_of of the run that
-- planned them), conversions by converted_at.
WITH e AS (
    SELECT journey,
           count(*)                                        AS entered,
           count(*) FILTER (WHERE status = 'converted')    AS converted,
           count(*) FILTER (WHERE status = 'exited')       AS exited,
           count(*) FILTER (WHERE status = 'completed')    AS completed,
           count(*) FILTER (WHERE status = 'active')       AS active,
           count(*) FILTER (WHERE holdout)                 AS holdout
    FROM lifecycle.enrollments
    WHERE mode = :mode AND (CAST(:journey AS text) IS NULL OR journey = :journey)
      AND (CAST(:since AS timestamptz) IS NULL OR entered_at >= :since)
      AND (CAST(:until AS timestamptz) IS NULL OR entered_at < :until)
    GROUP BY journey
), m AS (
    -- messages with a template are real messages; rows without one are actions (suppress)
    SELECT journey,
           count(*) FILTER (WHERE status = 'sent' AND template IS NOT NULL)  AS sent,
           count(*) FILTER (WHERE status = 'dry_run')                       AS dry_run,
           count(*) FILTER (WHERE status = 'suppressed')                    AS suppressed,
           count(*) FILTER (WHERE status = 'expired')                       AS expired,
           count(*) FILTER (WHERE status = 'skipped')                       AS skipped,
           count(*) FILTER (WHERE status = 'failed')                        AS failed,
           count(*) FILTER (WHERE status IN ('planned', 'claimed'))         AS pending
    FROM lifecycle.messages
    WHERE mode = :mode AND (CAST(:journey AS text) IS NULL OR journey = :journey)
      AND (CAST(:since AS timestamptz) IS NULL OR planned_for >= :since)
      AND (CAST(:until AS timestamptz) IS NULL OR planned_for < :until)
    GROUP BY journey
), r AS (
    SELECT journey, run_id, status
    FROM lifecycle.runs
    WHERE mode = :mode AND (CAST(:journey AS text) IS NULL OR journey = :journey)
      AND (CAST(:since AS timestamptz) IS NULL OR interval_end > :since)
      AND (CAST(:until AS timestamptz) IS NULL OR interval_end <= :until)
), q AS (
    -- the same bad row seen by several runs counts once
    SELECT q.journey, count(DISTINCT coalesce(q.enrollment_key, q.row_data::text)) AS quarantined
    FROM lifecycle.quarantine q JOIN r ON r.journey = q.journey AND r.run_id = q.run_id
    WHERE q.mode = :mode
    GROUP BY q.journey
), c AS (
    -- one order can convert several enrollments (two abandoned carts, one order): count it once
    SELECT journey, coalesce(sum(revenue), 0) AS revenue
    FROM (SELECT DISTINCT ON (journey, coalesce(order_id, enrollment_id::text)) journey, revenue
          FROM lifecycle.conversions
          WHERE mode = :mode AND NOT holdout AND (CAST(:journey AS text) IS NULL OR journey = :journey)
            AND (CAST(:since AS timestamptz) IS NULL OR converted_at >= :since)
            AND (CAST(:until AS timestamptz) IS NULL OR converted_at < :until)
          ORDER BY journey, coalesce(order_id, enrollment_id::text), converted_at, enrollment_id) x
    GROUP BY journey
), runs AS (
    SELECT journey, count(*) AS runs, count(*) FILTER (WHERE status <> 'ok') AS runs_not_ok,
           count(*) FILTER (WHERE status = 'held') AS held
    FROM r GROUP BY journey
), journeys AS (
    SELECT journey FROM runs UNION SELECT journey FROM e UNION SELECT journey FROM m
)
SELECT j.journey, coalesce(runs.runs, 0) AS runs, coalesce(runs.runs_not_ok, 0) AS runs_not_ok,
       coalesce(runs.held, 0) AS held,
       coalesce(e.entered, 0) AS entered, coalesce(m.sent, 0) AS sent,
       coalesce(e.converted, 0) AS converted, coalesce(e.exited, 0) AS exited,
       coalesce(e.completed, 0) AS completed, coalesce(e.active, 0) AS active,
       coalesce(m.suppressed, 0) AS suppressed, coalesce(m.expired, 0) AS expired,
       coalesce(m.skipped, 0) AS skipped, coalesce(m.failed, 0) AS failed,
       coalesce(m.pending, 0) AS pending, coalesce(m.dry_run, 0) AS dry_run,
       coalesce(q.quarantined, 0) AS quarantined, coalesce(c.revenue, 0) AS revenue
FROM journeys j
LEFT JOIN runs USING (journey) LEFT JOIN e USING (journey) LEFT JOIN m USING (journey)
LEFT JOIN q USING (journey) LEFT JOIN c USING (journey)
ORDER BY j.journey
