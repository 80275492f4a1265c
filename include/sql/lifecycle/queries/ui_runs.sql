-- The Journeys page (lifecycle.ui.data): per journey of one mode, its latest run (by interval, then start;
-- the run id breaks ties) and how its runs in the period ended. A run is in the period when its interval
-- ends in (since, until]: the run that covers a day of the period counts for it.
WITH last AS (
    SELECT DISTINCT ON (journey)
           journey, run_id, status, interval_start, interval_end, rows_selected, rows_valid, rows_quarantined,
           rows_new, counts, error, started_at, finished_at
    FROM lifecycle.runs
    WHERE mode = :mode
    ORDER BY journey, interval_end DESC, started_at DESC, run_id DESC
), period AS (
    SELECT journey,
           count(*)                                    AS runs,
           count(*) FILTER (WHERE status = 'ok')       AS runs_ok,
           count(*) FILTER (WHERE status = 'held')     AS runs_held,
           count(*) FILTER (WHERE status = 'failed')   AS runs_failed,
           count(*) FILTER (WHERE status = 'running')  AS runs_running
    FROM lifecycle.runs
    WHERE mode = :mode AND interval_end > :since AND interval_end <= :until
    GROUP BY journey
)
SELECT last.*, coalesce(p.runs, 0) AS runs, coalesce(p.runs_ok, 0) AS runs_ok,
       coalesce(p.runs_held, 0) AS runs_held, coalesce(p.runs_failed, 0) AS runs_failed,
       coalesce(p.runs_running, 0) AS runs_running
FROM last LEFT JOIN period p USING (journey)
ORDER BY last.journey
