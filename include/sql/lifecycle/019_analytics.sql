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

-- The variant of a new message: the decided winner if the step's test has one, else the
-- variant whose share of the cumulated weights (in the order listed) holds the bucket.
-- names NULL (a step without variants, an exit message): NULL.
CREATE OR REPLACE FUNCTION lifecycle.assign_variant(
    journey text, mode text, step text, customer_id text, names text[], weights double precision[]
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN names IS NULL THEN NULL ELSE coalesce(
        (SELECT d.winner FROM lifecycle.ab_decisions d
          WHERE d.journey = assign_variant.journey AND d.mode = assign_variant.mode
            AND d.step = assign_variant.step AND d.winner IS NOT NULL),
        (SELECT w.name
           FROM (SELECT u.name, u.ord,
                        sum(u.weight) OVER (ORDER BY u.ord) / sum(u.weight) OVER () AS upper_edge
                   FROM unnest(names, weights) WITH ORDINALITY AS u(name, weight, ord)) w
          WHERE lifecycle.variant_bucket(assign_variant.journey, assign_variant.step,
                                         assign_variant.customer_id) < w.upper_edge
          ORDER BY w.ord
          LIMIT 1)) END
$$;

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
--                 condition, suppressed, expired, ...); on the journey's row (step NULL) the cohort
--   sent          handed to the provider: sent, or failed after a claim (attempts > 0); dry mode: dry_run
--   delivered     accepted by the provider (status sent); dry mode: dry_run
--   opened        messages with at least one human open (lifecycle.engagement.is_human)
--   clicked       messages with at least one human click
--   converted     conversions credited to a message of the row (attributed_conversions); on the
--                 journey's row the unattributed ones, so a journey's rows add up to all its conversions
--   revenue       their revenue (an order counted once per journey)
--   unsubscribed  unsubscribes credited to a message of the row: the customer's last message on that
--   complained    channel sent at or before the suppression (any journey; ties: larger message_id)
-- Action rows (a `suppress` step: no template) are not messages and are left out.
CREATE OR REPLACE FUNCTION lifecycle.funnel(
    since timestamptz, until timestamptz, mode text DEFAULT 'live', journey text DEFAULT NULL,
    windows jsonb DEFAULT '{}', default_window double precision DEFAULT 604800
) RETURNS TABLE (journey text, step text, variant text, entered bigint, sent bigint, delivered bigint,
                 opened bigint, clicked bigint, converted bigint, revenue numeric, unsubscribed bigint,
                 complained bigint)
