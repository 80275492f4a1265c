-- The `summarize` task's run note (lifecycle.ui.run_note): conversions credited in the run's interval,
-- (interval_start, interval_end], held-out ones apart, and their revenue with each order counted once
-- (one order can convert two enrollments: two carts). A conversion is dated by its event, or by the run's
-- as_of (= interval_end) when the condition gives no time, hence the closed end.
SELECT count(*) FILTER (WHERE NOT holdout)                                     AS converted,
       count(*) FILTER (WHERE holdout)                                         AS converted_holdout,
       coalesce(sum(revenue) FILTER (WHERE NOT holdout AND first_of_order), 0) AS revenue
FROM (SELECT holdout, revenue,
             row_number() OVER (PARTITION BY holdout, coalesce(order_id, enrollment_id::text)
                                ORDER BY converted_at, enrollment_id) = 1 AS first_of_order
      FROM lifecycle.conversions
      WHERE journey = :journey AND mode = :mode
        AND converted_at > :interval_start AND converted_at <= :interval_end) c
