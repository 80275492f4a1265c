-- The engine's own tables: the audit trail analysts query (DESIGN.md, "schema lifecycle").
-- Applied once by `lifecycle.schema.migrate`, recorded in lifecycle.schema_migrations.
-- `mode` is 'live' or 'dry': dry runs (param dry_run) keep their own lane so that a
-- preview never consumes a live idempotency key.

CREATE TABLE lifecycle.runs (
    journey           text NOT NULL,
    run_id            text NOT NULL,
    mode              text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'dry')),
    interval_start    timestamptz NOT NULL,
    interval_end      timestamptz NOT NULL,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'ok', 'held', 'failed')),
    rows_selected     integer,
    rows_valid        integer,
    rows_quarantined  integer,
    validation        jsonb,            -- GX results, one entry per expectation
    counts            jsonb,            -- messages per status, enrollments per event
    error             text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    PRIMARY KEY (journey, run_id)
);

CREATE TABLE lifecycle.enrollments (
    enrollment_id    bigserial PRIMARY KEY,
    journey          text NOT NULL,
    mode             text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'dry')),
    enrollment_key   text NOT NULL,
    customer_id      bigint NOT NULL,
    entered_at       timestamptz NOT NULL,   -- the journey clock: step delays count from here
    enrolled_at      timestamptz NOT NULL,   -- as_of of the run that enrolled the row
    enrolled_run_id  text NOT NULL,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'converted', 'exited', 'completed', 'expired')),
    current_step     text,                   -- last step planned
    next_step        text,
    next_due_at      timestamptz,
    exited_at        timestamptz,
    exit_reason      text,
    holdout          boolean NOT NULL DEFAULT false,
    variant          text,
    context          jsonb NOT NULL DEFAULT '{}',  -- the segment row: what templates show
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (journey, mode, enrollment_key)
);
CREATE INDEX enrollments_active ON lifecycle.enrollments (journey, mode, status, next_due_at);
CREATE INDEX enrollments_customer ON lifecycle.enrollments (customer_id);

CREATE TABLE lifecycle.messages (
    message_id           bigserial PRIMARY KEY,
    idempotency_key      text NOT NULL UNIQUE,  -- [dry:]journey:enrollment_key:step:channel
    journey              text NOT NULL,
    mode                 text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'dry')),
    enrollment_id        bigint NOT NULL REFERENCES lifecycle.enrollments,
    customer_id          bigint NOT NULL,
    step                 text NOT NULL,
    channel              text NOT NULL,
    template             text,
    kind                 text NOT NULL DEFAULT 'marketing' CHECK (kind IN ('marketing', 'transactional')),
    status               text NOT NULL
                         CHECK (status IN ('planned', 'claimed', 'sent', 'failed', 'skipped',
                                           'suppressed', 'expired', 'dry_run')),
    reason               text,
    due_at               timestamptz NOT NULL,  -- entered_at + step delay
    planned_for          timestamptz NOT NULL,  -- as_of of the run that planned it
    planned_run_id       text NOT NULL,
    run_id               text,                  -- run whose batches currently own the row
    batch_no             integer,
    claim_token          text,
    claimed_at           timestamptz,
    attempts             integer NOT NULL DEFAULT 0,
    provider_message_id  text,
    sent_at              timestamptz,
    payload              jsonb NOT NULL DEFAULT '{}',  -- per-message extras (coupon code, ...)
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_open_batches ON lifecycle.messages (journey, run_id, batch_no)
    WHERE status IN ('planned', 'claimed');
CREATE INDEX messages_enrollment ON lifecycle.messages (enrollment_id);

CREATE TABLE lifecycle.quarantine (
    quarantine_id   bigserial PRIMARY KEY,
    journey         text NOT NULL,
    run_id          text NOT NULL,
    mode            text NOT NULL DEFAULT 'live',
    row_number      integer NOT NULL,     -- position in the segment's result
    enrollment_key  text,
    customer_id     text,
    reasons         text[] NOT NULL,      -- e.g. {"email: not a valid address"}
    row_data        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_run ON lifecycle.quarantine (journey, run_id);

CREATE TABLE lifecycle.conversions (
    conversion_id  bigserial PRIMARY KEY,
    enrollment_id  bigint NOT NULL UNIQUE REFERENCES lifecycle.enrollments,
    journey        text NOT NULL,
    mode           text NOT NULL DEFAULT 'live',
    customer_id    bigint NOT NULL,
    condition      text NOT NULL,
    order_id       text,
    revenue        numeric(12, 2),
    converted_at   timestamptz NOT NULL,
    holdout        boolean NOT NULL DEFAULT false
);

CREATE TABLE lifecycle.suppressions (
    suppression_id  bigserial PRIMARY KEY,
    customer_id     bigint NOT NULL,
    channel         text NOT NULL,
    address         text,
    reason          text NOT NULL,     -- unsubscribe / hard_bounce / complaint / provider_opt_out / journey rule
    source          text,              -- which journey or service wrote it
    since           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, channel)
);

CREATE TABLE lifecycle.coupons (
    code           text PRIMARY KEY,
    journey        text NOT NULL,
    mode           text NOT NULL DEFAULT 'live',
    enrollment_id  bigint NOT NULL REFERENCES lifecycle.enrollments,
    step           text NOT NULL,
    customer_id    bigint NOT NULL,
    percent_off    numeric(5, 2) NOT NULL,
    valid_from     timestamptz NOT NULL,
    valid_until    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (journey, enrollment_id, step)
);
