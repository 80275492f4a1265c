-- Channels beyond email.
-- not_before: a planned message that must wait (e.g. marketing SMS outside 08:00-21:00 in the
-- recipient's timezone) is held until then; any later run or the dispatcher sends it.
ALTER TABLE lifecycle.messages ADD COLUMN not_before timestamptz;
CREATE INDEX messages_waiting ON lifecycle.messages (not_before) WHERE status = 'planned' AND not_before IS NOT NULL;

-- Fallbacks: when a push subscription turns out to be gone (404/410), the step may be sent on
-- its next channel; that message points at the one it replaces. Apart from fallbacks, a step
-- is planned once per enrollment whatever channel was chosen, even by two runs at once.
ALTER TABLE lifecycle.messages ADD COLUMN fallback_of bigint REFERENCES lifecycle.messages;
CREATE UNIQUE INDEX messages_one_per_step ON lifecycle.messages (journey, mode, enrollment_id, step)
    WHERE fallback_of IS NULL;
