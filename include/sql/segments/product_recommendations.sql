/* ---
journey: product_recommendations
status: live
description: >
  Once a week, customers who viewed or bought something in the last 30 days get a "picked
  for you" email with up to 4 products they have never bought, ranked by how often those
  products were bought together (in one order, over the last 90 days of orders) with what
  the customer viewed or bought. One email per customer and ISO week. An order with one of
  the picks before the next week's email converts.
schedule: weekly                # Mondays 00:00 UTC: a run's as_of is a Monday midnight
entry_key: week_key             # customer + ISO week of the run's as_of (the week the email goes out)
one_active_per_customer: false  # a new week's enrollment opens while last week's still watches for orders
entered_at: picked_at           # the run's as_of
complete_after: 7d              # watch for orders with a pick until the next weekly run
parts: 2                        # ranked in two halves at once, on two connections (each customer in one)
params:
  activity_days: 30             # "viewed or bought in the last 30 days"
  pair_days: 90                 # co-occurrence counted over this many days of orders
  max_products: 4               # up to this many picks per email
steps:
  - {name: picked_for_you, after: 0h, channel: email, template: product_recommendations/picked_for_you}
exit:
  # an order holding one of the picks (the context's products) converts
  - {when: purchased_since_entry, params: {holding: products}, reason: product_recommendations_ordered_pick, status: converted}
--- */

-- The ranking is the warehouse recommender (include/sql/lifecycle/007_recommendations.sql):
-- lifecycle.recommend_for(NULL, as_of, ...) takes every customer with a product view or a
-- (non-cancelled) order in [as_of - activity_days, as_of), scores each product by the number
-- of orders in [as_of - pair_days, as_of) that hold it together with one of the customer's
-- viewed-or-bought products (summed over those products), leaves out everything the customer
-- ever bought, and keeps the best max_products (ties: lower product_id first). Customers
-- whose products were never bought together with anything get no picks and no email. A
-- customer already enrolled for the ISO week (by an earlier run in the same week, e.g. a
-- manual re-run) is left out, so the picks they were sent, which a conversion is checked
-- against, are never replaced.
WITH picks AS (
    SELECT r.customer_id, r.product_id, r.score, r.rank
    FROM lifecycle.recommend_for(NULL, :as_of, :max_products, :activity_days, :pair_days, :part, :parts) AS r
), per_customer AS (
    -- Each pick as a product reference: its id and score, no card. The email gets each product's
    -- card (name, image, price, link) as the shop has it when the email is sent (see "Product
    -- references" in the README), so it shows that day's price, and the enrollment stays small:
    -- at 1M customers the cards made the contexts 955 bytes each and enrolling them cost 25 s.
    SELECT p.customer_id,
           jsonb_agg(jsonb_build_object('product_id', p.product_id, 'score', p.score)
                     ORDER BY p.rank, p.product_id) AS products
    FROM picks p
    GROUP BY p.customer_id
)
SELECT pc.customer_id || ':' || to_char(:as_of AT TIME ZONE 'UTC', 'IYYY-"W"IW') AS week_key,
       pc.customer_id,
       c.email,
       c.first_name,
       CAST(:as_of AS timestamptz)                                           AS picked_at,
       to_char(:as_of AT TIME ZONE 'UTC', 'IYYY-"W"IW')                      AS iso_week,
       pc.products,
       :shop_url                                                             AS shop_url
FROM per_customer pc
JOIN shop.customers c ON c.customer_id = pc.customer_id
WHERE NOT EXISTS (
    SELECT 1 FROM lifecycle.enrollments e
    WHERE e.journey = :journey AND e.mode = :mode
      AND e.enrollment_key = pc.customer_id || ':' || to_char(:as_of AT TIME ZONE 'UTC', 'IYYY-"W"IW')
)
