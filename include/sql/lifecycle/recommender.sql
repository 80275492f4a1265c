-- The warehouse recommender: lifecycle.co_purchased, lifecycle.recommend_for (read by
-- product_recommendations.sql) and lifecycle.in_part. A repeatable file (lifecycle/schema.py): it is
-- applied after the numbered migrations and again whenever it changes, so a change to the
-- recommender is an edit here. The numbered files 007, 012, 024 and 025 keep the versions they
-- applied; their comments say what each changed and what it measured.
--
-- Since 025: lifecycle.co_purchased pairs up the products of each order from one array per order,
-- and only for orders with two or more products. Before, it joined all of the window's order lines
-- with themselves (1.85M lines at 1M customers, written to disk as a CTE and merge-joined) to find
-- the 1.9M pairs, most of the join's rows being a line paired with itself. Each part of a segment
-- staged in parts (`parts:`) works the pairs out on its own, so this is paid once per part.
-- Measured on the 1M-customer demo shop (3,540 pairs of its 60 products): 5.06-5.63 s before,
-- 2.17-3.31 s after, the same rows (EXCEPT both ways: 0); recommend_for for one part (0 of 2), old
-- and new taking turns: 25.8 and 23.3 s before, 21.1 and 20.6 s after.
--
-- Since then: each seed set is ranked only as deep as its customers can need (max_items plus the
-- most products one of them bought), not over every product bought with its seeds: the ranking
-- arrays went from 60 to 10 products on average at 1M customers, and each customer's pick walks
-- that. recommend_for for one part: 19.5 -> 17.0 s (psql, one after the other), the same rows.
--
-- define_recommender() reads the shop's id types and (re-)creates the functions with them; it runs
-- at the end of this file.

