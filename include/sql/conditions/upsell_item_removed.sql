-- upsell: the upsold item (the context's product_id) is no longer in the enrollment's cart,
-- and its upgrade did not take its place (a swap stays in the journey, so that ordering the
-- upgrade still converts). The shop keeps no history of removed lines: this reads the cart as
-- it is when the run executes, and the moment is the cart's last change if that came after
-- entering (the run's as_of at the latest; otherwise, or without a cart row, as_of).
SELECT e.enrollment_id,
       CASE WHEN c.updated_at > e.entered_at THEN c.updated_at END AS occurred_at
FROM enrollments e
LEFT JOIN shop.carts c ON c.cart_id::text = e.context ->> 'cart_id'  -- as text: ids may be text
WHERE NOT EXISTS (
          SELECT 1 FROM shop.cart_items ci
          WHERE ci.cart_id::text = e.context ->> 'cart_id'
            AND ci.product_id::text = e.context ->> 'product_id'
      )
  AND NOT EXISTS (
          SELECT 1 FROM shop.cart_items ci
          WHERE ci.cart_id::text = e.context ->> 'cart_id'
            AND ci.product_id::text = e.context ->> 'upgrade_product_id'
            AND coalesce(ci.added_at, c.updated_at) < :as_of
      )
