-- upsell: the customer ordered the upgrade the journey showed (the context's upgrade_product_id)
-- after entering and before the run's as_of, in a (non-cancelled) order. The first such order
-- is the conversion: its id and total are recorded as the revenue.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN shop.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at > e.entered_at
 AND o.ordered_at < :as_of
JOIN shop.order_items oi
  ON oi.order_id = o.order_id
 AND oi.product_id::text = e.context ->> 'upgrade_product_id'  -- as text: ids may be text
WHERE o.status <> 'cancelled'
