-- The Journeys page: the latest held runs of each journey in the period (the volume guard stopped them:
-- nothing enrolled or sent until someone approves), at most :per_journey each, newest first.
SELECT journey, run_id, interval_start, interval_end, rows_selected, rows_new, error
FROM (SELECT r.journey, r.run_id, r.interval_start, r.interval_end, r.rows_selected, r.rows_new, r.error,
             row_number() OVER (PARTITION BY r.journey ORDER BY r.interval_end DESC, r.run_id DESC) AS nth
      FROM lifecycle.runs r
      WHERE r.mode = :mode AND r.status = 'held' AND r.interval_end > :since AND r.interval_end <= :until) h
WHERE nth <= :per_journey
ORDER BY journey, interval_end DESC, run_id DESC
