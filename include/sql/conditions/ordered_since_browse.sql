-- The customer placed a (non-cancelled) order after the browsing session's last view (the
-- context's last_viewed_at; entered_at is later, last view + wait) and before the run's as_of.
-- The first such order is the conversion: its id and total are recorded.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN shop.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at > (e.context ->> 'last_viewed_at')::timestamptz
 AND o.ordered_at < :as_of
WHERE o.status <> 'cancelled'
