/* ---
journey: seasonal_offer
status: live
description: >
  Holiday offers, dated by the holidays package from the offers below: a Christmas offer on
  1 December to every customer with email consent, and a Thanksgiving offer 7 days before US
  Thanksgiving to customers in the US only. The send day is the customer's own calendar day
  (their time zone). Price-sensitive customers (at least half of their orders used a coupon)
  get the offer with the best-value picks, everyone else the best sellers. Three days later a
  reminder to those who neither clicked an email nor ordered since the offer. An order inside
  the offer window (from the offer until the end of the holiday) ends the journey as a
  conversion. One enrollment per customer, offer and holiday year.
schedule: daily
entry_key: offer_key            # customer:offer:holiday year
one_active_per_customer: false  # one enrollment per offer: two holidays' offers may overlap
entered_at: entered_at          # the run's as_of: the daily run that finds the send day on the customer's calendar
complete_after: 22d             # exits are watched until the window closes (Christmas: 25 days from 1 December)
# Offers: `holiday` as the holidays package names it in the `calendar` country; sent on a fixed
# day (`send_on: "MM-DD"`) or `days_before` the holiday; open until the end of the holiday
# (+ `days_after_holiday`); `countries`: all, or a list matched against the customer's country.
offers:
  - {name: christmas, holiday: Christmas Day, calendar: US, send_on: "12-01", countries: all}
  - {name: thanksgiving, holiday: Thanksgiving Day, calendar: US, days_before: 7, countries: [US]}
params:
  bestseller_days: 90           # the best sellers are counted over this many days before the run
# Behaviour segments are conditions (include/sql/conditions/), so a step can target them:
# price_sensitive picks the variant here; `when: inactive_60d` would send a step only to
# customers without an order in the last 60 days.
steps:
  - {name: offer, after: 0h, channel: email, template: seasonal_offer/offer, unless: price_sensitive}
  - {name: offer_value, after: 0h, channel: email, template: seasonal_offer/offer_value, when: price_sensitive}
  - {name: reminder, after: 3d, channel: email, template: seasonal_offer/reminder, unless: seasonal_offer_clicked_or_ordered}
exit:
  # an order inside the window: before the context's ends_at (the end of the holiday on the customer's clock)
  - {when: purchased_since_entry, params: {before: ends_at}, reason: seasonal_offer_ordered_in_window, status: converted}
--- */

-- Who qualifies: customers with email consent (and an account as of the run) whose calendar
-- day at the run's as_of, in their own time zone, is the send day of an offer for their
-- country. Each customer's day moves one day per daily run, so exactly one run selects them
-- per offer and year. An unknown time zone counts as UTC.
WITH offers AS (
    -- the header's offers for the holiday years around as_of, dated by the engine
    SELECT o.offer, o.year, o.holiday, o.holiday_date, o.send_date, o.end_date, o.countries
    FROM jsonb_to_recordset(CAST(:offers AS jsonb))
         AS o(offer text, year int, holiday text, holiday_date date, send_date date, end_date date,
              countries jsonb)
), zones AS (
    SELECT name FROM pg_timezone_names
), people AS (
    SELECT c.customer_id,
           c.email,
           c.first_name,
           c.country,
           coalesce(z.name, 'UTC')                                                  AS timezone,
           (CAST(:as_of AS timestamptz) AT TIME ZONE coalesce(z.name, 'UTC'))::date AS local_day
    FROM shop.customers c
    LEFT JOIN zones z ON z.name = c.timezone
    WHERE c.created_at < :as_of
      AND EXISTS (SELECT 1 FROM lifecycle.consent k
                  WHERE k.customer_id = c.customer_id AND k.channel = 'email' AND k.opted_in)
), due AS (
    -- countries IS NULL: the offer is for everyone
    SELECT p.customer_id, p.email, p.first_name, p.country, p.timezone,
           o.offer, o.year, o.holiday, o.holiday_date, o.send_date, o.end_date
    FROM people p
    JOIN offers o ON o.send_date = p.local_day
    WHERE o.countries IS NULL OR o.countries @> to_jsonb(p.country)
), sales AS (
    SELECT oi.product_id, sum(oi.quantity) AS units
    FROM lifecycle.orders o
    JOIN shop.order_items oi USING (order_id)
    WHERE o.ordered_at >= :as_of - make_interval(days => :bestseller_days)
      AND o.ordered_at < :as_of
    GROUP BY oi.product_id
), median AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY price) AS price FROM shop.products
), ranked AS (
    -- best sellers first (ties and unsold products by id); "value": priced at or below the median
    -- (of the run's prices: which products are value picks is chosen as of the run)
    SELECT pr.product_id,
           row_number() OVER (ORDER BY coalesce(s.units, 0) DESC, pr.product_id) AS best_rank,
           row_number() OVER (PARTITION BY pr.price <= m.price
                              ORDER BY coalesce(s.units, 0) DESC, pr.product_id) AS value_rank,
           pr.price <= m.price                                                    AS is_value
    FROM shop.products pr
    CROSS JOIN median m
    LEFT JOIN sales s USING (product_id)
), picks AS (
    -- The picks as product references: their ids, no card. The offer and the reminder get each
    -- product's card (name, image, price, link) as the shop has it when they are sent (see
    -- "Product references" in the README), so the reminder shows the prices of its own day.
    SELECT jsonb_agg(jsonb_build_object('product_id', product_id) ORDER BY best_rank)
               FILTER (WHERE best_rank <= 3) AS bestsellers,
           jsonb_agg(jsonb_build_object('product_id', product_id) ORDER BY value_rank)
               FILTER (WHERE is_value AND value_rank <= 3) AS value_picks
    FROM ranked
)
SELECT d.customer_id || ':' || d.offer || ':' || d.year          AS offer_key,
       d.customer_id,
       d.email,
       d.first_name,
       d.country,
       d.timezone,
       CAST(:as_of AS timestamptz)                               AS entered_at,
       d.offer,
       d.year                                                    AS offer_year,
       d.holiday,
       d.holiday_date,
       d.send_date,
       d.end_date - 1                                            AS last_day,
       -- the window closes at the end of its last day, on the customer's clock
       d.end_date::timestamp AT TIME ZONE d.timezone             AS ends_at,
       coalesce(p.bestsellers, '[]'::jsonb)                      AS bestsellers,
       coalesce(p.value_picks, '[]'::jsonb)                      AS value_picks
FROM due d
CROSS JOIN picks p
