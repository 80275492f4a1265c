-- Price-sensitive customers: at least half of their orders (not cancelled, placed before the
-- run's as_of) used a coupon code. A customer without orders is not price-sensitive.
-- A behaviour segment any journey can use as a step `when:` / `unless:`.
SELECT e.enrollment_id
FROM enrollments e
JOIN lifecycle.orders o
  ON o.customer_id = e.customer_id
 AND o.ordered_at < :as_of
GROUP BY e.enrollment_id
HAVING 2 * count(nullif(o.coupon_code, '')) >= count(*)
