/* ---
journey: order_notifications
status: live
description: >
  Service emails about an order: an order confirmation for every new order, and a shipping
  notice once the order has shipped (shipped_at is set). Both show the order's items (image,
  name, quantity, price) and totals; the shipping notice also shows the shipped date.
  Transactional: sent without marketing consent and despite an unsubscribe, never held out,
  never counted or capped by frequency caps, in their own send pool. Only an unusable
  address stops them: an invalid address (quarantined), a hard bounce or a spam complaint
  (suppressed). One enrollment per order and notice, "<order_id>:confirmation" and
  "<order_id>:shipping", each timed from its own event (ordered_at, shipped_at): a notice is
  sent once, by the first run after its event, and a shipping notice never exists before the
  order has shipped. Orders that are cancelled when a run sees them get neither.
schedule: hourly
kind: transactional
entry_key: notice_key           # "<order_id>:confirmation" or "<order_id>:shipping"
one_active_per_customer: false  # a customer may have several orders' notices at once
entered_at: notice_at           # ordered_at for the confirmation, shipped_at for the shipping notice
max_lateness: 24h               # equal to the lookback: a notice the runs can still see is never too late
complete_after: 0h              # nothing to watch after the notice (no exits)
# Order volume can jump on a sale day; hold only a run that selects 20 times the usual (a broken
# segment mailing every old order), never a busy day's confirmations.
volume_guard: {factor: 20, min_rows: 2000, history: 24}
params:
  lookback_hours: 24            # events this recent are picked up (a run that failed is caught up)
steps:
  # One step for both notices: the template reads row.notice (confirmation / shipping), and the
  # enrollment key tells them apart in lifecycle.messages (idempotency key <journey>:<order>:<notice>:notice:email).
  - {name: notice, after: 0h, channel: email, template: order_notifications/notice}
--- */

-- The events: an order placed, an order shipped, in the lookback window and before the run's
-- as_of. An order that is cancelled (as the shop's table says when the run reads it) gets no
-- confirmation and no shipping notice.
WITH events AS (
    SELECT o.order_id, 'confirmation' AS notice, o.ordered_at AS notice_at
    FROM lifecycle.orders o
    WHERE o.ordered_at >= :as_of - make_interval(hours => :lookback_hours)
      AND o.ordered_at <  :as_of
    UNION ALL
    SELECT o.order_id, 'shipping' AS notice, o.shipped_at AS notice_at
    FROM lifecycle.orders o
    WHERE o.shipped_at >= :as_of - make_interval(hours => :lookback_hours)
      AND o.shipped_at <  :as_of
), lines AS (
    -- the order's lines as the templates show them, with the items' subtotal
    SELECT oi.order_id,
           jsonb_agg(lifecycle.product_card(p, :shop_url)
                     || jsonb_build_object('quantity',   oi.quantity,
                                           'unit_price', oi.unit_price,
                                           'line_total', oi.quantity * oi.unit_price)
                     ORDER BY p.name, p.product_id)  AS items,
           sum(oi.quantity)                  AS units,
           sum(oi.quantity * oi.unit_price)  AS subtotal
    FROM shop.order_items oi
    JOIN shop.products p USING (product_id)
    WHERE oi.order_id IN (SELECT order_id FROM events)
    GROUP BY oi.order_id
), zones AS (
    SELECT name FROM pg_timezone_names
)
SELECT e.order_id || ':' || e.notice                                      AS notice_key,
       e.notice,
       e.notice_at,
       o.customer_id,
       cu.email,
       cu.first_name,
       o.order_id,
       o.ordered_at,
       -- dates as the customer reads them, in their time zone (unknown zone: UTC)
       (o.ordered_at AT TIME ZONE coalesce(z.name, 'UTC'))::date           AS ordered_on,
       o.shipped_at,
       (o.shipped_at AT TIME ZONE coalesce(z.name, 'UTC'))::date           AS shipped_on,
       o.currency,
       o.coupon_code,
       coalesce(l.items, '[]'::jsonb)                                       AS items,
       coalesce(l.units, 0)                                                 AS units,
       coalesce(l.subtotal, 0)                                              AS subtotal,
       -- what the total differs from the items by (discounts, shipping), shown when not zero
       o.total - coalesce(l.subtotal, 0)                                    AS adjustments,
       o.total,
       o.shipping_country,
       :shop_url || '/account/orders/' || lifecycle.url_escape(o.order_id::text)                        AS order_url
FROM events e
JOIN shop.orders o ON o.order_id = e.order_id
JOIN shop.customers cu ON cu.customer_id = o.customer_id
LEFT JOIN lines l ON l.order_id = e.order_id
LEFT JOIN zones z ON z.name = cu.timezone
