-- Our own tracking drives the rules, not only the reports (issue 12): a human click on any of a
-- customer's messages on a channel lifts that channel's sunset (queries/lift_sunsets.sql). That
-- lookup goes by customer, channel and time (the first click since the sunset began), which
-- engagement_message (message_id, ...) cannot serve; this partial index holds only the rows that
-- may lift one (human clicks), so it stays small.
-- Conditions find tracked opens and clicks by message (engine CTE engagement_since_entry):
-- engagement_message serves those.
CREATE INDEX engagement_human_clicks ON lifecycle.engagement (customer_id, channel, occurred_at)
    WHERE kind = 'click' AND is_human;
