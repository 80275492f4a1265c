-- Send-time checks of one batch's planned messages (lifecycle.send.apply_send_time_checks):
-- enrollment state, lateness, suppressions, consent, address, all read now, not at planning.
-- The push_id, consent_id and contacts_id placeholders: m2.customer_id in each contact view's id type
-- (lifecycle.ids.shop_ids), so the lookups use the warehouse's indexes.
UPDATE lifecycle.messages m
   SET status = v.status, reason = v.reason, updated_at = now()
  FROM (
    SELECT m2.message_id,
           CASE WHEN e.status IN ('converted', 'exited', 'expired')
                     AND NOT (m2.step = ANY(CAST(:exit_steps AS text[]))) THEN 'skipped'
                WHEN m2.expires_at < :now THEN 'expired'
                WHEN s.customer_id IS NOT NULL
                     AND (m2.kind = 'marketing' OR s.reason = ANY(CAST(:blocks_transactional AS text[])))
                     THEN 'suppressed'
                WHEN m2.kind = 'marketing' AND coalesce(cs.opted_in, false) = false THEN 'suppressed'
                WHEN m2.channel = 'email' AND (ct.email IS NULL OR ct.email !~ :email_regex)
                     THEN 'skipped'
                WHEN m2.channel = 'sms' AND nullif(trim(ct.phone), '') IS NULL THEN 'skipped'
                WHEN m2.channel = 'push' AND NOT EXISTS (
                     SELECT 1 FROM lifecycle.push_subscriptions ps
                     WHERE ps.customer_id = {push_id} AND ps.revoked_at IS NULL) THEN 'skipped'
           END AS status,
           CASE WHEN e.status IN ('converted', 'exited', 'expired')
                     AND NOT (m2.step = ANY(CAST(:exit_steps AS text[])))
                     THEN 'enrollment ' || e.status || coalesce(' (' || e.exit_reason || ')', '')
                WHEN m2.expires_at < :now
                     THEN 'late: not sent by ' || to_char(m2.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
                          || ' UTC (due ' || to_char(m2.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ')'
                WHEN s.customer_id IS NOT NULL
                     AND (m2.kind = 'marketing' OR s.reason = ANY(CAST(:blocks_transactional AS text[])))
                     THEN 'suppressed: ' || s.reason
                WHEN m2.kind = 'marketing' AND cs.customer_id IS NULL THEN 'no consent'
                WHEN m2.kind = 'marketing' AND NOT cs.opted_in THEN 'consent withdrawn'
                WHEN m2.channel = 'sms' THEN 'missing phone'
                WHEN m2.channel = 'push' THEN 'no live push subscription'
                ELSE 'invalid address'
           END AS reason
    FROM lifecycle.messages m2
    JOIN lifecycle.enrollments e ON e.enrollment_id = m2.enrollment_id
    LEFT JOIN lifecycle.suppressions s ON s.customer_id = m2.customer_id AND s.channel = m2.channel
                                       AND s.lifted_at IS NULL
    LEFT JOIN lifecycle.consent cs ON cs.customer_id = {consent_id} AND cs.channel = m2.channel
    LEFT JOIN lifecycle.contacts ct ON ct.customer_id = {contacts_id}
    WHERE m2.journey = :journey AND m2.run_id = :run_id AND m2.channel = :channel
      AND m2.batch_no = :batch AND m2.status = 'planned'
  ) v
 WHERE m.message_id = v.message_id AND v.status IS NOT NULL
