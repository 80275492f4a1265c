-- The customer clicked the enrollment's offer email, or placed an order (not cancelled) after
-- entering, before the run's as_of. The offer email is the enrollment's first email that was
-- sent (its variants for other segments are skipped). Both click sources count
-- (engagement_since_entry, an engine CTE): a click we tracked on the offer email itself (human
-- only: a link scanner is not the customer), and the provider's email clicks
-- (shop.engagement_events), which carry no Message-ID of ours and so are matched by time: at or
-- after the offer was due.
SELECT e.enrollment_id,
       min(ev.occurred_at) AS occurred_at
FROM enrollments e
CROSS JOIN LATERAL (
    SELECT m.message_id, m.due_at
    FROM lifecycle.messages m
    WHERE m.enrollment_id = e.enrollment_id AND m.channel = 'email' AND m.status IN ('sent', 'dry_run')
    ORDER BY m.due_at, m.message_id
    LIMIT 1
) offer_email
JOIN engagement_since_entry ev
  ON ev.enrollment_id = e.enrollment_id
 AND ev.channel = 'email'
 AND ev.event = 'click'
 AND (ev.message_id = offer_email.message_id
      OR ev.source = 'provider' AND ev.occurred_at >= offer_email.due_at)
GROUP BY e.enrollment_id
UNION ALL
SELECT o.enrollment_id,
       min(o.ordered_at) AS occurred_at
FROM orders_since_entry o
GROUP BY o.enrollment_id
