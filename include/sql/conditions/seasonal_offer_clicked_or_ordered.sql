-- The customer clicked an email after the enrollment's offer email went out, or placed an
-- order (not cancelled) after entering, before the run's as_of. The offer email is the
-- enrollment's first email that was sent (its variants for other segments are skipped).
-- Provider events in shop.engagement_events do not carry the engine's Message-ID, so
-- clicks are matched by customer, channel and time (from the offer's due time).
SELECT e.enrollment_id,
       min(ev.occurred_at) AS occurred_at
FROM enrollments e
CROSS JOIN LATERAL (
    SELECT m.due_at
    FROM lifecycle.messages m
    WHERE m.enrollment_id = e.enrollment_id AND m.channel = 'email' AND m.status IN ('sent', 'dry_run')
    ORDER BY m.due_at, m.message_id
    LIMIT 1
) offer_email
JOIN shop.engagement_events ev
  ON ev.customer_id = e.customer_id
 AND ev.channel = 'email'
 AND ev.event = 'click'
 AND ev.occurred_at >= offer_email.due_at
 AND ev.occurred_at < :as_of
GROUP BY e.enrollment_id
UNION ALL
SELECT o.enrollment_id,
       min(o.ordered_at) AS occurred_at
FROM orders_since_entry o
GROUP BY o.enrollment_id
