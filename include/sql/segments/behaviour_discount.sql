/* ---
journey: behaviour_discount
status: live
description: >
  A nudge for a product someone keeps coming back to: a known customer who viewed the same
  product at least min_views times within window_days, has not ordered anything in the
  no_order_days before that and never ordered that product, gets an email with a personal
  10% code for that product, valid 7 days. The clock is the view that made it min_views
  views within window_days (the 4th). At most one code per customer and product in
  cooldown_days. Redeeming the code on an order that contains the product converts.
schedule: hourly
entry_key: behaviour_key        # customer + product + the qualifying view's UTC date
one_active_per_customer: false  # a customer may have several viewed products in the journey at once
entered_at: behaviour_clock     # the view that made it min_views views within window_days
max_lateness: 6h
complete_after: 7d              # watch redemptions while the code is valid (7 days from the clock)
params:
  min_views: 4                  # views of the same product ...
  window_days: 7                # ... within this many days (the 4 views span at most 7 x 24 hours)
  no_order_days: 30             # no (non-cancelled) order in this many days before the clock, nor since
  cooldown_days: 30             # at most one enrollment per customer and product in this many days
  lookback_hours: 24            # how far back (by the clock) a run looks for qualifying views
steps:
  - name: offer
    after: 0h
    channel: email
    template: behaviour_discount/offer
    coupon: {percent_off: 10, valid_days: 7, prefix: BHV, product: product_id}   # good only for this product
exit:
  - when: behaviour_discount_redeemed   # converted: an order with the code that contains the product
--- */

-- Views of known customers that can matter to this run: the lookback, plus the window before it.
WITH recent AS (
    SELECT v.view_id, v.customer_id, v.product_id, v.viewed_at
    FROM shop.page_views v
    WHERE v.customer_id IS NOT NULL
      AND v.product_id IS NOT NULL
      AND v.viewed_at >= :as_of - make_interval(hours => :lookback_hours) - make_interval(days => :window_days)
      AND v.viewed_at <  :as_of
), counted AS (
    -- for each view: how many views of the same product by the same customer in the window
    -- ending at it (window_days before it, inclusive, up to and including it)
    SELECT r.*,
           count(*)        OVER w AS view_count,
           min(viewed_at)  OVER w AS first_viewed_at
    FROM recent r
    WINDOW w AS (PARTITION BY r.customer_id, r.product_id ORDER BY r.viewed_at
                 RANGE BETWEEN make_interval(days => :window_days) PRECEDING AND CURRENT ROW)
), qualifying AS (
    -- a view that makes it min_views, in the lookback, by a customer who has not ordered in
    -- no_order_days before it (or since), never ordered the product (cancelled orders do not
    -- count), and got no code for this product within cooldown_days of it (any status)
    SELECT c.customer_id, c.product_id, c.view_id, c.viewed_at AS behaviour_clock, c.view_count,
           c.first_viewed_at
    FROM counted c
    WHERE c.view_count >= :min_views
      AND c.viewed_at >= :as_of - make_interval(hours => :lookback_hours)
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.orders o
          WHERE o.customer_id = c.customer_id
            AND o.ordered_at >= c.viewed_at - make_interval(days => :no_order_days)
            AND o.ordered_at <  :as_of
      )
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.orders o
          JOIN shop.order_items oi ON oi.order_id = o.order_id
          WHERE o.customer_id = c.customer_id AND oi.product_id = c.product_id
            AND o.ordered_at < :as_of
      )
      -- the cooldown; it also keeps a later run from selecting an enrolled moment again
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.enrollments e
          WHERE e.journey = :journey AND e.mode = :mode AND e.customer_id = c.customer_id::text  -- lifecycle ids are text
            AND e.context ->> 'product_id' = c.product_id::text
            AND e.entered_at > c.viewed_at - make_interval(days => :cooldown_days)
            AND e.entered_at < c.viewed_at + make_interval(days => :cooldown_days)
      )
), picked AS (
    -- several qualifying views of one product at once: the earliest is the moment
    SELECT DISTINCT ON (q.customer_id, q.product_id) q.*
    FROM qualifying q
    ORDER BY q.customer_id, q.product_id, q.behaviour_clock, q.view_id
)
SELECT p.customer_id || ':' || p.product_id || ':'
           || to_char(p.behaviour_clock AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS behaviour_key,
       p.customer_id,
       cu.email,
       cu.first_name,
       p.product_id,
       pr.name                          AS product_name,
       pr.sku,
       pr.image_url,
       pr.price,
       :shop_url || '/p/' || pr.sku     AS product_url,
       p.behaviour_clock,
       p.first_viewed_at,
       p.view_count
FROM picked p
JOIN shop.customers cu ON cu.customer_id = p.customer_id
JOIN shop.products pr ON pr.product_id = p.product_id
