/* ---
journey: cross_sell
status: live
description: >
  The day after an order, a thank-you email with up to 3 products that go with what was
  bought (the shop's cross_sell links of the ordered products) and that the customer has not
  bought already, those most often bought together with the order's products first. A
  follow-up 2 days after the first email. A new order ends it: a conversion if that order
  holds one of the suggested products, otherwise an exit without one. Orders with nothing
  to suggest get no email.
schedule: daily
entry_key: order_id             # one enrollment per order
one_active_per_customer: false  # a customer may have several orders in the journey at once
entered_at: ordered_at          # the step delays count from the order
params:
  max_products: 3               # up to this many suggestions
  pair_days: 90                 # "bought together" counted over this many days of orders
  lookback_days: 3              # a run still picks up orders this old (missed runs catch up)
steps:
  - {name: thank_you, after: 1d, channel: email, template: cross_sell/thank_you}
  - {name: follow_up, after: 3d, channel: email, template: cross_sell/follow_up}   # 2 days after thank_you
exit:
  # Checked in this order: the customer's next order converts if it holds a suggestion ...
  - {when: cross_sell_ordered_suggestion, status: converted}
  # ... and otherwise ends the journey without a conversion.
  - {when: purchased_since_entry, status: exited}
--- */

-- Who qualifies: non-cancelled orders placed in the lookback window (before the run's as_of)
-- that have at least one cross_sell product to suggest. Suggestions are the cross_sell links
-- of the ordered products, minus anything the customer had bought by the time of this order
-- (this order included); a product bought later is not removed, so a next order holding a
-- suggestion can convert. Ranking: the number of orders in [as_of - pair_days, as_of) that
-- hold the suggestion together with one of the order's products, summed over the order's
-- products (lifecycle.co_purchased, include/sql/lifecycle/007_recommendations.sql; a
-- suggestion never bought with them scores 0), ties to the lower product_id. An order already
-- enrolled is left out: its suggestions stay those of the run that enrolled it, so the
-- follow-up shows what the thank-you showed and a conversion is checked against them.
WITH recent AS (
    SELECT o.order_id, o.customer_id, o.ordered_at, o.total, o.currency
    FROM lifecycle.orders o
    WHERE o.ordered_at >= :as_of - make_interval(days => :lookback_days)
      AND o.ordered_at <  :as_of
      AND NOT EXISTS (SELECT 1 FROM lifecycle.enrollments e
                      WHERE e.journey = :journey AND e.mode = :mode AND e.enrollment_key = o.order_id::text)
), candidates AS (
    SELECT DISTINCT r.order_id, r.customer_id, r.ordered_at, l.linked_product_id AS product_id
    FROM recent r
    JOIN shop.order_items oi ON oi.order_id = r.order_id
    JOIN shop.product_links l ON l.product_id = oi.product_id AND l.kind = 'cross_sell'
), fresh AS (
    SELECT c.order_id, c.product_id
    FROM candidates c
    WHERE NOT EXISTS (
        SELECT 1
        FROM lifecycle.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE o.customer_id = c.customer_id
          AND o.ordered_at <= c.ordered_at
          AND oi.product_id = c.product_id
    )
), scored AS (
    SELECT f.order_id, f.product_id, coalesce(sum(cp.orders_together), 0) AS score
    FROM fresh f
    JOIN shop.order_items oi ON oi.order_id = f.order_id
    LEFT JOIN lifecycle.co_purchased(:as_of, :pair_days) AS cp
           ON cp.product_id = oi.product_id AND cp.other_product_id = f.product_id
    GROUP BY f.order_id, f.product_id
), ranked AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.order_id ORDER BY s.score DESC, s.product_id) AS rank
    FROM scored s
), suggested AS (
    -- Each suggestion as a product reference: its id and score, no card. The emails get each
    -- product's card (name, image, price, link) as the shop has it when they are sent (see
    -- "Product references" in the README), so the follow-up shows that day's price too.
    SELECT r.order_id,
           jsonb_agg(jsonb_build_object('product_id', r.product_id, 'score', r.score)
                     ORDER BY r.rank) AS suggested
    FROM ranked r
    JOIN shop.products pr ON pr.product_id = r.product_id
    WHERE r.rank <= :max_products
    GROUP BY r.order_id
), bought AS (
    -- what the order held, for the "thanks for your order" part: whole cards, as the segment
    -- builds them (like order_notifications: what was bought, even if the shop has since taken
    -- it off the catalogue), so not product references
    SELECT oi.order_id,
           jsonb_agg(lifecycle.product_card(pr, :shop_url)
                     || jsonb_build_object('quantity', oi.quantity, 'unit_price', oi.unit_price)
                     ORDER BY pr.name, pr.product_id) AS items
    FROM suggested s
    JOIN shop.order_items oi ON oi.order_id = s.order_id
    JOIN shop.products pr ON pr.product_id = oi.product_id
    GROUP BY oi.order_id
)
SELECT r.order_id,
       r.customer_id,
       c.email,
       c.first_name,
       r.ordered_at,
       r.total    AS order_total,
       r.currency,
       b.items,
       s.suggested,
       :shop_url || '/account/orders/' || lifecycle.url_escape(r.order_id::text) AS order_url
FROM recent r
JOIN suggested s ON s.order_id = r.order_id
JOIN bought b ON b.order_id = r.order_id
JOIN shop.customers c ON c.customer_id = r.customer_id
