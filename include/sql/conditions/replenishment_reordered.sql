-- The customer ordered the enrollment's product again: a non-cancelled order, later than the
-- order line the enrollment is about (context order_id / ordered_at), that contains the same
-- product (context product_id), placed before the run's as_of. The segment never selects a
-- line that was reordered before its reminder went out, so a hit here is a reorder after the
-- reminder: the first one is the conversion, with its order id and total.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN lifecycle.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at < :as_of
 -- order ids compared as JSON: numerically for whole numbers, as strings for text ids
 AND (o.ordered_at, to_jsonb(o.order_id)) > ((e.context ->> 'ordered_at')::timestamptz, e.context -> 'order_id')
JOIN shop.order_items oi
  ON oi.order_id = o.order_id
 AND oi.product_id::text = e.context ->> 'product_id'
