engagement_since_entry AS (
    -- Each enrollment's opens and clicks before the run's as_of, from both sources (a shop may have
    -- either or both). Tracked (lifecycle.engagement): only human rows (no Apple MPP prefetch, link
    -- scanner or bot), exact to the message: message_id is the enrollment's own message. Provider
    -- (shop.engagement_events): they carry no message id of ours (message_id NULL), so they are the
    -- customer's events since entry, to be matched by channel and time. {provider_events} is that
    -- table, or an empty stand-in where the warehouse has none (lifecycle.ids.provider_events).
    SELECT e.enrollment_id, 'tracked' AS source, en.message_id, en.channel, en.kind AS event, en.occurred_at
    FROM enrollments e
    JOIN lifecycle.messages m ON m.enrollment_id = e.enrollment_id
    JOIN lifecycle.engagement en ON en.message_id = m.message_id AND en.is_human AND en.occurred_at < :as_of
    UNION ALL
    SELECT e.enrollment_id, 'provider', CAST(NULL AS bigint), ev.channel, ev.event, ev.occurred_at
    FROM enrollments e
    JOIN {provider_events} ev
      ON ev.customer_id = e.customer_id AND ev.event IN ('open', 'click')
     AND ev.occurred_at >= e.entered_at AND ev.occurred_at < :as_of
)
