-- Ad audiences kept in step with journeys (lifecycle/audiences.py: sync_audience).
-- One row each time a customer's hashed identifiers were confirmed added to an audience by
-- the platform; removed_at is set once the platform confirmed their removal. The current
-- members of an audience are its rows with removed_at IS NULL: what the next sync diffs
-- against, so a replay sends only what was never confirmed. Hashes only, never addresses.

CREATE TABLE lifecycle.audience_members (
    member_id           bigserial PRIMARY KEY,
    platform            text NOT NULL DEFAULT 'meta',
    audience_id         text NOT NULL,
    journey             text NOT NULL,              -- the journey that keeps this audience
    customer_id         bigint NOT NULL,
    email_sha256        text CHECK (email_sha256 ~ '^[0-9a-f]{64}$'),
    phone_sha256        text CHECK (phone_sha256 ~ '^[0-9a-f]{64}$'),
    added_at            timestamptz NOT NULL DEFAULT now(),
    added_session_id    bigint,                     -- the upload session and batch that carried the add
    added_batch_seq     integer,
    removed_at          timestamptz,
    removed_session_id  bigint,
    removed_batch_seq   integer,
    remove_reason       text,                       -- left_journey / no_ads_consent / suppressed /
                                                    -- contact_changed / no_identifiers
    CHECK (email_sha256 IS NOT NULL OR phone_sha256 IS NOT NULL),
    CHECK ((removed_at IS NULL) = (remove_reason IS NULL))
);
CREATE UNIQUE INDEX audience_members_current
    ON lifecycle.audience_members (platform, audience_id, customer_id) WHERE removed_at IS NULL;
CREATE INDEX audience_members_customer ON lifecycle.audience_members (customer_id);
