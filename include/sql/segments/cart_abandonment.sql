/* ---
journey: cart_abandonment
status: live
description: >
  Remind shoppers who left items in their cart: three emails at 1 hour, 24 hours and
  48 hours after the cart's last change. Ordering stops the reminders and sends a thank-you.
  A cart changed again after a reminder keeps its enrollment: the clock moves to the change,
  the reminders not yet sent are timed from it and show the cart as it is now.
schedule: hourly
entry_key: cart_id             # one enrollment per cart
one_active_per_customer: false  # a customer may have several carts in the journey at once
entered_at: cart_updated_at    # the clock the delays count from
refresh_clock: true            # ... and it moves when the cart changes again
max_lateness: 6h               # a reminder more than 6h overdue is recorded as expired, not sent
audience: {audience_id: "120000000000001"}  # Meta custom audience of current cart abandoners (ads consent only)
params:
  wait_hours: 1                # a cart counts as abandoned this long after its last change
  lookback_hours: 48           # how far back a run looks for carts it may have missed
steps:
  - name: reminder_1
    after: 1h
    channel: email
    template: cart_abandonment/reminder_1
    variants:                    # an A/B test of the subject line (README "A/B tests")
      - {name: a, weight: 50}    # the template's own subject
      - {name: b, weight: 50, subject: "{% if customer.first_name %}{{ customer.first_name }}, your{% else %}Your{% endif %} cart is saved for you"}
    ab_test: {metric: converted, baseline_rate: 0.05, mde: 0.05}  # 435 sends per variant, then decided
  - {name: reminder_2, after: 24h, channel: email, template: cart_abandonment/reminder_2}
  - {name: reminder_3, after: 48h, channel: email, template: cart_abandonment/reminder_3}
exit:
  - when: purchased_since_entry
    then: {channel: email, template: cart_abandonment/thank_you}
--- */

-- Who qualifies: a cart with at least one item, last changed at least wait_hours before the
-- run (and no more than lookback_hours before), whose customer has placed no order since
-- that change. Everything is "as of" the end of the run's interval, so backfills replay:
-- a cart changed after as_of is seen as it was then, from its items' added_at (an item
-- without added_at counts as added at the cart's updated_at).
WITH lines_then AS (
    -- the items in the cart at as_of
    SELECT c.cart_id, c.customer_id, c.updated_at, ci.product_id, ci.quantity, ci.unit_price,
           coalesce(ci.added_at, c.updated_at) AS added_at
    FROM shop.carts c
    JOIN shop.cart_items ci USING (cart_id)
    WHERE c.updated_at >= :as_of - make_interval(hours => :lookback_hours)
      AND coalesce(ci.added_at, c.updated_at) < :as_of
), carts_then AS (
    -- the cart's last change as of as_of: its updated_at, or if that is later, its last item added before
    SELECT cart_id, customer_id,
           CASE WHEN max(updated_at) < :as_of THEN max(updated_at) ELSE max(added_at) END AS updated_at
    FROM lines_then
    GROUP BY cart_id, customer_id
), abandoned AS (
    SELECT c.cart_id, c.customer_id, c.updated_at
    FROM carts_then c
    WHERE c.updated_at <  :as_of - make_interval(hours => :wait_hours)
      AND c.updated_at >= :as_of - make_interval(hours => :lookback_hours)
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.orders o
          WHERE o.customer_id = c.customer_id
            AND o.ordered_at > c.updated_at
            AND o.ordered_at < :as_of
      )
), cart_lines AS (
    -- the items of those carts only (not of every cart in the shop), each as a product
    -- reference: its id and the cart line's quantity and unit price, no card. The email gets each
    -- product's card (name, image, link) as the shop has it when the email is sent (see "Product
    -- references" in the README). Still stored as of the run: the cart's own prices (unit_price
    -- and cart_total, what the email shows); a product gone from the shop by then is left out of
    -- the items but still counts in cart_total.
    SELECT l.cart_id,
           jsonb_agg(jsonb_build_object('product_id', l.product_id, 'quantity', l.quantity,
                                        'unit_price', l.unit_price)
                     ORDER BY p.name, p.product_id) AS items,   -- same-named products: by id
           sum(l.quantity * l.unit_price) AS cart_total
    FROM abandoned a
    JOIN lines_then l USING (cart_id)
    JOIN shop.products p USING (product_id)
    GROUP BY l.cart_id
)
SELECT a.cart_id,
       a.customer_id,
       cu.email,
       cu.first_name,
       a.updated_at                          AS cart_updated_at,
       l.items,
       l.cart_total,
       :shop_url || '/cart/' || a.cart_id    AS cart_url
FROM abandoned a
JOIN cart_lines l USING (cart_id)
JOIN shop.customers cu USING (customer_id)
