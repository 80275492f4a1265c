-- welcome: the customer's first (non-cancelled) order since the welcome clock and before the
-- run's as_of, when that order used the code this enrollment was given (while it was valid).
-- Checked before welcome_first_order, so lifecycle.conversions.condition records whether the
-- first order redeemed the welcome code. Only the first order counts: a later order with the
-- code does not change how the first one is recorded.
SELECT f.enrollment_id,
       f.ordered_at AS occurred_at,
       f.order_id,
       f.total      AS revenue
FROM (
    SELECT DISTINCT ON (o.enrollment_id)
           o.enrollment_id, o.order_id, o.ordered_at, o.total, o.coupon_code
    FROM orders_since_entry o
    ORDER BY o.enrollment_id, o.ordered_at, o.order_id
) AS f
JOIN lifecycle.coupons cp
  ON cp.enrollment_id = f.enrollment_id
 AND cp.code = f.coupon_code
 AND f.ordered_at >= cp.valid_from
 AND f.ordered_at <  cp.valid_until
