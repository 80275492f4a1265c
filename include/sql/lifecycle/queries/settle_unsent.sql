-- Planned messages of a window that will not be attempted now, in one statement
-- (lifecycle.send.settle_unsent): skipped or failed for good, or waiting until not_before
-- (then released from this run's batch, so any later run or the dispatcher sends them).
UPDATE lifecycle.messages m
   SET status = s.status, reason = s.reason, not_before = s.not_before, updated_at = now(),
       run_id = CASE WHEN s.not_before IS NULL THEN m.run_id END,
       batch_no = CASE WHEN s.not_before IS NULL THEN m.batch_no END
  FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),
              CAST(:not_befores AS timestamptz[])) AS s(message_id, status, reason, not_before)
 WHERE m.message_id = s.message_id AND m.status = 'planned'
RETURNING m.message_id
