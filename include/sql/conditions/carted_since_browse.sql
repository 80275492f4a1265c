-- The customer created or changed a cart after the browsing session's last view (the
-- context's last_viewed_at) and before the run's as_of. carts has no per-item timestamps:
-- a cart created after the last view counts from created_at, an older cart from updated_at.
SELECT e.enrollment_id,
       CASE WHEN c.created_at > (e.context ->> 'last_viewed_at')::timestamptz
            THEN c.created_at ELSE c.updated_at END AS occurred_at
FROM enrollments e
JOIN shop.carts c
  ON c.customer_id = e.customer_id
 AND c.updated_at > (e.context ->> 'last_viewed_at')::timestamptz
 AND c.updated_at < :as_of
