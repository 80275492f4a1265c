-- The volume guard counts a run's NEW rows: valid rows whose enrollment key was not enrolled yet
-- (a lookback segment selects enrolled rows again every run; those never count). Earlier runs get
-- the same measure from the enrollments they created.
ALTER TABLE lifecycle.runs ADD COLUMN rows_new integer;
UPDATE lifecycle.runs SET rows_new = 0 WHERE rows_selected IS NOT NULL;
UPDATE lifecycle.runs r
   SET rows_new = n.enrolled
  FROM (SELECT journey, mode, enrolled_run_id, count(*) AS enrolled
        FROM lifecycle.enrollments
        GROUP BY journey, mode, enrolled_run_id) n
 WHERE n.journey = r.journey AND n.mode = r.mode AND n.enrolled_run_id = r.run_id
   AND r.rows_selected IS NOT NULL;
