-- Record the outcomes of a claimed window in one statement (lifecycle.send.mark_window): one row
-- of the unnest per message, matched on the claim token, so an attempt never overwrites a row
-- that a later attempt reconciled. A transient outcome ('retry') goes back to planned until the
-- message has used :max_attempts claims; 'unknown' is recorded failed and never re-sent.
-- The rows are found by their ids (primary key): the token is the whole batch's, and a plan led
-- by it read every row the batch had claimed so far, for each window (quadratic in the batch).
UPDATE lifecycle.messages m
   SET status = CASE o.outcome
                    WHEN 'sent' THEN 'sent'
                    WHEN 'retry' THEN CASE WHEN m.attempts >= :max_attempts THEN 'failed' ELSE 'planned' END
                    ELSE 'failed' END,
       reason = CASE o.outcome
                    WHEN 'unknown' THEN 'outcome unknown: ' || coalesce(o.reason, '')
                    WHEN 'retry' THEN CASE WHEN m.attempts >= :max_attempts THEN 'failed after retries: '
                                           ELSE 'will retry: ' END || coalesce(o.reason, '')
                    ELSE o.reason END,
       provider_message_id = o.provider_message_id,
       sent_at = CASE WHEN o.outcome = 'sent' THEN coalesce(CAST(:sent_at AS timestamptz), now()) END,
       updated_at = now(),
       payload = CASE WHEN o.details = '{}' THEN m.payload ELSE m.payload || o.details END
  FROM unnest(CAST(:ids AS bigint[]), CAST(:outcomes AS text[]), CAST(:reasons AS text[]),
              CAST(:pids AS text[]), CAST(:details AS jsonb[]))
       AS o(message_id, outcome, reason, provider_message_id, details)
 WHERE m.message_id = o.message_id AND m.claim_token = :token
   AND m.message_id = ANY(CAST(:ids AS bigint[]))
RETURNING m.message_id, m.status
