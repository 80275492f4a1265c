-- The frequency cap of one batch (lifecycle.send.apply_frequency_cap): a marketing message is
-- suppressed when the customer's sends on the channel in the window, plus this batch's earlier
-- messages to them (in due order), already reach the cap.
UPDATE lifecycle.messages m
   SET status = 'suppressed', reason = :reason, updated_at = now()
  FROM (
    SELECT m2.message_id,
           row_number() OVER (PARTITION BY m2.customer_id ORDER BY m2.due_at, m2.message_id)
           + (SELECT count(*) FROM lifecycle.messages x
              WHERE x.customer_id = m2.customer_id AND x.channel = m2.channel
                AND x.mode = m2.mode AND x.kind = 'marketing' AND x.status = 'sent'
                AND x.sent_at > CAST(:now AS timestamptz) - make_interval(secs => :window)
                AND x.sent_at <= :now) AS nth
    FROM lifecycle.messages m2
    WHERE m2.journey = :journey AND m2.run_id = :run_id AND m2.channel = :channel
      AND m2.batch_no = :batch AND m2.status = 'planned' AND m2.kind = 'marketing'
  ) v
 WHERE m.message_id = v.message_id AND v.nth > :limit
