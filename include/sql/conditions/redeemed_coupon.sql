-- An order (not cancelled) used a coupon code this enrollment was given, while the code was
-- valid and before the run's as_of. The first such order is the conversion (id and total).
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