LANGUAGE sql STABLE
AS $$
    WITH cohort AS (
        SELECT e.enrollment_id, e.journey
        FROM lifecycle.enrollments e
        WHERE e.mode = funnel.mode AND NOT e.holdout
          AND e.entered_at >= funnel.since AND e.entered_at < funnel.until
          AND (funnel.journey IS NULL OR e.journey = funnel.journey)
    ), msgs AS (
        SELECT m.message_id, m.enrollment_id, m.journey, m.step, m.variant, m.status, m.attempts, m.channel,
               m.customer_id, m.sent_at
        FROM lifecycle.messages m
        JOIN cohort c ON c.enrollment_id = m.enrollment_id
        WHERE m.template IS NOT NULL
    ), eng AS (
        SELECT g.message_id, bool_or(g.kind = 'open') AS opened, bool_or(g.kind = 'click') AS clicked
        FROM lifecycle.engagement g
        WHERE g.is_human AND g.message_id IN (SELECT msgs.message_id FROM msgs)
        GROUP BY g.message_id
    ), conv AS (
        SELECT a.journey, a.message_id, count(*) AS converted,
               coalesce(sum(a.revenue) FILTER (WHERE a.counts_revenue), 0) AS revenue
        FROM lifecycle.attributed_conversions(funnel.since, funnel.until, funnel.mode, funnel.journey,
                                              funnel.windows, funnel.default_window) a
        WHERE NOT a.holdout
        GROUP BY a.journey, a.message_id
    ), quits AS (
        -- each unsubscribe or complaint, credited to the customer's last message on its channel
        SELECT last.message_id, s.reason
        FROM lifecycle.suppressions s
        CROSS JOIN LATERAL (
            SELECT m.message_id FROM lifecycle.messages m
            WHERE m.customer_id = s.customer_id AND m.channel = s.channel AND m.mode = funnel.mode
              AND m.status = 'sent' AND m.sent_at <= s.since
            ORDER BY m.sent_at DESC, m.message_id DESC
            LIMIT 1
        ) last
        WHERE s.reason IN ('unsubscribe', 'complaint')
    ), per_message AS (
        SELECT msgs.journey, msgs.step, msgs.variant, msgs.enrollment_id,
               (msgs.status = 'sent' OR (msgs.status = 'failed' AND msgs.attempts > 0)
                OR msgs.status = 'dry_run') AS sent,
               msgs.status IN ('sent', 'dry_run') AS delivered,
               coalesce(eng.opened, false) AS opened, coalesce(eng.clicked, false) AS clicked,
               coalesce(conv.converted, 0) AS converted, coalesce(conv.revenue, 0) AS revenue,
               (SELECT count(*) FROM quits q WHERE q.message_id = msgs.message_id AND q.reason = 'unsubscribe') AS unsub,
               (SELECT count(*) FROM quits q WHERE q.message_id = msgs.message_id AND q.reason = 'complaint') AS compl
        FROM msgs
        LEFT JOIN eng ON eng.message_id = msgs.message_id
        LEFT JOIN conv ON conv.message_id = msgs.message_id
    )
    SELECT p.journey, p.step, p.variant, count(DISTINCT p.enrollment_id), count(*) FILTER (WHERE p.sent),
           count(*) FILTER (WHERE p.delivered), count(*) FILTER (WHERE p.opened),
           count(*) FILTER (WHERE p.clicked), sum(p.converted)::bigint, sum(p.revenue),
           sum(p.unsub)::bigint, sum(p.compl)::bigint
    FROM per_message p
    GROUP BY p.journey, p.step, p.variant
    UNION ALL
    -- the journey's own row: who entered, and the conversions no click explains
    SELECT c.journey, NULL, NULL, count(*), 0, 0, 0, 0,
           coalesce((SELECT v.converted FROM conv v WHERE v.journey = c.journey AND v.message_id IS NULL), 0),
           coalesce((SELECT v.revenue FROM conv v WHERE v.journey = c.journey AND v.message_id IS NULL), 0),
           0, 0
    FROM cohort c
    GROUP BY c.journey
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
-- One row per message of the step in the cohort that went out (sent, or dry_run in dry mode),
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
    SELECT m.message_id, m.variant, coalesce(m.sent_at, m.updated_at),
           EXISTS (SELECT 1 FROM lifecycle.engagement g
                   WHERE g.message_id = m.message_id AND g.kind = 'click' AND g.is_human),
           c.enrollment_id IS NOT NULL,
           coalesce(c.revenue, 0)
    FROM lifecycle.messages m
    JOIN lifecycle.enrollments e ON e.enrollment_id = m.enrollment_id
    LEFT JOIN lifecycle.conversions c
           ON c.enrollment_id = m.enrollment_id AND c.converted_at >= coalesce(m.sent_at, m.updated_at)
    WHERE m.journey = ab_exposures.journey AND m.step = ab_exposures.step AND m.mode = ab_exposures.mode
      AND e.entered_at >= ab_exposures.since AND e.entered_at < ab_exposures.until
      AND m.variant IS NOT NULL AND m.status IN ('sent', 'dry_run')
      AND NOT EXISTS (SELECT 1 FROM lifecycle.ab_decisions d
                      WHERE d.journey = m.journey AND d.mode = m.mode AND d.step = m.step
                        AND m.created_at >= d.decided_at)
    ORDER BY coalesce(m.sent_at, m.updated_at), m.message_id
$$;
