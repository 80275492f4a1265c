-- Suppressions keep their history. A sunset (reason 'no_response', written by a journey's
-- `action: suppress` step) ends when the customer comes back: an order, a click, or "keep me
-- subscribed". Its row is then closed (lifted_at, lifted_reason, lifted_ref), never deleted,
-- and a later sunset is a new row. Only one row per (customer, channel) is active at a time.
-- Unsubscribes, hard bounces, complaints and provider opt-outs are never lifted this way.
ALTER TABLE lifecycle.suppressions
    ADD COLUMN lifted_at     timestamptz,  -- when the customer came back (the order's / click's / choice's time)
    ADD COLUMN lifted_reason text,         -- ordered / clicked / chose_to_stay
    ADD COLUMN lifted_ref    text,         -- the order id, or the click's time, or the preference choice id
    ADD CONSTRAINT suppressions_lift_recorded CHECK ((lifted_at IS NULL) = (lifted_reason IS NULL));

-- One ACTIVE suppression per customer and channel (lifted rows are history).
ALTER TABLE lifecycle.suppressions DROP CONSTRAINT suppressions_customer_id_channel_key;
CREATE UNIQUE INDEX suppressions_active ON lifecycle.suppressions (customer_id, channel)
    WHERE lifted_at IS NULL;
-- The lift check visits only active sunsets.
CREATE INDEX suppressions_active_sunsets ON lifecycle.suppressions (customer_id, channel)
    WHERE lifted_at IS NULL AND reason = 'no_response';

-- "Yes, keep me subscribed" (win_back email_3 → the unsubscribe service's /preferences page).
CREATE TABLE lifecycle.preference_choices (
    choice_id    bigserial PRIMARY KEY,
    customer_id  bigint NOT NULL,
    channel      text NOT NULL,
    choice       text NOT NULL CHECK (choice IN ('stay')),
    source       text NOT NULL,              -- e.g. preferences_page
    chosen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX preference_choices_customer ON lifecycle.preference_choices (customer_id, channel, chosen_at);
