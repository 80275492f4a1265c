-- welcome: the customer's first (non-cancelled) order since the welcome clock and before the
-- run's as_of. It is the conversion (id and total), whether or not it used the welcome code.
SELECT DISTINCT ON (e.enrollment_id)
       e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN shop.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at > e.entered_at
 AND o.ordered_at < :as_of
WHERE o.status <> 'cancelled'
ORDER BY e.enrollment_id, o.ordered_at, o.order_id
