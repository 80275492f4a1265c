-- The enrollment's first email (its earliest-due email message) went out and the customer
-- opened or clicked it before the run's as_of. Both sources count (engagement_since_entry, an
-- engine CTE): an open or click we tracked on that very message (human only: an Apple MPP
-- prefetch or a link scanner is not the customer), and the provider's email opens and clicks
-- (shop.engagement_events), which carry no Message-ID of ours and so are matched by time: at or
-- after the first email was due.
SELECT e.enrollment_id,
       min(ev.occurred_at) AS occurred_at
FROM enrollments e
CROSS JOIN LATERAL (
    SELECT m.message_id, m.due_at, m.status
    FROM lifecycle.messages m
    WHERE m.enrollment_id = e.enrollment_id AND m.channel = 'email'
    ORDER BY m.due_at, m.message_id
    LIMIT 1
) first_email
JOIN engagement_since_entry ev
  ON ev.enrollment_id = e.enrollment_id
 AND ev.channel = 'email'
 AND ev.event IN ('open', 'click')
 AND (ev.message_id = first_email.message_id
      OR ev.source = 'provider' AND ev.occurred_at >= first_email.due_at)
WHERE first_email.status IN ('sent', 'dry_run')
GROUP BY e.enrollment_id
