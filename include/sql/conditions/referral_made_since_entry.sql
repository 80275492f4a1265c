-- The customer referred someone (a shop.referrals row with them as the referrer, converted
-- or not) at or after entering the journey and before the run's as_of. The entry run saw
-- everything before its as_of, so a referral at entered_at itself is already "since entry".
SELECT e.enrollment_id,
       min(r.created_at) AS occurred_at
FROM enrollments e
JOIN shop.referrals r
  ON r.referrer_customer_id = e.customer_id
 AND r.created_at >= e.entered_at
 AND r.created_at < :as_of
GROUP BY e.enrollment_id
