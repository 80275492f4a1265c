/* ---
journey: just_because
status: live
description: >
  Once a year, a surprise for no reason at all: customers with at least one order and email
  consent get a personal discount code on "their" day of the year. The day comes from a hash
  of the customer id, so customers are spread evenly over the year and each keeps the same
  day run after run (and the same point of the year from one year to the next). "Their day"
  is on the customer's own calendar (their time zone; an unknown zone counts as UTC). At
  most once per customer per calendar year. Redeeming the code converts.
schedule: daily
entry_key: surprise_key         # customer + calendar year: at most once per customer and year
entered_at: entered_at          # the run's as_of: the run that reaches the customer's day
complete_after: 14d             # watch redemptions for the code's whole validity
steps:
  - name: email
    after: 0h
    channel: email
    template: just_because/email
    coupon: {percent_off: 15, valid_days: 14, prefix: JB}
exit:
  - when: redeemed_coupon       # converted: the order that used the code, with its revenue
--- */

-- The customer's day in year Y: 1 January + floor(h * days_in_Y / 2^32), where h is the first
-- 32 bits of md5(customer_id as text) read as an unsigned number (0 .. 2^32 - 1). Scaling h
-- onto the year (rather than h mod 365) makes every day of a 365- or 366-day year equally
-- likely, 31 December of a leap year included, and keeps a customer's day at the same point
-- of every year (it moves by at most one day between leap and other years).
-- A run selects a customer when their day falls in (local date at interval_start, local date
-- at interval_end] on their own calendar. Consecutive runs cover consecutive local dates, so
-- each date is reached by exactly one daily run (at midnight UTC: the same date in Europe and
-- Asia, the previous date in the Americas); if a time zone's offset change skips a local
-- date, the next range holds it. The key's year is the year of that day: a customer selected
-- twice for the same year (their time zone moved west after their day) is enrolled once.
-- Customers qualify with an account, a non-cancelled order and an opted-in email consent, all
-- as of the run; one who qualifies only after their day waits for next year's.
WITH zones AS (
    SELECT name FROM pg_timezone_names
), eligible AS (
    SELECT c.customer_id,
           c.email,
           c.first_name,
           coalesce(z.name, 'UTC')                                                         AS timezone,
           (CAST(:interval_start AS timestamptz) AT TIME ZONE coalesce(z.name, 'UTC'))::date AS local_start,
           (CAST(:as_of AS timestamptz) AT TIME ZONE coalesce(z.name, 'UTC'))::date          AS local_today,
           ('x' || substr(md5(c.customer_id::text), 1, 8))::bit(32)::bigint                 AS h
    FROM shop.customers c
    LEFT JOIN zones z ON z.name = c.timezone
    WHERE c.created_at < :as_of
      AND EXISTS (
          SELECT 1 FROM shop.consents k
          WHERE k.customer_id = c.customer_id AND k.channel = 'email' AND k.status = 'opted_in'
      )
      AND EXISTS (
          SELECT 1 FROM lifecycle.orders o
          WHERE o.customer_id = c.customer_id AND o.ordered_at < :as_of
      )
), days AS (
    -- the customer's day in each local year the run's range touches (two around New Year)
    SELECT e.*,
           make_date(y.year, 1, 1)
             + (e.h * (make_date(y.year + 1, 1, 1) - make_date(y.year, 1, 1)) / 4294967296)::int AS surprise_date
    FROM eligible e
    CROSS JOIN LATERAL generate_series(extract(year FROM e.local_start + 1)::int,
                                       extract(year FROM e.local_today)::int) AS y(year)
)
SELECT d.customer_id || ':' || extract(year FROM d.surprise_date)::int AS surprise_key,
       d.customer_id,
       d.email,
       d.first_name,
       CAST(:as_of AS timestamptz)                                         AS entered_at,
       d.surprise_date,
       d.timezone
FROM days d
WHERE d.surprise_date >  d.local_start
  AND d.surprise_date <= d.local_today
