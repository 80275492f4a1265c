-- welcome: the customer's first (non-cancelled) order since the welcome clock and before the
-- run's as_of. It is the conversion (id and total), whether or not it used the welcome code.
SELECT DISTINCT ON (o.enrollment_id)
       o.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM orders_since_entry o
ORDER BY o.enrollment_id, o.ordered_at, o.order_id
