-- The order this enrollment is about (context order_id) received a review with 4 or 5 stars
-- before the run's as_of.
SELECT e.enrollment_id,
       r.created_at AS occurred_at
FROM enrollments e
JOIN shop.reviews r
  ON r.order_id::text = e.context ->> 'order_id'  -- as text: ids may be text
 AND r.created_at < :as_of
WHERE r.rating >= 4
