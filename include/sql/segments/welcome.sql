/* ---
journey: welcome
status: live
description: >
  Welcome a new customer whose email consent is opted in and confirmed by double opt-in:
  email 1 at once with a personal first-order discount code, email 2 three days later (if
  they have not ordered yet) with the shop's bestsellers of the last 30 days and the code
  again. Their first order exits as a conversion with its revenue; the exit reason says
  whether that order used the welcome code. The welcome clock is the later of the account's
  creation and the double opt-in confirmation: a customer who confirms after signing up
  (even in a later interval) is welcomed when the confirmation arrives, provided it arrives
  within confirm_within_days of the sign-up (a much later subscription is not a sign-up).
  No email consent, an opt-out, or a confirmation still pending: never welcomed. A customer
  who already ordered before the welcome could go out is not welcomed either (a first-order
  code would come too late). One welcome per customer, ever.
schedule: hourly
entry_key: customer_id          # one enrollment per customer, ever
entered_at: welcome_at          # greatest(account created, double opt-in confirmed)
max_lateness: 6h
complete_after: 11d             # watch for the first order while the 14-day code is valid (3d + 11d)
params:
  confirm_within_days: 7        # a double opt-in later than this after the sign-up is not a sign-up
  bestseller_days: 30           # bestsellers: units sold in the last 30 days before the run ...
  bestseller_count: 4           # ... the top 4 products
steps:
  - name: email_1
    after: 0h
    channel: email
    template: welcome/email_1
    coupon: {percent_off: 10, valid_days: 14, prefix: WE}
  # Only if no order yet: the first order has exited the enrollment before this is due.
  - {name: email_2, after: 3d, channel: email, template: welcome/email_2}
exit:
  # Both are the customer's first (non-cancelled) order since the welcome, so the first rule
  # that holds tells whether it used the welcome code (lifecycle.conversions.condition).
  - when: welcome_first_order_used_code
  - when: welcome_first_order
--- */

-- Who enters: customers whose welcome clock, greatest(created_at, double_opt_in_at) of an
-- opted-in email consent, falls in this interval, with no (non-cancelled) order before the
-- run's as_of and no earlier welcome.
-- Who is selected again: welcomed customers whose next step comes due by this run, so that
-- their context (the bestsellers) is the one of the run that sends the step: the
-- bestsellers are the top bestseller_count products by units in non-cancelled orders placed
-- in the bestseller_days before that run's as_of (ties: lower product_id first).
WITH newcomers AS (
    SELECT c.customer_id, greatest(c.created_at, k.double_opt_in_at) AS welcome_at
    FROM shop.customers c
    JOIN shop.consents k
      ON k.customer_id = c.customer_id AND k.channel = 'email'
     AND k.status = 'opted_in' AND k.double_opt_in_at IS NOT NULL
    WHERE greatest(c.created_at, k.double_opt_in_at) >= :interval_start
      AND greatest(c.created_at, k.double_opt_in_at) <  :interval_end
      AND k.double_opt_in_at < c.created_at + make_interval(days => :confirm_within_days)
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.orders o
          WHERE o.customer_id = c.customer_id AND o.ordered_at < :as_of
      )
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.enrollments e
          WHERE e.journey = :journey AND e.mode = :mode AND e.customer_id = c.customer_id::text  -- lifecycle ids are text
      )
), waiting AS (
    SELECT c.customer_id, e.entered_at AS welcome_at
    FROM lifecycle.enrollments e
    JOIN shop.customers c ON c.customer_id::text = e.customer_id  -- lifecycle ids are text
    WHERE e.journey = :journey AND e.mode = :mode AND e.status = 'active'
      AND e.next_step IS NOT NULL AND e.next_due_at <= :as_of
), welcomed AS (
    SELECT customer_id, welcome_at FROM newcomers
    UNION ALL
    SELECT customer_id, welcome_at FROM waiting
), units AS (
    SELECT oi.product_id, sum(oi.quantity) AS units
    FROM lifecycle.orders o
    JOIN shop.order_items oi USING (order_id)
    WHERE o.ordered_at >= CAST(:as_of AS timestamptz) - make_interval(days => :bestseller_days)
      AND o.ordered_at <  :as_of
    GROUP BY oi.product_id
    ORDER BY units DESC, oi.product_id
    LIMIT :bestseller_count
), bestsellers AS (
    -- Each bestseller as a product reference: its id and units sold, no card. The email gets each
    -- product's card (name, image, price, link) as the shop has it when it is sent (see "Product
    -- references" in the README).
    SELECT coalesce(jsonb_agg(jsonb_build_object('product_id', p.product_id, 'units_sold', u.units)
                              ORDER BY u.units DESC, p.product_id), '[]'::jsonb) AS bestsellers
    FROM units u
    JOIN shop.products p USING (product_id)
)
SELECT w.customer_id,
       c.email,
       c.first_name,
       w.welcome_at,
       c.created_at                   AS signed_up_at,
       k.double_opt_in_at,
       b.bestsellers,
       CAST(:as_of AS timestamptz)    AS bestsellers_as_of
FROM welcomed w
JOIN shop.customers c USING (customer_id)
LEFT JOIN shop.consents k ON k.customer_id = w.customer_id AND k.channel = 'email'
CROSS JOIN bestsellers b
