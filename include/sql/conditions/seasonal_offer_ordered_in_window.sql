-- An order (not cancelled) inside the offer window: placed after the offer went out (the
-- enrollment's entered_at) and before the window closes (context ends_at: the end of the
-- holiday, or of days_after_holiday, on the customer's clock), and before the run's as_of.
-- The first such order is the conversion: its id and total are recorded.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN shop.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at > e.entered_at
 AND o.ordered_at < (e.context ->> 'ends_at')::timestamptz
 AND o.ordered_at < :as_of
WHERE o.status <> 'cancelled'
