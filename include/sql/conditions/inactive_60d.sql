-- Inactive customers: no order (not cancelled) in the 60 days before the run's as_of,
-- including customers who never ordered. A behaviour segment any journey can use as a step
-- `when:` / `unless:`.
SELECT e.enrollment_id
FROM enrollments e
WHERE NOT EXISTS (
    SELECT 1 FROM lifecycle.orders o
    WHERE o.customer_id = e.customer_id
      AND o.ordered_at >= :as_of - INTERVAL '60 days'
      AND o.ordered_at < :as_of
)
