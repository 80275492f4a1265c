"""Fresh planner statistics for the lifecycle tables before a run reads them.

A big first day (22% of a shop enrolled, a message each) leaves the statistics of
lifecycle.enrollments and lifecycle.messages describing the empty tables they were until
autovacuum comes round; a segment that reads them (product_recommendations skips the week's
enrollments) then gets a plan for a handful of rows and runs for minutes. Each run analyses, before
its segment, the lifecycle tables that changed by more than a tenth since their last ANALYZE, or
grew by more than a tenth in size (one catalog query when none did). ANALYZE reads a fixed-size
sample, so this costs a fraction of a second at any size; jsonb columns (the segment row, payloads)
are left out: their statistics are the expensive part and no join or filter of the engine uses them.
"""

from __future__ import annotations

import sqlalchemy as sa

STALE_SHARE = 0.1  # as autovacuum_analyze_scale_factor
STALE_MIN_ROWS = 1000  # changes below this never matter to a plan
STALE_MIN_PAGES = 16  # nor does growth below this (128 kB)

STALE_TABLES_SQL = """
    SELECT s.relname,
           array_agg(quote_ident(a.attname) ORDER BY a.attnum) AS columns
    FROM pg_stat_user_tables s
    JOIN pg_class c ON c.oid = s.relid
    JOIN pg_attribute a ON a.attrelid = s.relid AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.atttypid NOT IN ('jsonb'::regtype, 'json'::regtype)
    WHERE s.schemaname = 'lifecycle'
      AND (s.n_mod_since_analyze > greatest(:min_rows, :share * greatest(c.reltuples, 0))
           -- or the table has outgrown the size its statistics describe: the activity counters
           -- above reach the shared statistics a while after a statement ends (a backend flushes
           -- them when idle), so a run that follows a big first day at once may not see them yet
           OR pg_relation_size(c.oid) > (greatest(c.relpages, 0) * (1 + :share) + :min_pages)
                                        * current_setting('block_size')::bigint)
    GROUP BY s.relname
    ORDER BY s.relname
"""


def refresh_stale_statistics(conn: sa.Connection) -> list[str]:
    """ANALYZE (without jsonb columns) each lifecycle table whose statistics are stale; return their names."""
    stale = conn.execute(sa.text(STALE_TABLES_SQL), {"min_rows": STALE_MIN_ROWS, "share": STALE_SHARE,
                                                      "min_pages": STALE_MIN_PAGES}).all()
    for table, columns in stale:
        conn.exec_driver_sql(f"ANALYZE lifecycle.{table} ({', '.join(columns)})")
    return [table for table, _ in stale]
