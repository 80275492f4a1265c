-- The customer created or changed a cart after entering the journey (the run that enrolled them,
-- enrolled_at) and before this run's as_of. Carts changed between the session and entry do not
-- count: the segment already left the products carted then out of the email. carts has no
-- per-change timestamps: a cart created since entry counts from created_at, an older one from updated_at.
SELECT e.enrollment_id,
       CASE WHEN c.created_at >= e.enrolled_at THEN c.created_at ELSE c.updated_at END AS occurred_at
FROM enrollments e
JOIN shop.carts c
  ON c.customer_id = e.customer_id
 AND c.updated_at >= e.enrolled_at
 AND c.updated_at < :as_of
