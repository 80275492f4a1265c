-- Claim a window of planned messages in one statement and one commit (lifecycle.send.claim_window):
-- after it, each of them may be handed to the provider. Rows are locked in message_id order, so
-- two runs claiming overlapping windows wait for each other instead of deadlocking; a row another
-- run claimed first is no longer 'planned' when the lock is granted and is left to that run.
-- :mids is each message's Message-ID header (NULL for channels without one), stored with the
-- claim so that even a message whose outcome becomes unknown can be found by a returned bounce.
WITH wanted AS (
    SELECT message_id
    FROM lifecycle.messages
    WHERE message_id = ANY(CAST(:ids AS bigint[])) AND status = 'planned'
    ORDER BY message_id
    FOR UPDATE
)
UPDATE lifecycle.messages m
   SET status = 'claimed', claim_token = :token, claimed_at = now(), attempts = m.attempts + 1,
       updated_at = now(), internet_message_id = coalesce(w.mid, m.internet_message_id)
  FROM wanted
  JOIN unnest(CAST(:ids AS bigint[]), CAST(:mids AS text[])) AS w(message_id, mid) USING (message_id)
 WHERE m.message_id = wanted.message_id AND m.status = 'planned'
   AND m.message_id = ANY(CAST(:ids AS bigint[]))  -- the window's rows by primary key, whatever the statistics
RETURNING m.message_id
