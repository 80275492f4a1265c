-- The customer placed a (non-cancelled) order after entering the journey and before the
-- run's as_of. The first such order is the conversion: its id and total are recorded.
-- Conditions read `enrollments` (this journey's active enrollments) and return enrollment_id.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN shop.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at > e.entered_at
 AND o.ordered_at < :as_of
WHERE o.status <> 'cancelled'
