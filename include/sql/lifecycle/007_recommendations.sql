-- The product recommender: item-to-item co-occurrence ("bought together") in the warehouse,
-- as two SQL functions any segment can call. Applied once by `lifecycle.schema.migrate`.
--
--   lifecycle.co_purchased(as_of, days)
--       One row per ordered pair of different products bought in the same order:
--       (product_id, other_product_id, orders_together) = how many non-cancelled orders placed
--       in [as_of - days, as_of) contain both. Symmetric: (a, b, n) comes with (b, a, n).
--       Pairs never bought together are absent (not 0).
--
--   lifecycle.recommend_for(customer_ids, as_of, max_items, activity_days, pair_days)
--       Up to max_items products per customer, picked from what the customer viewed or bought
--       in [as_of - activity_days, as_of) (their "seeds"):
--         score(customer, p) = sum over the customer's distinct seeds s of orders_together(s, p)
--                              in co_purchased(as_of, pair_days)
--       Products the customer has ever bought (a non-cancelled order before as_of) are never
--       picked; a product with no co-purchase with any seed has no score and is not picked, so
--       a customer may get fewer than max_items rows, or none. Ranked by score, highest first;
--       ties go to the lower product_id, so a run is reproducible. Returns
--       (customer_id, product_id, score, rank) with rank 1..max_items.
--       customer_ids NULL means every customer with a view or an order in the window; an array
--       limits the work to those customers (cheap for a handful: index lookups per customer).
--
-- Both take `as_of` and read nothing at or after it, never now(): pass the run's :as_of and
-- a backfill of an old interval sees the shop as it was. Views and orders without a customer
-- (anonymous visitors, guest checkouts) are ignored; cancelled orders count as not bought.
--
-- Examples (in a segment file):
--   -- picks for everyone active in the last 30 days (product_recommendations.sql)
--   SELECT * FROM lifecycle.recommend_for(NULL, :as_of, 4, 30, 90)
--   -- picks for a few customers, e.g. the browsers of the hour
--   SELECT * FROM lifecycle.recommend_for(ARRAY[17, 42]::bigint[], :as_of)
--   -- rank your own candidates by their co-purchases with your own seeds (cross_sell.sql does
--   -- this for an order's cross_sell links; a browsing session's products work the same way):
--   SELECT s.order_id, cp.other_product_id, sum(cp.orders_together) AS score
--   FROM seeds s JOIN lifecycle.co_purchased(:as_of, 90) cp ON cp.product_id = s.product_id
--   GROUP BY 1, 2
--
-- Speed: both are plain LANGUAGE sql STABLE functions with one SELECT, so PostgreSQL inlines
-- them into the calling query (the segment's bound values become constants it plans with).
-- The work that grows with the shop is "each customer's seeds x the products bought with
-- them" (16.5M pairs for the 100k-customer demo shop): recommend_for does it customer by
-- customer in memory (the LATERAL at the end) instead of one big join + GROUP BY, which at
-- the default work_mem (4MB) spills gigabytes to disk and took 15-30 s on the same data.
-- Measured on the 100k-customer demo shop (seed 11; 115k orders in 90 days, 830k page views)
-- on a 2-core machine, default settings, no extra indexes:
--   recommend_for(NULL, ...) inside product_recommendations.sql (65.7k customers, 263k picks)
--       8.5 s on PostgreSQL 18 (embedded), 10 s on PostgreSQL 15 (service, JIT on)
--   co_purchased(as_of, 90) (3.5k pairs)                         0.45 s
--   recommend_for(ARRAY[6 customers], as_of)                     0.45 s (mostly co_purchased)
--   cross_sell.sql (3.4k orders of the last 3 days, ranked)      0.9 s (PG 18) / 1.8 s (PG 15)
--
-- The functions read the shop tables (shop.orders, shop.order_items, shop.page_views): point
-- them at your own tables by replacing them in a later migration (CREATE OR REPLACE FUNCTION
-- with the same signature). Their bodies are not checked against the tables when they are
-- created, so this file applies even where those tables are named differently.
SET LOCAL check_function_bodies = off;

CREATE OR REPLACE FUNCTION lifecycle.co_purchased(as_of timestamptz, days integer DEFAULT 90)
RETURNS TABLE (product_id bigint, other_product_id bigint, orders_together bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH lines AS (
        -- each product once per order, even if a warehouse splits it over several lines
        SELECT DISTINCT oi.order_id, oi.product_id
        FROM shop.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE o.status <> 'cancelled'
          AND o.customer_id IS NOT NULL
          AND o.ordered_at >= co_purchased.as_of - make_interval(days => co_purchased.days)
          AND o.ordered_at <  co_purchased.as_of
    )
    SELECT a.product_id, b.product_id, count(*)
    FROM lines a
    JOIN lines b ON b.order_id = a.order_id AND b.product_id <> a.product_id
    GROUP BY a.product_id, b.product_id
$$;

COMMENT ON FUNCTION lifecycle.co_purchased(timestamptz, integer) IS
    'Pairs of different products and how many non-cancelled orders in [as_of - days, as_of) contain both (symmetric).';

-- array_cat as an aggregate: the concatenation of a group's arrays (recommend_for uses it to
-- gather each customer's candidate products in one row).
CREATE OR REPLACE AGGREGATE lifecycle.array_cat_agg(anycompatiblearray) (
    SFUNC = array_cat,
    STYPE = anycompatiblearray
);

CREATE OR REPLACE FUNCTION lifecycle.recommend_for(
    customer_ids  bigint[],
    as_of         timestamptz,
    max_items     integer DEFAULT 4,
    activity_days integer DEFAULT 30,
    pair_days     integer DEFAULT 90
)
RETURNS TABLE (customer_id bigint, product_id bigint, score bigint, rank integer)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH wanted AS (
        SELECT DISTINCT w.customer_id FROM unnest(recommend_for.customer_ids) AS w(customer_id)
    ), seeds AS (
        -- What each customer viewed or bought in the activity window. Two branches per source:
        -- everyone (customer_ids NULL: one scan) or the given customers (index lookups); the
        -- planner drops the branch that cannot apply. UNION: each (customer, product) once.
        SELECT v.customer_id, v.product_id
        FROM shop.page_views v
        WHERE recommend_for.customer_ids IS NULL
          AND v.customer_id IS NOT NULL AND v.product_id IS NOT NULL
          AND v.viewed_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND v.viewed_at <  recommend_for.as_of
        UNION
        SELECT v.customer_id, v.product_id
        FROM wanted w
        JOIN shop.page_views v ON v.customer_id = w.customer_id
        WHERE v.product_id IS NOT NULL
          AND v.viewed_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND v.viewed_at <  recommend_for.as_of
        UNION
        SELECT o.customer_id, oi.product_id
        FROM shop.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE recommend_for.customer_ids IS NULL
          AND o.customer_id IS NOT NULL AND o.status <> 'cancelled'
          AND o.ordered_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND o.ordered_at <  recommend_for.as_of
        UNION
        SELECT o.customer_id, oi.product_id
        FROM wanted w
        JOIN shop.orders o ON o.customer_id = w.customer_id
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE o.status <> 'cancelled'
          AND o.ordered_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND o.ordered_at <  recommend_for.as_of
    ), neighbours AS (
        -- per product, the products bought with it and in how many orders (parallel arrays)
        SELECT cp.product_id, array_agg(cp.other_product_id) AS ids, array_agg(cp.orders_together::integer) AS counts
        FROM lifecycle.co_purchased(recommend_for.as_of, recommend_for.pair_days) cp
        GROUP BY cp.product_id
    ), candidates AS (
        -- per customer, the neighbours of all their seeds in one row (a product appears once per
        -- seed it was bought with; the sum below adds those up)
        SELECT s.customer_id, lifecycle.array_cat_agg(n.ids) AS ids, lifecycle.array_cat_agg(n.counts) AS counts
        FROM seeds s
        JOIN neighbours n ON n.product_id = s.product_id
        GROUP BY s.customer_id
    ), bought AS (
        -- everything those customers ever bought before as_of: never recommended to them
        SELECT o.customer_id, array_agg(oi.product_id) AS products
        FROM shop.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE o.status <> 'cancelled'
          AND o.ordered_at < recommend_for.as_of
          AND o.customer_id IN (SELECT c.customer_id FROM candidates c)
        GROUP BY o.customer_id
    )
    -- Customer by customer (small, in memory): add up, drop what they bought, keep the best.
    SELECT c.customer_id, top.product_id, top.score,
           (row_number() OVER (PARTITION BY c.customer_id ORDER BY top.score DESC, top.product_id))::integer
    FROM candidates c
    LEFT JOIN bought b ON b.customer_id = c.customer_id
    CROSS JOIN LATERAL (
        SELECT u.product_id, sum(u.n)::bigint AS score
        FROM unnest(c.ids, c.counts) AS u(product_id, n)
        WHERE b.products IS NULL OR u.product_id <> ALL (b.products)
        GROUP BY u.product_id
        ORDER BY score DESC, u.product_id
        LIMIT recommend_for.max_items
    ) top
$$;

COMMENT ON FUNCTION lifecycle.recommend_for(bigint[], timestamptz, integer, integer, integer) IS
    'Up to max_items products per customer (NULL: everyone active), ranked by co-purchases with what they viewed or bought in the last activity_days; never a product they bought.';

RESET check_function_bodies;
