-- The Journeys page: quarantined rows of the runs in the period, per journey and reason. A row counts once
-- per reason however many runs saw it (by its enrollment key, else its data). Parenthesised details
-- (an enrollment key, a character's code point) are cut so reasons group; row_data is never returned.
SELECT q.journey,
       regexp_replace(reason, '\s*\([^)]*\)', '', 'g')                AS reason,
       count(DISTINCT coalesce(q.enrollment_key, md5(q.row_data::text))) AS rows
FROM lifecycle.quarantine q
JOIN lifecycle.runs r ON r.journey = q.journey AND r.run_id = q.run_id
CROSS JOIN LATERAL unnest(q.reasons) AS reason
WHERE q.mode = :mode AND r.interval_end > :since AND r.interval_end <= :until
GROUP BY 1, 2
ORDER BY 1, 3 DESC, 2
