-- What each journey earns (issue 12): A/B variants on messages, the audit of A/B decisions, and
-- the read-only functions behind lifecycle/analytics.py (funnels, holdout lift, A/B tests).
-- The statistics (intervals, sample sizes, decisions) are computed in Python on what these return.
--
-- Cohort: every function reads the enrollments that ENTERED in [since, until) (entered_at, the
-- journey clock), in one mode, and follows them: their messages, the engagement and conversions
-- of those messages whenever they happened. A report of a past week therefore grows while late
-- clicks and conversions arrive, and the denominators (who entered, who was held out) are fixed.

-- A/B variants -------------------------------------------------------------------------------
-- The variant a message was assigned (a step's `variants:`); NULL for steps without variants.
ALTER TABLE lifecycle.messages ADD COLUMN variant text;

-- One row per (journey, mode, step) once its A/B test's decision rule was met (`winner: auto`):
-- from then on new messages of the step get `winner` (NULL: the test ended without a winner and
-- the split goes on). Never updated: the decision and the figures it was made on stay as made.
CREATE TABLE lifecycle.ab_decisions (
    decision_id  bigserial PRIMARY KEY,
    journey      text NOT NULL,
    mode         text NOT NULL DEFAULT 'live' CHECK (mode IN ('live', 'dry')),
    step         text NOT NULL,
    winner       text,                  -- the variant new sends switch to; NULL: no winner
    decision     text NOT NULL,         -- the sentence the rule produced
    rule         text NOT NULL,         -- the rule, as stated to the analyst
    stats        jsonb NOT NULL,        -- per variant n/converted/rate, difference, interval, required n
    run_id       text,                  -- the run that decided
    decided_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (journey, mode, step)
);

-- A stable number in [0, 1) per (journey, step, customer): 52 bits of md5, so every re-run and
-- backfill puts a customer in the same variant, and two steps' tests are independent.
CREATE OR REPLACE FUNCTION lifecycle.variant_bucket(journey text, step text, customer_id text)
RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT (('x' || substr(md5(journey || ':' || step || ':' || customer_id), 1, 13))::bit(52)::bigint)::double precision
           / 4503599627370496.0   -- 2^52
$$;

-- Where each variant's share starts in [0, 1): the cumulated weights before it over their sum, in
-- the order listed ({1, 1} -> {0, 0.5}). Evaluated once per statement (constant arguments).
CREATE OR REPLACE FUNCTION lifecycle.variant_edges(weights double precision[])
RETURNS double precision[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT array_agg(w.below / w.total ORDER BY w.ord)
    FROM (SELECT u.ord, coalesce(sum(u.weight) OVER (ORDER BY u.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS below,
                 sum(u.weight) OVER () AS total
          FROM unnest(weights) WITH ORDINALITY AS u(weight, ord)) w
$$;

-- The variant whose share holds the customer's bucket. One expression: PostgreSQL inlines it into
-- the plan's INSERT and computes variant_edges once (no function call per row).
CREATE OR REPLACE FUNCTION lifecycle.pick_variant(
    journey text, step text, customer_id text, names text[], weights double precision[]
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT names[width_bucket(lifecycle.variant_bucket(journey, step, customer_id), lifecycle.variant_edges(weights))]
$$;

-- The variant of a new message (plan.insert_messages, lifecycle/variants.py ASSIGN_SQL): the
-- decided winner if the step's test has one (lifecycle.ab_decisions, looked up once per INSERT),
-- else pick_variant. Measured: 8 us per planned row (md5 alone: 5 us), 200k rows in 1.7 s.

-- Attribution ----------------------------------------------------------------------------------
-- Each conversion of the cohort, credited to the LAST human click on a message of the same
-- enrollment at or before the conversion and no earlier than the journey's conversion window
-- (`windows`: {"journey": seconds}, from each journey's complete_after; `default_window` seconds
-- otherwise). Ties: of clicks at the same instant, the one on the larger message_id (the message
-- planned later) wins, then the larger engagement_id. No such click: message_id NULL
-- (unattributed). `counts_revenue`: one order that converted several enrollments of a journey
-- (two carts, one order) adds its revenue once, to the first conversion (converted_at, enrollment_id).
CREATE OR REPLACE FUNCTION lifecycle.attributed_conversions(
    since timestamptz, until timestamptz, mode text, journey text,
    windows jsonb DEFAULT '{}', default_window double precision DEFAULT 604800
) RETURNS TABLE (enrollment_id bigint, journey text, customer_id text, holdout boolean, converted_at timestamptz,
                 revenue numeric, counts_revenue boolean, message_id bigint, clicked_at timestamptz)
LANGUAGE sql STABLE
AS $$
    WITH conv AS (
        SELECT c.enrollment_id, c.journey, c.customer_id, c.holdout, c.converted_at, c.order_id,
               coalesce(c.revenue, 0) AS revenue
        FROM lifecycle.conversions c
        JOIN lifecycle.enrollments e ON e.enrollment_id = c.enrollment_id
        WHERE e.mode = attributed_conversions.mode
          AND e.entered_at >= attributed_conversions.since AND e.entered_at < attributed_conversions.until
          AND (attributed_conversions.journey IS NULL OR e.journey = attributed_conversions.journey)
    ), firsts AS (
        SELECT DISTINCT ON (conv.journey, coalesce(conv.order_id, 'enrollment:' || conv.enrollment_id))
               conv.enrollment_id
        FROM conv
        ORDER BY conv.journey, coalesce(conv.order_id, 'enrollment:' || conv.enrollment_id),
                 conv.converted_at, conv.enrollment_id
    )
    SELECT conv.enrollment_id, conv.journey, conv.customer_id, conv.holdout, conv.converted_at, conv.revenue,
           conv.enrollment_id IN (SELECT f.enrollment_id FROM firsts f), last_click.message_id, last_click.occurred_at
    FROM conv
    LEFT JOIN LATERAL (
        SELECT g.message_id, g.occurred_at
        FROM lifecycle.messages m
        JOIN lifecycle.engagement g ON g.message_id = m.message_id
        WHERE m.enrollment_id = conv.enrollment_id
          AND g.kind = 'click' AND g.is_human
          AND g.occurred_at <= conv.converted_at
          AND g.occurred_at >= conv.converted_at - make_interval(secs =>
                coalesce((attributed_conversions.windows ->> conv.journey)::double precision,
                         attributed_conversions.default_window))
        ORDER BY g.occurred_at DESC, g.message_id DESC, g.engagement_id DESC
        LIMIT 1
    ) last_click ON true
$$;

-- Funnels ----------------------------------------------------------------------------------------
-- Per journey, step and variant, for the cohort's treated (not held-out) enrollments:
--   entered       enrollments that reached the step (a message row of any status: sent, skipped by a
--                 condition, suppressed, expired, ...; a fallback to another channel is not counted
--                 again); on the journey's row (step NULL) the cohort
--   sent          handed to the provider: sent, or failed after a claim (attempts > 0); dry mode: dry_run
--   delivered     accepted by the provider (status sent); dry mode: dry_run
--   opened        messages with at least one human open (lifecycle.engagement.is_human)
--   clicked       messages with at least one human click
--   converted     conversions credited to a message of the row (attributed_conversions); on the
--                 journey's row the unattributed ones, so a journey's rows add up to all its conversions
--   revenue       their revenue (an order counted once per journey)
--   unsubscribed  unsubscribes credited to a message of the row: the customer's last marketing message
--   complained    on that channel sent at or before the suppression (any journey; ties: larger message_id)
-- Action rows (a `suppress` step: no template) are not messages and are left out.
CREATE OR REPLACE FUNCTION lifecycle.funnel(
    since timestamptz, until timestamptz, mode text DEFAULT 'live', journey text DEFAULT NULL,
    windows jsonb DEFAULT '{}', default_window double precision DEFAULT 604800
) RETURNS TABLE (journey text, step text, variant text, entered bigint, sent bigint, delivered bigint,
                 opened bigint, clicked bigint, converted bigint, revenue numeric, unsubscribed bigint,
                 complained bigint)
LANGUAGE sql STABLE
SET work_mem = '32MB'  -- a report over every message of the period: hash, don't spill
AS $$
    WITH eng AS (
        -- human opens and clicks per message; a cohort's messages are sent after `since`, so are
        -- their opens and clicks (index engagement_journey_time)
        SELECT g.message_id, bool_or(g.kind = 'open') AS opened, bool_or(g.kind = 'click') AS clicked
        FROM lifecycle.engagement g
        WHERE g.is_human AND g.mode = funnel.mode AND g.occurred_at >= funnel.since
          AND (funnel.journey IS NULL OR g.journey = funnel.journey)
        GROUP BY g.message_id
    ), conv AS (
        SELECT a.journey, a.message_id, count(*) AS converted,
               coalesce(sum(a.revenue) FILTER (WHERE a.counts_revenue), 0) AS revenue
        FROM lifecycle.attributed_conversions(funnel.since, funnel.until, funnel.mode, funnel.journey,
                                              funnel.windows, funnel.default_window) a
        WHERE NOT a.holdout
        GROUP BY a.journey, a.message_id
    ), quits AS (
        -- each unsubscribe or complaint, credited to the customer's last marketing message on its
        -- channel (index messages_sent_by_customer), then counted per message
        SELECT last.message_id, count(*) FILTER (WHERE s.reason = 'unsubscribe') AS unsub,
               count(*) FILTER (WHERE s.reason = 'complaint') AS compl
        FROM lifecycle.suppressions s
        CROSS JOIN LATERAL (
            SELECT m.message_id FROM lifecycle.messages m
            WHERE m.customer_id = s.customer_id AND m.channel = s.channel AND m.mode = funnel.mode
              AND m.status = 'sent' AND m.kind = 'marketing' AND m.template IS NOT NULL AND m.sent_at <= s.since
            ORDER BY m.sent_at DESC, m.message_id DESC
            LIMIT 1
        ) last
        WHERE s.reason IN ('unsubscribe', 'complaint')
        GROUP BY last.message_id
    )
    SELECT m.journey, m.step, m.variant,
           -- one message per enrollment and step, apart from fallbacks to another channel
           count(*) FILTER (WHERE m.fallback_of IS NULL),
           count(*) FILTER (WHERE m.status IN ('sent', 'dry_run') OR (m.status = 'failed' AND m.attempts > 0)),
           count(*) FILTER (WHERE m.status IN ('sent', 'dry_run')),
           count(*) FILTER (WHERE eng.opened), count(*) FILTER (WHERE eng.clicked),
           coalesce(sum(conv.converted), 0)::bigint, coalesce(sum(conv.revenue), 0),
           coalesce(sum(q.unsub), 0)::bigint, coalesce(sum(q.compl), 0)::bigint
    FROM lifecycle.enrollments e
    JOIN lifecycle.messages m ON m.enrollment_id = e.enrollment_id
    LEFT JOIN eng ON eng.message_id = m.message_id
    LEFT JOIN conv ON conv.message_id = m.message_id
    LEFT JOIN quits q ON q.message_id = m.message_id
    WHERE e.mode = funnel.mode AND NOT e.holdout
      AND e.entered_at >= funnel.since AND e.entered_at < funnel.until
      AND (funnel.journey IS NULL OR e.journey = funnel.journey)
      AND m.template IS NOT NULL
    GROUP BY m.journey, m.step, m.variant
    UNION ALL
    -- the journey's own row: who entered, and the conversions no click explains
    SELECT e.journey, NULL, NULL, count(*), 0, 0, 0, 0,
           coalesce((SELECT v.converted FROM conv v WHERE v.journey = e.journey AND v.message_id IS NULL), 0),
           coalesce((SELECT v.revenue FROM conv v WHERE v.journey = e.journey AND v.message_id IS NULL), 0),
           0, 0
    FROM lifecycle.enrollments e
    WHERE e.mode = funnel.mode AND NOT e.holdout
      AND e.entered_at >= funnel.since AND e.entered_at < funnel.until
      AND (funnel.journey IS NULL OR e.journey = funnel.journey)
    GROUP BY e.journey
$$;

-- Holdout lift -----------------------------------------------------------------------------------
-- One row per customer of the cohort and group (treated / held out): whether any of their
-- enrollments in the cohort converted, and the revenue of those conversions (an order once).
-- The unit is the customer: the holdout is drawn per customer (enroll.HOLDOUT_BUCKET).
CREATE OR REPLACE FUNCTION lifecycle.lift_units(
    journey text, since timestamptz, until timestamptz, mode text DEFAULT 'live'
) RETURNS TABLE (customer_id text, holdout boolean, converted boolean, revenue numeric)
LANGUAGE sql STABLE
AS $$
    SELECT e.customer_id, e.holdout, bool_or(a.enrollment_id IS NOT NULL),
           coalesce(sum(a.revenue) FILTER (WHERE a.counts_revenue), 0)
    FROM lifecycle.enrollments e
    LEFT JOIN lifecycle.attributed_conversions(lift_units.since, lift_units.until, lift_units.mode,
                                               lift_units.journey) a ON a.enrollment_id = e.enrollment_id
    WHERE e.journey = lift_units.journey AND e.mode = lift_units.mode
      AND e.entered_at >= lift_units.since AND e.entered_at < lift_units.until
    GROUP BY e.customer_id, e.holdout
$$;

-- A/B tests --------------------------------------------------------------------------------------
-- One row per message of the step in the cohort that went out (sent, or dry_run in dry mode: its
-- send time is then the planning run's as_of),
-- with its variant and what followed: clicked (human), and whether its enrollment converted at or
-- after the send (any conversion, not only attributed ones: the variant was assigned at random,
-- so comparing conversions of whoever got each variant is a fair test). Messages of the step planned
-- after its test was decided (lifecycle.ab_decisions: every one then gets the winner) are left out.
-- Ordered by send time then message_id: the fixed-horizon rule reads the first n of each variant.
CREATE OR REPLACE FUNCTION lifecycle.ab_exposures(
    journey text, step text, since timestamptz, until timestamptz, mode text DEFAULT 'live'
) RETURNS TABLE (message_id bigint, variant text, exposed_at timestamptz, clicked boolean, converted boolean,
                 revenue numeric)
LANGUAGE sql STABLE
AS $$
    SELECT m.message_id, m.variant, coalesce(m.sent_at, m.planned_for),
           EXISTS (SELECT 1 FROM lifecycle.engagement g
                   WHERE g.message_id = m.message_id AND g.kind = 'click' AND g.is_human),
           c.enrollment_id IS NOT NULL,
           coalesce(c.revenue, 0)
    FROM lifecycle.messages m
    JOIN lifecycle.enrollments e ON e.enrollment_id = m.enrollment_id
    LEFT JOIN lifecycle.conversions c
           ON c.enrollment_id = m.enrollment_id AND c.converted_at >= coalesce(m.sent_at, m.planned_for)
    WHERE m.journey = ab_exposures.journey AND m.step = ab_exposures.step AND m.mode = ab_exposures.mode
      AND e.entered_at >= ab_exposures.since AND e.entered_at < ab_exposures.until
      AND m.variant IS NOT NULL AND m.status IN ('sent', 'dry_run')
      AND NOT EXISTS (SELECT 1 FROM lifecycle.ab_decisions d
                      WHERE d.journey = m.journey AND d.mode = m.mode AND d.step = m.step
                        AND m.created_at >= d.decided_at)
    ORDER BY coalesce(m.sent_at, m.planned_for), m.message_id
$$;
