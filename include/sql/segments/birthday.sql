/* ---
journey: birthday
status: live
description: >
  A birthday treat a week ahead: customers whose birthday is 7 days away in their own time
  zone get an email with a personal 20% code valid 30 days, and an SMS with the same code
  when they have a mobile number and SMS consent. 29 February birthdays are celebrated on
  28 February in non-leap years. If the code is still unused 14 days later and the first
  email was opened or clicked, one follow-up. Redeeming the code converts (and so stops
  the follow-up). One enrollment per customer and celebration year.
schedule: daily
entry_key: birthday_key         # customer + celebration year: once per customer and year
entered_at: entered_at          # the run's as_of: the run that finds the birthday 7 days ahead
complete_after: 16d             # watch redemptions for the code's whole 30 days (14d + 16d)
params:
  days_ahead: 7
steps:
  - name: email
    after: 0h
    channel: email
    template: birthday/email
    coupon: {percent_off: 20, valid_days: 30, prefix: BD}
  # Same moment, same code (the enrollment's coupon). No consent or no usable mobile number
  # is recorded on the message (suppressed: no consent / skipped: missing phone ...).
  - {name: sms, after: 0h, channel: sms, template: birthday/email}   # birthday/email.sms.txt
  - {name: follow_up, after: 14d, channel: email, template: birthday/follow_up, when: opened_or_clicked_first_email}
exit:
  - when: redeemed_coupon       # converted: the order that used the birthday code, with its revenue
--- */

-- Who qualifies: customers with a birthday on file (and an account as of the run) whose
-- local date at the run's as_of, plus days_ahead, is this year's celebration date: the
-- birthday's month and day, or 28 February for a 29 February birthday in a non-leap year.
-- Each customer's local date moves one day per daily run, so exactly one run a year
-- selects them; the key's year is the celebration's year (a 2 January birthday found on
-- 26 December belongs to the next year). An unknown time zone counts as UTC, as for SMS hours.
WITH zones AS (
    SELECT name FROM pg_timezone_names
), local_days AS (
    SELECT c.customer_id,
           c.email,
           c.first_name,
           c.birthday,
           coalesce(z.name, 'UTC')                                                    AS timezone,
           (CAST(:as_of AS timestamptz) AT TIME ZONE coalesce(z.name, 'UTC'))::date
               + CAST(:days_ahead AS int)                                               AS celebration_date
    FROM shop.customers c
    LEFT JOIN zones z ON z.name = c.timezone
    WHERE c.birthday IS NOT NULL
      AND c.created_at < :as_of
)
SELECT d.customer_id || ':' || extract(year FROM d.celebration_date)::int AS birthday_key,
       d.customer_id,
       d.email,
       d.first_name,
       CAST(:as_of AS timestamptz)                                          AS entered_at,
       d.celebration_date,
       d.timezone
FROM local_days d
WHERE (extract(month FROM d.birthday) = extract(month FROM d.celebration_date)
       AND extract(day FROM d.birthday) = extract(day FROM d.celebration_date))
   OR (extract(month FROM d.birthday) = 2 AND extract(day FROM d.birthday) = 29
       -- 28 February of a non-leap year: the day before 1 March is the 28th
       AND d.celebration_date = make_date(extract(year FROM d.celebration_date)::int, 3, 1) - 1
       AND extract(day FROM d.celebration_date) = 28)
