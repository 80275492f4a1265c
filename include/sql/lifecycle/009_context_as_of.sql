-- The as_of of the run whose segment row is the enrollment's current context: a backfill of an
-- older interval refreshes the context only if it is at least as recent (never overwrites newer data).
ALTER TABLE lifecycle.enrollments ADD COLUMN context_as_of timestamptz;
UPDATE lifecycle.enrollments SET context_as_of = enrolled_at;
