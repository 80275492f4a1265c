-- Enrollments advanced in place (issue 11, item 1). After planning, each enrollment the run
-- touched gets its current and next step (queries/advance_enrollments.sql): on a big first day
-- that is every new enrollment, rewritten right after it was inserted.
--   1. enrollments_active indexed next_due_at, which that update changes: every new row version
--      needed new entries in all four indexes. The index is now partial on the active rows and
--      keyed by what the planner filters them on (journey, mode, entered_at: a step is due when
--      entered_at + its delay has passed); nothing the advance writes (current_step, next_step,
--      next_due_at, updated_at) is indexed, so the update can be HOT (heap-only: no index entry).
--   2. fillfactor 45: new rows fill a page to 45%, leaving the room a HOT update needs for the
--      row's new version on the same page (a win_back row's context is ~300 bytes). Pages of
--      rows already there keep their fill until the table is rewritten (VACUUM FULL).
ALTER TABLE lifecycle.enrollments SET (fillfactor = 45);
DROP INDEX IF EXISTS lifecycle.enrollments_active;
CREATE INDEX enrollments_active ON lifecycle.enrollments (journey, mode, entered_at) WHERE status = 'active';
