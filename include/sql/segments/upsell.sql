/* ---
journey: upsell
status: live
description: >
  A known customer's open cart (no order since its last change) holds an item with an upsell
  link to a higher-tier product. Ten minutes after the cart's last change: the upgrade next to
  the item, with both prices, by web push if the customer can receive push, else by email.
  24 hours later one follow-up email, unless the upgrade is in the cart by then.
  Ordering the upgrade converts (the order's total is the revenue); any other order exits,
  and so does taking the item out of the cart (unless the upgrade went in instead).
  One enrollment per cart item (key cart_id:product_id) and at most one upsold item per cart:
  the one added last. A cart changed again after the upsell keeps that enrollment (no second
  upsell, the follow-up stays 24 hours after the first touch and shows the cart as it is now).
schedule: hourly
entry_key: item_key             # one enrollment per cart item: "<cart_id>:<product_id>"
one_active_per_customer: false  # a customer may have several cart items in the journey at once
entered_at: upsell_due_at       # the cart's last change + wait_minutes: the first touch is due then
max_lateness: 6h
params:
  wait_minutes: 10              # the first touch is due this long after the cart's last change
  lookback_hours: 6             # how far back (by due time) a run looks: older ones would be late anyway
steps:
  - {name: offer, after: 0m, channel: [push, email], template: upsell/offer, ttl: 12h}
  - {name: follow_up, after: 24h, channel: email, template: upsell/follow_up, unless: upsell_upgrade_in_cart}
exit:
  # checked first: an order with the upgrade converts (recorded as upsell_ordered_upgrade)
  - {when: purchased_since_entry, params: {holding: upgrade_product_id}, reason: upsell_ordered_upgrade, status: converted}
  - {when: purchased_since_entry, status: exited}      # any other order ends the journey quietly
  - {when: upsell_item_removed, status: exited}        # the item left the cart (and its upgrade did not come in)
--- */

-- Carts are read as of the run's as_of (as in cart_abandonment): a line counts from its
-- added_at (no added_at: the cart's updated_at), and a cart changed after as_of counts from
-- its last line added before as_of. Guest carts (no customer) are left out.
WITH lines_then AS (
    SELECT c.cart_id, c.customer_id, c.updated_at, ci.product_id, ci.quantity, ci.unit_price,
           coalesce(ci.added_at, c.updated_at) AS added_at
    FROM shop.carts c
    JOIN shop.cart_items ci USING (cart_id)
    WHERE c.customer_id IS NOT NULL
      AND c.updated_at >= :as_of - make_interval(hours => :lookback_hours, mins => :wait_minutes)
      AND coalesce(ci.added_at, c.updated_at) < :as_of
), carts_then AS (
    SELECT cart_id, customer_id,
           CASE WHEN max(updated_at) < :as_of THEN max(updated_at) ELSE max(added_at) END AS updated_at
    FROM lines_then
    GROUP BY cart_id, customer_id
), open_carts AS (
    -- due by as_of (and not more than lookback_hours ago), and no order since the last change
    SELECT c.cart_id, c.customer_id, c.updated_at,
           c.updated_at + make_interval(mins => :wait_minutes) AS upsell_due_at
    FROM carts_then c
    WHERE c.updated_at + make_interval(mins => :wait_minutes) <= :as_of
      AND c.updated_at + make_interval(mins => :wait_minutes) > :as_of - make_interval(hours => :lookback_hours)
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.orders o
          WHERE o.customer_id = c.customer_id
            AND o.ordered_at > c.updated_at AND o.ordered_at < :as_of
      )
), upgrades AS (
    -- Each line's upgrade: an upsell link to a higher tier that costs more than the line's
    -- price. Several links: the same product family first (the SKU without its "-T<tier>"
    -- suffix: the bigger pack, not another product), then the smallest step up.
    SELECT DISTINCT ON (l.cart_id, l.product_id)
           l.cart_id, l.customer_id, l.product_id, l.quantity, l.unit_price, l.added_at,
           o.updated_at AS cart_updated_at, o.upsell_due_at, up.product_id AS upgrade_product_id
    FROM lines_then l
    JOIN open_carts o USING (cart_id)
    JOIN shop.products p ON p.product_id = l.product_id
    JOIN shop.product_links k ON k.product_id = l.product_id AND k.kind = 'upsell'
    JOIN shop.products up ON up.product_id = k.linked_product_id
    WHERE up.tier > p.tier AND up.price > l.unit_price
    ORDER BY l.cart_id, l.product_id,
             regexp_replace(up.sku, '-T[0-9]+$', '') = regexp_replace(p.sku, '-T[0-9]+$', '') DESC,
             up.price, up.product_id
), picked AS (
    -- One item per cart. A cart with an enrollment (any status) keeps that item: a later change
    -- refreshes what it shows but never upsells a second item. Otherwise the item added last
    -- (then the dearer one). An item whose upgrade is already in the cart is not upsold.
    SELECT DISTINCT ON (u.cart_id) u.*
    FROM upgrades u
    WHERE NOT EXISTS (SELECT 1 FROM lines_then x
                      WHERE x.cart_id = u.cart_id AND x.product_id = u.upgrade_product_id)
      AND NOT EXISTS (SELECT 1 FROM lifecycle.enrollments e
                      WHERE e.journey = :journey AND e.mode = :mode AND e.customer_id = u.customer_id::text
                        AND split_part(e.enrollment_key, ':', 1) = u.cart_id::text
                        AND e.enrollment_key <> u.cart_id || ':' || u.product_id)
    ORDER BY u.cart_id, u.added_at DESC, u.unit_price DESC, u.product_id
)
SELECT k.cart_id || ':' || k.product_id              AS item_key,
       k.customer_id,
       cu.email,
       cu.first_name,
       k.cart_id,
       k.cart_updated_at,
       k.upsell_due_at,
       k.product_id,
       k.upgrade_product_id,
       -- The item and the upgrade as product references: ids and their own keys, no card. The
       -- push and emails get each one's card (name, image, link; the upgrade's price) as the
       -- shop has it when they are sent (see "Product references" in the README). The item keeps
       -- the price it has in the cart (its own `price` wins over the card's). The templates work
       -- out "only X more" from the two, so it follows the upgrade's price of the day they go out.
       jsonb_build_object('product_id', p.product_id, 'sku', p.sku, 'price', k.unit_price,
                          'quantity', k.quantity)                                     AS item,
       jsonb_build_object('product_id', up.product_id, 'sku', up.sku)                  AS upgrade,
       :shop_url || '/p/' || up.sku                   AS url,
       :shop_url || '/cart/' || k.cart_id             AS cart_url
FROM picked k
JOIN shop.products p ON p.product_id = k.product_id
JOIN shop.products up ON up.product_id = k.upgrade_product_id
JOIN shop.customers cu ON cu.customer_id = k.customer_id
