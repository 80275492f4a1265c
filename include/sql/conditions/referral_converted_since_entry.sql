-- A referral the customer made at or after entering the journey (and before the run's as_of)
-- converted: its converted_order_id is an order (not cancelled) placed before the run's as_of.
-- The first such order is the conversion: the friend's order id and total are recorded.
SELECT e.enrollment_id,
       o.ordered_at AS occurred_at,
       o.order_id,
       o.total      AS revenue
FROM enrollments e
JOIN shop.referrals r
  ON r.referrer_customer_id = e.customer_id
 AND r.created_at >= e.entered_at
 AND r.created_at < :as_of
JOIN lifecycle.orders o
  ON o.order_id = r.converted_order_id
 AND o.ordered_at < :as_of
