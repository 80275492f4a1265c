/* ---
journey: replenishment
status: live
description: >
  Remind customers to reorder a consumable before it runs out. Each consumable product in
  an order (a product with pack_units and units_per_day) lasts quantity x pack_units /
  units_per_day days from the order. The reminder is due buffer_days (3) days before it runs
  out, minus the shipping lead time to the customer's country: the median of
  delivered_at - ordered_at over the orders delivered to that country before the run
  (default_lead_days, 3, when there are none). Example: 100 capsules at 1 a day with 5 days'
  shipping -> due on day 92 (100 - 3 - 5). One enrollment per order line; it enters the
  journey at its due moment and the reminder goes out at once. Ordering the product again
  before the reminder goes out means it is never sent (the line is not selected); ordering it
  after the reminder converts.
schedule: daily
entry_key: line_key             # order_id:product_id, one enrollment per order line
one_active_per_customer: false  # a customer may have several order lines due at once
entered_at: due_at              # the line's computed due moment (the step below is sent at once)
complete_after: 14d             # watch for the reorder until well after the pack runs out
holdout_percent: 10             # a tenth of customers get no reminder: would they reorder anyway? (lift)
params:
  buffer_days: 3                # the reminder is due this long before the supply runs out ...
  default_lead_days: 3          # ... minus the country's shipping lead time (this when unknown)
  lookback_days: 3              # catch up on reminders that came due while runs were missed
steps:
  - {name: reminder, after: 0h, channel: email, template: replenishment/reminder}
exit:
  - when: replenishment_reordered   # converted: the first later order of the same product
--- */

-- All arithmetic is in seconds (make_interval(secs => ...)), so a day is always 24 hours
-- whatever the session's time zone.
WITH lead_times AS (
    -- Shipping lead time per destination country: the median time from order to delivery
    -- of the orders delivered before the run.
    SELECT o.shipping_country AS country,
           percentile_cont(0.5) WITHIN GROUP (
               ORDER BY CAST(extract(epoch FROM o.delivered_at) - extract(epoch FROM o.ordered_at) AS float8)
           ) AS lead_secs
    FROM shop.orders o
    WHERE o.delivered_at < :as_of
      AND o.delivered_at >= o.ordered_at
      AND o.shipping_country IS NOT NULL
    GROUP BY o.shipping_country
), lines AS (
    -- Consumable order lines of non-cancelled orders placed before the run, with their due
    -- moment: order + supply - buffer - the lead time to the customer's country.
    SELECT o.order_id,
           o.customer_id,
           o.ordered_at,
           o.currency,
           oi.product_id,
           oi.quantity,
           CAST(oi.quantity * p.pack_units * 86400 / p.units_per_day AS float8)        AS supply_secs,
           coalesce(lt.lead_secs, CAST(:default_lead_days AS float8) * 86400)           AS lead_secs
    FROM lifecycle.orders o
    JOIN shop.order_items oi USING (order_id)
    JOIN shop.products p USING (product_id)
    JOIN shop.customers c ON c.customer_id = o.customer_id
    LEFT JOIN lead_times lt ON lt.country = c.country
    WHERE o.ordered_at < :as_of
      AND p.product_type = 'consumable'
      AND p.pack_units > 0
      AND p.units_per_day > 0
), due AS (
    SELECT l.*,
           l.ordered_at + make_interval(secs => l.supply_secs)                          AS runs_out_at,
           l.ordered_at + make_interval(secs => l.supply_secs
                                                - CAST(:buffer_days AS float8) * 86400
                                                - l.lead_secs)                            AS due_at
    FROM lines l
)
SELECT d.order_id || ':' || d.product_id                                  AS line_key,
       d.customer_id,
       c.email,
       c.first_name,
       d.order_id,
       d.ordered_at,
       d.quantity,
       d.product_id,
       -- The product as a product reference: its id and pack details, no card. The reminder
       -- gets the card (name, image, price, link) as the shop has it when it is sent (see
       -- "Product references" in the README), so it shows the price of the day it goes out.
       jsonb_build_object('product_id', p.product_id, 'sku', p.sku, 'pack_units', p.pack_units,
                          'units_per_day', p.units_per_day)                        AS product,
       round(CAST(d.supply_secs / 86400 AS numeric), 2)                    AS supply_days,
       round(CAST(d.lead_secs / 86400 AS numeric), 2)                      AS lead_time_days,
       d.runs_out_at,
       d.due_at,
       :shop_url || '/cart/add?sku=' || p.sku || '&quantity=' || d.quantity AS reorder_url,
       d.currency
FROM due d
JOIN shop.customers c ON c.customer_id = d.customer_id
JOIN shop.products p ON p.product_id = d.product_id
-- Due in the lookback window up to the run, and after the order itself: a pack that runs out
-- before a reorder could arrive is not reminded (the customer has only just ordered it).
WHERE d.due_at <= :as_of
  AND d.due_at > :as_of - make_interval(secs => CAST(:lookback_days AS float8) * 86400)
  AND d.due_at > d.ordered_at
  -- Ordered again (a later non-cancelled order with the same product) before the run: the
  -- customer has restocked, so this line is never reminded.
  AND NOT EXISTS (
      SELECT 1
      FROM lifecycle.orders o2
      JOIN shop.order_items oi2 ON oi2.order_id = o2.order_id AND oi2.product_id = d.product_id
      WHERE o2.customer_id = d.customer_id
        AND o2.ordered_at < :as_of
        AND (o2.ordered_at, o2.order_id) > (d.ordered_at, d.order_id)
  )
