-- One request to the open pixel or the click redirect -> its lifecycle.engagement row
-- (lifecycle.tracking.record). Journey, mode, step, channel and customer come from the message
-- the signed token names: a message that no longer exists writes nothing. A human click on a
-- message without a human open yet also records that open (it was read: images were off, or the
-- click came from the text part or an SMS); the caller holds a per-message lock, so two clicks
-- at once add one open.
WITH m AS (
    SELECT message_id, journey, mode, step, channel, customer_id::text AS customer_id
    FROM lifecycle.messages
    WHERE message_id = :message_id
), hit AS (
    INSERT INTO lifecycle.engagement
        (message_id, journey, mode, step, channel, customer_id, kind, url, agent_class, occurred_at)
    SELECT message_id, journey, mode, step, channel, customer_id, :kind, :url, :agent_class, :occurred_at
    FROM m
    RETURNING engagement_id
), implied_open AS (
    INSERT INTO lifecycle.engagement
        (message_id, journey, mode, step, channel, customer_id, kind, url, agent_class, occurred_at)
    SELECT message_id, journey, mode, step, channel, customer_id, 'open', NULL, 'human', :occurred_at
    FROM m
    WHERE :kind = 'click' AND :agent_class = 'human'
      AND NOT EXISTS (SELECT 1 FROM lifecycle.engagement e
                      WHERE e.message_id = m.message_id AND e.kind = 'open' AND e.is_human)
    RETURNING engagement_id
)
SELECT (SELECT count(*) FROM hit) AS recorded, (SELECT count(*) FROM implied_open) AS implied_opens
