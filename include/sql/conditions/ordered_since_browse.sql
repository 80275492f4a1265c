-- The customer placed a (non-cancelled) order after entering the journey (enrolled_at: the as_of
-- of the run that enrolled them; that run already saw every earlier order and left the products
-- ordered then out of the email) and before this run's as_of.
-- The first such order is the conversion: its id and total are recorded.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN lifecycle.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at >= e.enrolled_at
 AND o.ordered_at < :as_of
