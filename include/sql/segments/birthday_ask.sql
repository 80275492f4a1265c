/* ---
journey: birthday_ask
status: live
description: >
  Ask customers who have ordered but never told us their birthday for it (so the birthday
  journey can treat them): 3 days after their first order, then once a year on that day's
  anniversary while the birthday is still missing. At most once a year per customer.
schedule: daily
entry_key: ask_key              # customer + year number since the first ask (0, 1, ...)
entered_at: ask_due_at          # first order + ask_after_days (+ whole years)
params:
  ask_after_days: 3
steps:
  - {name: ask, after: 0h, channel: email, template: birthday_ask/ask}
--- */

-- Who qualifies: customers with no birthday on file and at least one (non-cancelled) order
-- before the run's as_of, whose ask date (first order + ask_after_days, or a whole number of
-- years after it) falls in this run's interval (interval_start, as_of]. Year arithmetic is
-- done in UTC (29 February + 1 year = 28 February), so an ask is exactly a year after the
-- previous one and no backlog is sent in one go when the journey starts: customers whose
-- ask date has passed are asked on its next anniversary.
WITH first_orders AS (
    SELECT o.customer_id,
           min(o.ordered_at) AS first_order_at,
           count(*)          AS orders_count
    FROM lifecycle.orders o
    WHERE o.ordered_at < :as_of
    GROUP BY o.customer_id
), bases AS (
    SELECT f.*,
           (f.first_order_at AT TIME ZONE 'UTC') + make_interval(days => :ask_after_days) AS base_utc
    FROM first_orders f
), candidates AS (
    SELECT b.customer_id, b.first_order_at, b.orders_count, k.years,
           (b.base_utc + make_interval(years => k.years)) AT TIME ZONE 'UTC' AS ask_due_at
    FROM bases b
    CROSS JOIN LATERAL (
        SELECT (extract(year FROM CAST(:as_of AS timestamptz) AT TIME ZONE 'UTC')
                - extract(year FROM b.base_utc))::int - d AS years
        FROM (VALUES (0), (1)) AS back(d)
    ) k
    WHERE k.years >= 0
)
SELECT c.customer_id || ':' || c.years AS ask_key,
       c.customer_id,
       cu.email,
       cu.first_name,
       c.ask_due_at,
       c.first_order_at,
       c.orders_count
FROM candidates c
JOIN shop.customers cu USING (customer_id)
WHERE cu.birthday IS NULL
  AND c.ask_due_at > :interval_start
  AND c.ask_due_at <= :as_of
