-- Opens and clicks we track ourselves (issue 12): one row per request to the tracking service's
-- open pixel (/o/<token>.gif) or click redirect (/c/<token>), or per push click reported by the
-- push service. The token is signed and names the message, so every row carries message_id:
-- engagement is attributed to the message, not guessed from customer, channel and time.
--
-- agent_class says who fetched it:
--   human            a person's mail client or browser (counted in funnels)
--   privacy_proxy    Apple Mail Privacy Protection and similar prefetchers (opens only; not counted)
--   scanner          link scanners and security gateways (not counted)
--   bot              anything else automated (not counted)
-- No address, IP or full user agent is stored: the class is enough for the funnel.
CREATE TABLE lifecycle.engagement (
    engagement_id  bigserial PRIMARY KEY,
    message_id     bigint NOT NULL REFERENCES lifecycle.messages,
    journey        text NOT NULL,
    mode           text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'dry')),
    step           text NOT NULL,
    channel        text NOT NULL,
    customer_id    text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('open', 'click')),
    url            text,                   -- the link clicked (clicks only)
    agent_class    text NOT NULL DEFAULT 'human'
                   CHECK (agent_class IN ('human', 'privacy_proxy', 'scanner', 'bot')),
    is_human       boolean GENERATED ALWAYS AS (agent_class = 'human') STORED,
    occurred_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX engagement_message ON lifecycle.engagement (message_id, kind, occurred_at);
CREATE INDEX engagement_journey_time ON lifecycle.engagement (journey, occurred_at);
