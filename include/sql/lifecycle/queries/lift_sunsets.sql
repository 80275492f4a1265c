-- For each active sunset (of the given customers), the first sign of life after it began and
-- before as_of: an order, or a click on the sunset's channel, from either source: one we tracked
-- (lifecycle.engagement, human only: a link scanner's or bot's click lifts nothing; it names the
-- message clicked), or the provider's (shop.engagement_events, matched by customer and channel).
-- The shop's tables are joined set-based, not looked up per row: a warehouse's click table may
-- have no index on the customer. Lifecycle ids are text: they are cast to the shop's id type, so
-- the shop's indexes stay usable (see lifecycle.ids). Our own clicks are looked up per sunset
-- (text ids, our own index engagement_human_clicks). Ties (an order and a click at the same instant) go to the order, then
-- our tracked click (it names the message), then the smaller reference. Rows are locked in
-- suppression_id order, so that parallel send batches lifting the same rows wait for each other,
-- never deadlock.
-- The order_customer and event_customer placeholders: su.customer_id in the shop tables' id types;
-- provider_events: shop.engagement_events, or an empty stand-in where the warehouse has none.
WITH sunsets AS (
    SELECT s.suppression_id, s.customer_id, s.channel, s.since
    FROM lifecycle.suppressions s
    WHERE s.reason = ANY(CAST(:liftable AS text[])) AND s.lifted_at IS NULL
      AND (CAST(:customer_ids AS text[]) IS NULL OR s.customer_id = ANY(CAST(:customer_ids AS text[])))
), signs_of_life AS (
    -- an order that counts (lifecycle.orders: not cancelled)
    SELECT su.suppression_id, o.ordered_at AS at, 'ordered' AS why, CAST(o.order_id AS text) AS ref, 1 AS rank
    FROM sunsets su
    JOIN lifecycle.orders o
      ON o.customer_id = {order_customer} AND o.ordered_at >= su.since AND o.ordered_at < :as_of
    UNION ALL
    -- the first human click we tracked on any of the customer's messages on the sunset's channel
    -- (ref: our lifecycle.messages.message_id; of two at one instant, the smaller message id).
    -- Looked up per sunset through our own index (engagement_human_clicks): a plain join let the
    -- planner, on stale statistics, rescan every click once per sunset.
    SELECT su.suppression_id, first_click.occurred_at, 'clicked', 'message ' || first_click.message_id, 2
    FROM sunsets su
    CROSS JOIN LATERAL (
        SELECT en.occurred_at, en.message_id
        FROM lifecycle.engagement en
        WHERE en.customer_id = su.customer_id AND en.channel = su.channel
          AND en.kind = 'click' AND en.is_human
          AND en.occurred_at >= su.since AND en.occurred_at < :as_of
        ORDER BY en.occurred_at, en.message_id, en.engagement_id
        LIMIT 1
    ) first_click
    UNION ALL
    -- a click on the sunset's channel reported by the provider (its own message id, if it gives one)
    SELECT su.suppression_id, ev.occurred_at, 'clicked',
           coalesce('provider message ' || ev.message_id, 'click at ' || CAST(ev.occurred_at AS text)), 3
    FROM sunsets su
    JOIN {provider_events} ev
      ON ev.customer_id = {event_customer} AND ev.channel = su.channel
     AND ev.occurred_at >= su.since AND ev.occurred_at < :as_of
    WHERE ev.event = 'click'
), comeback AS (
    SELECT DISTINCT ON (suppression_id) suppression_id, at, why, ref
    FROM signs_of_life
    ORDER BY suppression_id, at, rank, ref
), locked AS (
    SELECT s.suppression_id
    FROM lifecycle.suppressions s
    WHERE s.suppression_id IN (SELECT suppression_id FROM comeback) AND s.lifted_at IS NULL
    ORDER BY s.suppression_id
    FOR UPDATE
)
UPDATE lifecycle.suppressions s
   SET lifted_at = c.at, lifted_reason = c.why, lifted_ref = c.ref
  FROM comeback c
 WHERE s.suppression_id = c.suppression_id AND s.lifted_at IS NULL
   AND s.suppression_id IN (SELECT suppression_id FROM locked)
