-- The enrollment's first email (its earliest-due email message) went out and the customer
-- opened or clicked an email after it was due and before the run's as_of. Provider events
-- in shop.engagement_events do not carry the engine's Message-ID, so they are matched by
-- customer, channel and time.
SELECT e.enrollment_id,
       min(ev.occurred_at) AS occurred_at
FROM enrollments e
CROSS JOIN LATERAL (
    SELECT m.due_at, m.status
    FROM lifecycle.messages m
    WHERE m.enrollment_id = e.enrollment_id AND m.channel = 'email'
    ORDER BY m.due_at, m.message_id
    LIMIT 1
) first_email
JOIN shop.engagement_events ev
  ON ev.customer_id = e.customer_id
 AND ev.channel = 'email'
 AND ev.event IN ('open', 'click')
 AND ev.occurred_at >= first_email.due_at
 AND ev.occurred_at < :as_of
WHERE first_email.status IN ('sent', 'dry_run')
GROUP BY e.enrollment_id
