/* ---
journey: browse_abandonment
status: live
description: >
  Known customers who looked closely at a product in one session (at least min_seconds on it
  in total, or min_views views of it) and neither carted nor ordered it after first viewing it.
  An email 2 hours after the session's last view with the last viewed of those products (never
  one carted or ordered) and a few complementary ones; a second touch 24 hours later (web push
  if the customer has a live push subscription, else email). At most one enrollment per
  customer per cooldown_days. An order after entry exits as a conversion; a cart change after
  entry exits without one.
schedule: hourly
entry_key: session_key          # one enrollment per customer and session
one_active_per_customer: false  # a customer may have several sessions in the journey at once
entered_at: browse_clock        # the session's last view + wait_hours
max_lateness: 6h
holdout_percent: 10             # a tenth of customers get no email or push: would they buy anyway? (the lift;
                                # browsers order often, so both groups have conversions to compare)
params:
  min_seconds: 60               # total seconds on one product in the session ...
  min_views: 2                  # ... or this many views of the same product
  wait_hours: 2                 # the session is abandoned this long after its last view
  cooldown_days: 7              # at most one enrollment per customer in this many days
  lookback_hours: 48            # how far back (by browse_clock) a run looks for sessions
steps:
  - {name: email_1, after: 0h, channel: email, template: browse_abandonment/email_1}
  - {name: second_touch, after: 24h, channel: [push, email], template: browse_abandonment/second_touch, ttl: 12h}
exit:
  - {when: ordered_since_browse, status: converted}   # checked first: an order is a conversion
  - {when: carted_since_browse, status: exited}       # a cart change after entry exits quietly
--- */

