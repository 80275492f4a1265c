/* ---
journey: referral
status: live
description: >
  Ask active, satisfied customers to refer their friends. A customer qualifies when they have
  at least min_orders orders (cancelled ones do not count), the last one within active_days
  of the run, and never left a review below min_rating stars. They get an invitation with a
  personal referral link, shop_url/r/<code>: the code is an unguessable 15% code for the
  friend, owned by the customer (lifecycle.coupons, valid 30 days). If they have referred
  nobody 7 days later, one reminder with the same link. When a friend they referred after
  the invitation orders (shop.referrals.converted_order_id), the enrollment converts with
  that order and its revenue, and a thank-you brings the reward: the customer's own 20% code,
  valid 60 days. At most one enrollment per customer per cooldown_days.
schedule: daily
entry_key: referral_key         # customer + the day they entered (the cooldown keeps it to one per 180 days)
entered_at: entered_at          # the run's as_of: the first daily run that finds them qualified
complete_after: 23d             # referrals are watched for the friend code's 30 days (reminder at 7d + 23d)
params:
  min_orders: 2                 # at least this many orders that were not cancelled ...
  active_days: 30               # ... the last one at most this many days before the run
  min_rating: 4                 # no review below this many stars, ever
  cooldown_days: 180            # at most one enrollment per customer in this many days
steps:
  # The code is the friend's discount and the key of the link: the shop resolves /r/<code> to
  # its owner (lifecycle.coupons.customer_id) and records the referral in shop.referrals.
  - name: invite
    after: 0h
    channel: email
    template: referral/invite
    coupon: {percent_off: 15, valid_days: 30, prefix: REF}
  - {name: reminder, after: 7d, channel: email, template: referral/reminder, unless: referral_made_since_entry}
exit:
  # A referral made since the invitation whose friend placed an order (not cancelled): the first
  # such order converts. The thank-you carries the reward, a code of the customer's own.
  - when: referral_converted_since_entry
    then:
      channel: email
      template: referral/thank_you
      coupon: {percent_off: 20, valid_days: 60, prefix: RWD}
--- */

-- Who qualifies, as of the run's as_of: customers with an order (not cancelled) in the last
-- active_days, then among them those with at least min_orders such orders in all, no review
-- below min_rating stars, and no other enrollment in this journey within cooldown_days.
WITH recent AS (
    -- only customers who ordered recently are counted (an index range on ordered_at)
    SELECT DISTINCT o.customer_id
    FROM lifecycle.orders o
    WHERE o.ordered_at >= :as_of - make_interval(days => :active_days)
      AND o.ordered_at <  :as_of
), history AS (
    SELECT o.customer_id,
           o.customer_id || ':' || to_char(CAST(:as_of AS timestamptz) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS referral_key,
           count(*) AS orders_count, max(o.ordered_at) AS last_ordered_at
    FROM lifecycle.orders o
    JOIN recent USING (customer_id)
    WHERE o.ordered_at < :as_of
    GROUP BY o.customer_id
), satisfied AS (
    SELECT h.*
    FROM history h
    WHERE h.orders_count >= :min_orders
      AND NOT EXISTS (
          SELECT 1 FROM shop.reviews r
          WHERE r.customer_id = h.customer_id
            AND r.created_at < :as_of
            AND r.rating < :min_rating
      )
      -- the cooldown: no other enrollment of this journey (any status) within cooldown_days
      -- either side of this run (a backfill of an older run respects later enrollments too)
      AND NOT EXISTS (
          SELECT 1 FROM lifecycle.enrollments e
          WHERE e.journey = :journey AND e.mode = :mode AND e.customer_id = h.customer_id::text  -- lifecycle ids are text
            AND e.enrollment_key <> h.referral_key
            AND e.entered_at > :as_of - make_interval(days => :cooldown_days)
            AND e.entered_at < :as_of + make_interval(days => :cooldown_days)
      )
)
SELECT s.referral_key,
       s.customer_id,
       cu.email,
       cu.first_name,
       CAST(:as_of AS timestamptz)          AS entered_at,
       s.orders_count,
       s.last_ordered_at,
       :shop_url || '/r/'                   AS referral_base_url,   -- + the invite's code
       :shop_url || '/account/referrals'    AS referrals_page_url   -- the customer's referrals and rewards
FROM satisfied s
JOIN shop.customers cu USING (customer_id)
