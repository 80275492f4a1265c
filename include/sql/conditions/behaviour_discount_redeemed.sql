-- A product-specific code was redeemed: an order (not cancelled) used a code this enrollment was
-- given, while the code was valid and before the run's as_of, and the order contains the code's
-- product (an order with the code but without the product does not count: the code is only good
-- for that product). The first such order is the conversion (its id and total).
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN lifecycle.coupons cp
  ON cp.enrollment_id = e.enrollment_id
JOIN lifecycle.orders o
  ON o.coupon_code = cp.code
 AND o.ordered_at >= cp.valid_from
 AND o.ordered_at < cp.valid_until
 AND o.ordered_at < :as_of
-- lifecycle ids are text
WHERE EXISTS (SELECT 1 FROM shop.order_items oi
              WHERE oi.order_id = o.order_id AND oi.product_id::text = cp.product_id)