-- Sessions of known customers with a view in the lookback window; all their views up to as_of.
WITH recent AS (
    SELECT DISTINCT v.session_id
    FROM shop.page_views v
    WHERE v.customer_id IS NOT NULL
      AND v.viewed_at >= :as_of - make_interval(hours => :lookback_hours + :wait_hours)
      AND v.viewed_at <  :as_of
), views AS (
    SELECT v.view_id, v.customer_id, v.session_id, v.product_id, v.viewed_at, v.seconds_on_page
    FROM shop.page_views v
    JOIN recent USING (session_id)
    WHERE v.customer_id IS NOT NULL AND v.viewed_at < :as_of
), sessions AS (
    SELECT customer_id, session_id, max(viewed_at) AS last_viewed_at
    FROM views
    GROUP BY customer_id, session_id
), session_products AS (
    -- one row per product of a session: when it was first and last viewed, how closely
    SELECT v.customer_id, v.session_id, v.product_id,
           min(v.viewed_at)                    AS first_viewed_at,
           max(v.viewed_at)                    AS last_viewed_at,
           -- the id of the last view: of two views at the same instant, the larger id came later
           (array_agg(v.view_id ORDER BY v.viewed_at DESC, v.view_id DESC))[1] AS last_view_id,
           sum(coalesce(v.seconds_on_page, 0)) AS seconds,
           count(*)                            AS view_count
    FROM views v
    WHERE v.product_id IS NOT NULL
    GROUP BY v.customer_id, v.session_id, v.product_id
), abandoned_products AS (
    -- A product is abandoned only if the customer neither put it in a cart nor ordered it at or
    -- after its FIRST view in the session (and before as_of). Customers often view a product
    -- again after carting it, so "after the last view" would mail what was just carted or bought.
    -- A cart line counts from its added_at (NULL: the cart's updated_at); a cart add in the same
    -- second as the first view counts as after it.
    SELECT sp.*,
           sp.seconds >= :min_seconds OR sp.view_count >= :min_views AS looked_closely
    FROM session_products sp
    WHERE NOT EXISTS (
          SELECT 1 FROM shop.carts c JOIN shop.cart_items ci USING (cart_id)
          WHERE c.customer_id = sp.customer_id AND ci.product_id = sp.product_id
            AND coalesce(ci.added_at, c.updated_at) >= sp.first_viewed_at
            AND coalesce(ci.added_at, c.updated_at) <  :as_of
      )
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.orders o JOIN shop.order_items oi USING (order_id)
          WHERE o.customer_id = sp.customer_id AND oi.product_id = sp.product_id
            AND o.ordered_at >= sp.first_viewed_at AND o.ordered_at < :as_of
      )
), qualified AS (
    -- a session with at least one product looked at closely and then neither carted nor ordered;
    -- what happened to the session's other products does not matter (they are left out below)
    SELECT s.customer_id, s.session_id, s.last_viewed_at,
           s.last_viewed_at + make_interval(hours => :wait_hours) AS browse_clock,
           s.customer_id || ':' || s.session_id                   AS session_key
    FROM sessions s
    WHERE s.last_viewed_at + make_interval(hours => :wait_hours) <= :as_of
      AND s.last_viewed_at + make_interval(hours => :wait_hours) >  :as_of - make_interval(hours => :lookback_hours)
      AND EXISTS (
          SELECT 1 FROM abandoned_products ap
          WHERE ap.customer_id = s.customer_id AND ap.session_id = s.session_id AND ap.looked_closely
      )
), unblocked AS (
    -- the cooldown: no other enrollment of this journey (any status) within cooldown_days
    SELECT q.*
    FROM qualified q
    WHERE NOT EXISTS (
        SELECT 1 FROM lifecycle.enrollments e
        WHERE e.journey = :journey AND e.mode = :mode AND e.customer_id = q.customer_id::text  -- lifecycle ids are text
          AND e.enrollment_key <> q.session_key
          AND e.entered_at > q.browse_clock - make_interval(days => :cooldown_days)
          AND e.entered_at < q.browse_clock + make_interval(days => :cooldown_days)
    )
), picked AS (
    -- several new sessions of one customer at once: the earliest only
    SELECT u.*
    FROM unblocked u
    WHERE NOT EXISTS (
        SELECT 1 FROM unblocked u2
        WHERE u2.customer_id = u.customer_id
          AND (u2.browse_clock, u2.session_key) < (u.browse_clock, u.session_key)
          AND u2.browse_clock > u.browse_clock - make_interval(days => :cooldown_days)
    )
), viewed_products AS (
    -- the session's abandoned products (never one carted or ordered), most recently viewed first;
    -- of two last views at the same instant, the one with the larger view_id came later
    SELECT ap.customer_id, ap.session_id, ap.product_id,
           row_number() OVER (PARTITION BY ap.customer_id, ap.session_id
                              ORDER BY ap.last_viewed_at DESC, ap.last_view_id DESC) AS rank
    FROM abandoned_products ap
    JOIN picked p USING (customer_id, session_id)
), viewed AS (
    -- The viewed and the suggested products as product references: their ids, no card. The
    -- email and push get each product's card (name, image, price, link) as the shop has it when
    -- they are sent (see "Product references" in the README), so they show that day's price.
    SELECT vp.customer_id, vp.session_id,
           jsonb_agg(jsonb_build_object('product_id', vp.product_id) ORDER BY vp.rank) AS viewed,
           min(:shop_url || '/p/' || pr.sku) FILTER (WHERE vp.rank = 1) AS url
    FROM viewed_products vp
    JOIN shop.products pr USING (product_id)
    WHERE vp.rank <= 3
    GROUP BY vp.customer_id, vp.session_id
), suggestions AS (
    -- cross-sells of the shown products that the customer did not view in the session
    SELECT vp.customer_id, vp.session_id, l.linked_product_id AS product_id,
           row_number() OVER (PARTITION BY vp.customer_id, vp.session_id
                              ORDER BY min(vp.rank), l.linked_product_id) AS rank
    FROM viewed_products vp
    JOIN shop.product_links l ON l.product_id = vp.product_id AND l.kind = 'cross_sell'
    WHERE vp.rank <= 3
      AND NOT EXISTS (SELECT 1 FROM session_products seen  -- viewed (carted or not) in the session
                      WHERE seen.customer_id = vp.customer_id AND seen.session_id = vp.session_id
                        AND seen.product_id = l.linked_product_id)
    GROUP BY vp.customer_id, vp.session_id, l.linked_product_id
), suggested AS (
    SELECT s.customer_id, s.session_id,
           jsonb_agg(jsonb_build_object('product_id', s.product_id) ORDER BY s.rank) AS suggested
    FROM suggestions s
    JOIN shop.products pr USING (product_id)
    WHERE s.rank <= 2
    GROUP BY s.customer_id, s.session_id
)
SELECT p.session_key,
       p.customer_id,
       cu.email,
       cu.first_name,
       p.session_id,
       p.last_viewed_at,
       p.browse_clock,
       v.viewed,
       coalesce(g.suggested, '[]'::jsonb) AS suggested,
       v.url
FROM picked p
JOIN viewed v USING (customer_id, session_id)
LEFT JOIN suggested g USING (customer_id, session_id)
JOIN shop.customers cu ON cu.customer_id = p.customer_id
