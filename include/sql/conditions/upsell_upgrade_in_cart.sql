-- upsell: the upgrade the journey showed (the context's upgrade_product_id) is in the
-- enrollment's cart as of the run's as_of (a line counts from its added_at; without one, from
-- the cart's updated_at). The follow-up is skipped then: the customer already took it.
SELECT e.enrollment_id
FROM enrollments e
JOIN shop.cart_items ci
  ON ci.cart_id::text = e.context ->> 'cart_id'  -- as text: ids may be text
 AND ci.product_id::text = e.context ->> 'upgrade_product_id'
JOIN shop.carts c ON c.cart_id = ci.cart_id
WHERE coalesce(ci.added_at, c.updated_at) < :as_of
