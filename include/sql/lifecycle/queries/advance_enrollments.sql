-- The current and next step of each active enrollment this run can have changed (lifecycle.plan.plan_due_steps,
-- after planning); one past its last step and the conversion window (done_after seconds after entry) completes.
-- The steps arrive as arrays in header order (ords, names, afters: plan.step_binds).
WITH steps AS (
    SELECT * FROM unnest(CAST(:ords AS int[]), CAST(:names AS text[]), CAST(:afters AS float8[]))
           AS s(ord, name, after_s)
), progress AS (
    -- One look at each enrollment's messages (by messages_one_per_channel): its steps, latest first.
    -- The current step is the latest; the next is the first step in header order without one.
    SELECT e.enrollment_id, nx.name AS next_step, nx.due AS next_due_at, planned.steps[1] AS current_step
    FROM lifecycle.enrollments e
    CROSS JOIN LATERAL (
        SELECT array_agg(m.step ORDER BY m.due_at DESC, m.message_id DESC) AS steps
        FROM lifecycle.messages m WHERE m.enrollment_id = e.enrollment_id
    ) planned
    LEFT JOIN LATERAL (
        SELECT s.name, e.entered_at + make_interval(secs => s.after_s) AS due
        FROM steps s
        WHERE planned.steps IS NULL OR s.name <> ALL (planned.steps)
        ORDER BY s.ord LIMIT 1
    ) nx ON true
    WHERE e.journey = :journey AND e.mode = :mode AND e.status = 'active'
      -- Only enrollments this run can have changed: no next step, unless the last step is their
      -- current one and they cannot complete yet (nothing is left to plan for them: a new
      -- enrollment whose steps are all due arrives so from plan.progress_sql; a step added to the
      -- journey since is no longer its last), next step due (steps are in time order, so any message
      -- planned since the last advance was due by now), or next_due_at no longer entered_at + that
      -- step's delay (a refreshed clock, a changed step). The others keep their values: no
      -- per-enrollment message lookups for them.
      AND ((e.next_step IS NULL
            AND NOT (e.current_step IS NOT DISTINCT FROM :last_step
                     AND e.entered_at + make_interval(secs => :done_after) > :as_of))
           OR e.next_due_at <= :as_of
           OR (e.next_step IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.name = e.next_step
                               AND e.next_due_at = e.entered_at + make_interval(secs => s.after_s))))
)
UPDATE lifecycle.enrollments e
   SET next_step = p.next_step, next_due_at = p.next_due_at, current_step = p.current_step,
       status = CASE WHEN p.next_step IS NULL
                      AND e.entered_at + make_interval(secs => :done_after) <= :as_of
                     THEN 'completed' ELSE e.status END,
       updated_at = now()
  FROM progress p
 WHERE e.enrollment_id = p.enrollment_id
   AND ((e.next_step, e.next_due_at, e.current_step)
            IS DISTINCT FROM (p.next_step, p.next_due_at, p.current_step)
        OR (p.next_step IS NULL
            AND e.entered_at + make_interval(secs => :done_after) <= :as_of))
