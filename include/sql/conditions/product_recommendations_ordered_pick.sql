-- The customer placed a (non-cancelled) order holding one of the products picked for them
-- (the context's `products`) after the email's week began (entered_at = the run's as_of) and
-- before this run's as_of. The first such order is the conversion: its id and total.
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
  AND EXISTS (
      SELECT 1
      FROM shop.order_items oi
      JOIN jsonb_array_elements(e.context -> 'products') AS pick
        ON pick ->> 'product_id' = oi.product_id::text  -- as text: ids may be text
      WHERE oi.order_id = o.order_id
  )
