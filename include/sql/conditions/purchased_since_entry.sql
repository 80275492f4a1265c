/* ---
# Optional filters, each set per exit rule in a segment header (unset: no filter), e.g.
#   - {when: purchased_since_entry, params: {holding: upgrade_product_id}, reason: upsell_ordered_upgrade}
params:
  holding: null   # a context column with a product id, or a list of products (each with product_id):
                  # only orders holding that product (one of them) count
  before: null    # a context column with a timestamp: only orders placed before it count
--- */
-- The customer placed a (non-cancelled) order after entering the journey and before the
-- run's as_of. The first such order is the conversion: its id and total are recorded.
-- Conditions read `enrollments` (this journey's active enrollments) and return enrollment_id;
-- orders_since_entry holds each enrollment's orders since entry (README "Conditions").
SELECT o.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM orders_since_entry o
JOIN enrollments e USING (enrollment_id)
WHERE (CAST(:before AS text) IS NULL OR o.ordered_at < (e.context ->> :before)::timestamptz)
  AND (CAST(:holding AS text) IS NULL OR EXISTS (
      SELECT 1
      FROM shop.order_items oi
      -- a single id is read as a list of one; ids compared as text: they may be text
      JOIN jsonb_array_elements(CASE jsonb_typeof(e.context -> :holding)
                                    WHEN 'array' THEN e.context -> :holding
                                    ELSE jsonb_build_array(e.context -> :holding) END) AS product
        ON oi.product_id::text = coalesce(product ->> 'product_id', product #>> '{}')
      WHERE oi.order_id = o.order_id
  ))
