-- The customer's next order after the one the enrollment is about (entered_at is that
-- order's ordered_at): the first non-cancelled order after it and before the run's as_of,
-- when it holds one of the suggested products (the context's `suggested`). That order is the
-- conversion (its id and total). A next order without a suggested product does not match
-- here, even if a later one has one: cross_sell's second exit rule (purchased_since_entry,
-- status exited) then ends the enrollment without a conversion.
WITH next_order AS (
    SELECT DISTINCT ON (o.enrollment_id)
           o.enrollment_id, e.context, o.order_id, o.ordered_at, o.total
    FROM orders_since_entry o
    JOIN enrollments e USING (enrollment_id)
    ORDER BY o.enrollment_id, o.ordered_at, o.order_id
)
SELECT n.enrollment_id,
       n.ordered_at AS occurred_at,
       n.order_id,
       n.total      AS revenue
FROM next_order n
WHERE EXISTS (
    SELECT 1
    FROM shop.order_items oi
    JOIN jsonb_array_elements(n.context -> 'suggested') AS s
      ON s ->> 'product_id' = oi.product_id::text  -- as text: ids may be text
    WHERE oi.order_id = n.order_id
)
