-- A planned message costs less to write (issue 11, item 1): every index on lifecycle.messages is
-- written once per message, 669k times on product_recommendations' first day at 1M customers.
--
-- 1. One message per enrollment, step and channel, keyed by numbers instead of by text. The
--    idempotency key `[dry:]journey:enrollment_key:step:channel` stays (it makes the Message-ID
--    and the providers' idempotency keys), but its uniqueness is now held by
--    (enrollment_id, step, channel): an enrollment is one (journey, mode, enrollment_key), so the
--    two say the same thing. The text key was 60-80 bytes an entry; the new index leads with the
--    enrollment id, which a plan inserts in ascending order (appended page by page).
-- 2. That index also finds an enrollment's messages (advance_enrollments, conditions, load_batch),
--    so messages_enrollment (enrollment_id) goes.
-- 3. messages_one_per_step (one message per step whatever the channel, fallbacks aside) leads with
--    the enrollment id too; journey and mode follow from it.
-- 4. The foreign key fallback_of -> messages ran a trigger for every message planned (0.7 s of
--    13.8 s for 669k, each with fallback_of NULL). A fallback is inserted by
--    send.plan_fallback from the row it falls back from, in one statement, and messages are never
--    deleted: the check could not fail (as with the keys 022 dropped).
-- Measured on 669k messages into an empty table (the 1M demo shop's server): 7.3-8.0 s with the
-- indexes before, 5.9-6.3 s with these.
CREATE UNIQUE INDEX IF NOT EXISTS messages_one_per_channel ON lifecycle.messages (enrollment_id, step, channel);
ALTER TABLE lifecycle.messages DROP CONSTRAINT IF EXISTS messages_idempotency_key_key;
DROP INDEX IF EXISTS lifecycle.messages_enrollment;
DROP INDEX IF EXISTS lifecycle.messages_one_per_step;
CREATE UNIQUE INDEX messages_one_per_step ON lifecycle.messages (enrollment_id, step) WHERE fallback_of IS NULL;
ALTER TABLE lifecycle.messages DROP CONSTRAINT IF EXISTS messages_fallback_of_fkey;
