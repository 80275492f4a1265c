/* ---
journey: review_request
status: live
description: >
  Ask for a review once the customer has had time with the products: 10 days after
  delivery for soft goods (clothing, shoes, cosmetics, jewellery) and consumables, 21 days
  when the order holds a hard good (furniture, household, sports equipment). One reminder
  5 days later if no review. 4-5 stars: thank-you; 1-2 stars: an offer of help.
schedule: daily
entry_key: order_id            # one request per order
one_active_per_customer: false  # a customer may have several orders in the journey at once
entered_at: request_due_at     # delivery + the product-dependent delay
params:
  soft_goods_days: 10
  hard_goods_days: 21
  lookback_days: 3             # catch up on requests that came due while runs were missed
steps:
  - {name: request,  after: 0h, channel: email, template: review_request/request}
  - {name: reminder, after: 5d, channel: email, template: review_request/reminder}
exit:
  # Checked in this order; the first that holds wins. Low ratings get help first.
  - when: left_negative_review
    then: {channel: email, template: review_request/service_recovery}
  - when: left_positive_review
    then: {channel: email, template: review_request/thank_you}
  - when: left_any_review        # 3 stars: thanks for the review, nothing more to send
--- */

-- Who qualifies: delivered, non-cancelled orders whose request came due in the last
-- lookback_days (as of the run) and that have no review yet. An order with any hard good
-- waits the longer delay.
WITH delivered AS (
    SELECT o.order_id,
           o.customer_id,
           o.delivered_at,
           o.delivered_at + make_interval(days => CASE WHEN bool_or(p.product_type = 'hard')
                                                       THEN :hard_goods_days ELSE :soft_goods_days END)
                                                           AS request_due_at,
           jsonb_agg(lifecycle.product_card(p, :shop_url) || jsonb_build_object(
               'review_url', :shop_url || '/review/' || lifecycle.url_escape(o.order_id::text) || '/' || lifecycle.url_escape(p.product_id::text)
           ) ORDER BY p.name, p.product_id)                AS items
    FROM lifecycle.orders o
    JOIN shop.order_items oi USING (order_id)
    JOIN shop.products p USING (product_id)
    WHERE o.delivered_at IS NOT NULL
      AND o.delivered_at < :as_of
      AND o.delivered_at >= :as_of - make_interval(days => :hard_goods_days + :lookback_days)
    GROUP BY o.order_id, o.customer_id, o.delivered_at
)
SELECT d.order_id,
       d.customer_id,
       c.email,
       c.first_name,
       d.delivered_at,
       d.request_due_at,
       d.items
FROM delivered d
JOIN shop.customers c USING (customer_id)
WHERE d.request_due_at <= :as_of
  AND d.request_due_at >  :as_of - make_interval(days => :lookback_days)
  AND NOT EXISTS (
      SELECT 1 FROM shop.reviews r
      WHERE r.order_id = d.order_id AND r.created_at < :as_of
  )
