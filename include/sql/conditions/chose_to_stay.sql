-- The customer answered "Yes, keep me subscribed" (win_back email_3 → the unsubscribe
-- service's /preferences page, recorded in lifecycle.preference_choices) for email after
-- entering the journey and before the run's as_of. win_back exits them with this reason
-- before its stop_emailing sunset, so they are never suppressed.
SELECT e.enrollment_id,
       min(pc.chosen_at) AS occurred_at
FROM enrollments e
JOIN lifecycle.preference_choices pc
  ON pc.customer_id = e.customer_id::text  -- lifecycle ids are text
 AND pc.channel = 'email'
 AND pc.choice = 'stay'
 AND pc.chosen_at >= e.entered_at
 AND pc.chosen_at < :as_of
GROUP BY e.enrollment_id