-- A segment with `parts: N` in its header is staged as N queries at once, on N connections, each
-- binding :part (0 .. N-1) and :parts (N) and selecting only its part's customers: this says which.
-- The customer's id as text, hashed, so integer and text ids split alike; `parts` 1 is everyone.
CREATE OR REPLACE FUNCTION lifecycle.in_part(customer_id anyelement, part integer, parts integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT parts <= 1 OR abs(mod(hashtext(customer_id::text), parts)) = part
$$;

CREATE OR REPLACE FUNCTION lifecycle.define_recommender() RETURNS text
LANGUAGE plpgsql
AS $define$
DECLARE
    customer_type text := coalesce(
        (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
         WHERE a.attrelid = to_regclass('shop.orders') AND a.attname = 'customer_id' AND NOT a.attisdropped),
        'bigint');
    product_type text := coalesce(
        (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
         WHERE a.attrelid = to_regclass('shop.order_items') AND a.attname = 'product_id' AND NOT a.attisdropped),
        'bigint');
    old regprocedure;
    checking text := current_setting('check_function_bodies');
BEGIN
    -- the signatures change with the types: drop every version first
    FOR old IN SELECT p.oid::regprocedure FROM pg_proc p
               WHERE p.pronamespace = 'lifecycle'::regnamespace AND p.proname IN ('co_purchased', 'recommend_for')
    LOOP
        EXECUTE format('DROP FUNCTION %s', old);
    END LOOP;
    -- the bodies read the shop's tables, which may be named differently (see 007)
    PERFORM set_config('check_function_bodies', 'off', true);

    EXECUTE replace($fn$
CREATE FUNCTION lifecycle.co_purchased(as_of timestamptz, days integer DEFAULT 90)
RETURNS TABLE (product_id {product}, other_product_id {product}, orders_together bigint)
LANGUAGE sql STABLE PARALLEL SAFE
AS $body$
    WITH baskets AS (
        -- each order's different products as one array (a warehouse may split a product over
        -- several lines): only an order with two or more makes pairs, and most orders hold one
        SELECT array_agg(DISTINCT oi.product_id) AS products
        FROM shop.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE o.status <> 'cancelled'
          AND o.customer_id IS NOT NULL
          AND o.ordered_at >= co_purchased.as_of - make_interval(days => co_purchased.days)
          AND o.ordered_at <  co_purchased.as_of
        GROUP BY o.order_id
        HAVING count(DISTINCT oi.product_id) > 1
    )
    -- every ordered pair of different products of a basket, unnested in the select list (streamed)
    SELECT p.product_id, p.other_product_id, count(*)
    FROM (SELECT x.product_id, unnest(x.products) AS other_product_id
          FROM (SELECT unnest(b.products) AS product_id, b.products FROM baskets b) x) p
    WHERE p.other_product_id <> p.product_id
    GROUP BY p.product_id, p.other_product_id
$body$
$fn$, '{product}', product_type);

    EXECUTE replace(replace($fn$
CREATE FUNCTION lifecycle.recommend_for(
    customer_ids  {customer}[],
    as_of         timestamptz,
    max_items     integer DEFAULT 4,
    activity_days integer DEFAULT 30,
    pair_days     integer DEFAULT 90,
    part          integer DEFAULT 0,
    parts         integer DEFAULT 1
)
RETURNS TABLE (customer_id {customer}, product_id {product}, score bigint, rank integer)
LANGUAGE sql STABLE PARALLEL SAFE
AS $body$
    WITH wanted AS (
        SELECT DISTINCT w.customer_id FROM unnest(recommend_for.customer_ids) AS w(customer_id)
    ), seeds AS (
        -- What each customer viewed or bought in the activity window. Two branches per source:
        -- everyone (customer_ids NULL: one scan) or the given customers (index lookups); the
        -- planner drops the branch that cannot apply. UNION ALL: seed_sets keeps each product once.
        SELECT v.customer_id, v.product_id
        FROM shop.page_views v
        WHERE recommend_for.customer_ids IS NULL
          AND v.customer_id IS NOT NULL AND v.product_id IS NOT NULL
          AND v.viewed_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND v.viewed_at <  recommend_for.as_of
        UNION ALL
        SELECT v.customer_id, v.product_id
        FROM wanted w
        JOIN shop.page_views v ON v.customer_id = w.customer_id
        WHERE v.product_id IS NOT NULL
          AND v.viewed_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND v.viewed_at <  recommend_for.as_of
        UNION ALL
        SELECT o.customer_id, oi.product_id
        FROM shop.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE recommend_for.customer_ids IS NULL
          AND o.customer_id IS NOT NULL AND o.status <> 'cancelled'
          AND o.ordered_at >= recommend_for.as_of - make_interval(days => recommend_for.activity_days)
          AND o.ordered_at <  recommend_for.as_of
        UNION ALL
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
    ), seed_sets AS (
        -- per customer, their seeds that were ever bought with something, as one sorted array:
        -- customers with the same seeds get the same scores, so those are ranked once per set
        SELECT s.customer_id, array_agg(DISTINCT s.product_id ORDER BY s.product_id) AS seeds
        FROM seeds s
        WHERE s.product_id IN (SELECT n.product_id FROM neighbours n)
          AND lifecycle.in_part(s.customer_id, recommend_for.part, recommend_for.parts)
        GROUP BY s.customer_id
    ), bought AS (
        -- everything those customers ever bought before as_of: never recommended to them. For
        -- everyone (customer_ids NULL) one pass over the orders, joined to the customers below by
        -- hash or merge; for a list, index lookups. (Not `IN (SELECT ... FROM <a CTE>)`: the
        -- planner cannot size a CTE and ran one index lookup per customer.)
        SELECT o.customer_id, array_agg(oi.product_id) AS products
        FROM shop.orders o
        JOIN shop.order_items oi ON oi.order_id = o.order_id
        WHERE o.status <> 'cancelled'
          AND o.ordered_at < recommend_for.as_of
          AND (recommend_for.customer_ids IS NULL OR o.customer_id = ANY (recommend_for.customer_ids))
          AND lifecycle.in_part(o.customer_id, recommend_for.part, recommend_for.parts)
        GROUP BY o.customer_id
    ), buyers AS (
        -- each customer to rank: their seed set and what they bought (NULL: nothing)
        SELECT c.customer_id, c.seeds, b.products AS bought
        FROM seed_sets c
        LEFT JOIN bought b ON b.customer_id = c.customer_id
    ), ranked AS MATERIALIZED (
        -- Per distinct seed set, the products bought with one of its seeds, best first:
        --   score(p) = sum over the set's seeds s of orders_together(s, p)
        -- ranked by score, then the smaller product_id. MATERIALIZED: inlined, PostgreSQL ranked
        -- once per customer again (at 1M customers: 303k distinct sets for 669k customers).
        -- Only as deep as the set's customers can need: max_items, plus as many as the one of them
        -- who bought the most bought (their picks skip those); the rest could never be picked.
        -- At 1M customers, one part of two: 14.3 -> 11.2 s, with the same picks (the ranking
        -- was 60 deep, and every customer's pick walked it).
        SELECT d.seeds, r.ids, r.scores
        FROM (SELECT x.seeds, recommend_for.max_items + max(coalesce(cardinality(x.bought), 0)) AS depth
              FROM buyers x GROUP BY x.seeds) d
        CROSS JOIN LATERAL (
            SELECT array_agg(t.product_id ORDER BY t.score DESC, t.product_id) AS ids,
                   array_agg(t.score ORDER BY t.score DESC, t.product_id) AS scores
            FROM (SELECT u.product_id, sum(u.n)::bigint AS score
                  -- the neighbours unnested in the select list (ProjectSet), not in FROM: a
                  -- function in FROM fills a tuplestore per seed, and that was half the time
                  FROM (SELECT unnest(n.ids) AS product_id, unnest(n.counts) AS n
                        FROM unnest(d.seeds) AS s(product_id)
                        JOIN neighbours n ON n.product_id = s.product_id) u
                  GROUP BY u.product_id
                  ORDER BY score DESC, u.product_id
                  LIMIT d.depth) t
        ) r
    )
    -- Customer by customer: walk their seed set's ranking and keep the first max_items products
    -- they never bought. Ties go to the smaller product_id: numerically for integer ids,
    -- lexicographically (in the database's collation) for text ids, so 'P-10' comes before
    -- 'P-9': pad ids to one width if their order should follow the numbers.
    SELECT c.customer_id, top.product_id, top.score, top.rank
    FROM buyers c
    JOIN ranked r ON r.seeds = c.seeds
    CROSS JOIN LATERAL (
        SELECT k.product_id, k.score, (row_number() OVER (ORDER BY k.ord))::integer AS rank
        FROM (SELECT u.product_id, u.score, u.ord
              FROM (SELECT unnest(r.ids) AS product_id, unnest(r.scores) AS score,
                           generate_subscripts(r.ids, 1) AS ord) u  -- streamed, as above
              WHERE c.bought IS NULL OR u.product_id <> ALL (c.bought)
              ORDER BY u.ord
              LIMIT recommend_for.max_items) k
    ) top
$body$
$fn$, '{customer}', customer_type), '{product}', product_type);

    EXECUTE format('COMMENT ON FUNCTION lifecycle.co_purchased(timestamptz, integer) IS %L',
        'Pairs of different products and how many non-cancelled orders in [as_of - days, as_of) contain both (symmetric).');
    EXECUTE format('COMMENT ON FUNCTION lifecycle.recommend_for(%s[], timestamptz, integer, integer, integer, integer, integer) IS %L',
        customer_type,
        'Up to max_items products per customer (NULL: everyone active), ranked by co-purchases with what they '
        'viewed or bought in the last activity_days; never a product they bought. Ties: the smaller product_id '
        '(lexicographic for text ids). part of parts: only the customers lifecycle.in_part puts in that part.');
    PERFORM set_config('check_function_bodies', checking, true);
    RETURN format('recommender ids: customers %s, products %s', customer_type, product_type);
END
$define$;

SELECT lifecycle.define_recommender();
