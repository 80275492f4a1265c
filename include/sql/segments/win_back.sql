/* ---
journey: win_back
status: live
description: >
  Bring back customers whose last order is at least 90 days old: a personal discount,
  a reminder a week later, then a "do you still want to hear from us?" a week after that.
  No order 7 days after the third email: we stop emailing them (suppressed).
schedule: daily
entry_key: lapse_key           # customer + last order: after a new order they can lapse again
entered_at: lapsed_at          # the day the 90 days ran out
params:
  lapsed_days: 90
steps:
  - name: email_1
    after: 0h
    channel: email
    template: win_back/email_1
    coupon: {percent_off: 15, valid_days: 14, prefix: WB}
  - {name: email_2, after: 7d, channel: email, template: win_back/email_2}
  - {name: email_3, after: 14d, channel: email, template: win_back/email_3}
  - {name: stop_emailing, after: 21d, action: suppress, channel: email}
exit:
  - when: purchased_since_entry
    then: {channel: email, template: win_back/thank_you}
  - when: chose_to_stay          # "Yes, keep me subscribed" in email_3: no sunset for them
    status: exited
--- */

-- Who qualifies: customers with at least one (non-cancelled) order, whose most recent
-- order is at least lapsed_days old as of the run. The clock starts when the 90 days ran
-- out, or at the start of this interval for customers who lapsed before we first looked.
-- The last order is the latest (ordered_at, order_id): of two orders placed at the same
-- instant, the larger id came last (README, "Ties"), so the lapse key never changes.
-- A lapse already enrolled keeps the clock and the day count it entered with (read from its
-- enrollment): a lapsed customer is selected every day until they order, and values that moved
-- with the run's date would rewrite every enrollment's context every day.
WITH last_orders AS (
    SELECT DISTINCT ON (o.customer_id)
           o.customer_id,
           o.order_id                                      AS last_order_id,
           o.ordered_at                                    AS last_order_at,
           count(*) OVER (PARTITION BY o.customer_id)      AS orders_count
    FROM lifecycle.orders o
    WHERE o.ordered_at < :as_of
    ORDER BY o.customer_id, o.ordered_at DESC, o.order_id DESC
)
SELECT l.customer_id || ':' || l.last_order_id                                   AS lapse_key,
       l.customer_id,
       c.email,
       c.first_name,
       coalesce(en.entered_at,
                greatest(l.last_order_at + make_interval(days => :lapsed_days), :interval_start)) AS lapsed_at,
       l.last_order_id,
       l.last_order_at,
       l.orders_count,
       -- as of the run that enrolled the lapse (the one that sends email_1)
       extract(day FROM coalesce(en.enrolled_at, :as_of) - l.last_order_at)::int AS days_since_last_order
FROM last_orders l
JOIN shop.customers c USING (customer_id)
LEFT JOIN lifecycle.enrollments en
       ON en.journey = :journey AND en.mode = :mode
      AND en.enrollment_key = l.customer_id || ':' || l.last_order_id
WHERE l.last_order_at <= :as_of - make_interval(days => :lapsed_days)
