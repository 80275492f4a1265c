"""Condition files (`include/sql/conditions/<name>.sql`) run against a set of enrollments.

A condition is analyst SQL that reads a CTE named `enrollments` and returns `enrollment_id`,
optionally with `occurred_at`, `order_id` and `revenue`. Exits (lifecycle.exits) and a step's
`when` / `unless` (lifecycle.plan) materialise one into a temp table and join it.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

from lifecycle.ids import PROVIDER_EVENTS, provider_events
from lifecycle.sql import SegmentSQLError, bound, condition_sql, execute_file_sql, shared_ctes

OPTIONAL_COLUMNS = {"occurred_at", "order_id", "revenue"}


def with_enrollments_cte(condition: str, enrollments_select: str, provider_events: str = PROVIDER_EVENTS) -> str:
    """Put the `enrollments` CTE in front of a condition (merging with its own WITH)."""
    # NOT MATERIALIZED: a condition that reads `enrollments` twice (orders_since_entry and its own
    # join) scans the scope table twice instead of copying every row, context and all, into a
    # tuplestore first (seconds for a journey with a big context at 1M customers).
    cte = f"enrollments AS NOT MATERIALIZED ({enrollments_select}){shared_ctes(condition, provider_events)}"
    # leading comments (the analyst's explanation) may come before the WITH
    match = re.match(r"(?is)^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*with(\s+recursive)?\s", condition)
    if match:
        return f"WITH{match.group(1) or ''} {cte}, {condition[match.end():]}"
    return f"WITH {cte} {condition}"


SCOPE = "_condition_enrollments"


def materialise_scope(conn: sa.Connection, enrollments_select: str, binds: dict) -> str:
    """The enrollments a condition reads, as a temp table with fresh statistics; returns the
    SELECT of it that becomes the condition's `enrollments` CTE.

    The table holds every column but the context, which the SELECT joins back from
    lifecycle.enrollments by primary key: a condition reads the context of the few rows it
    matches (or none), so copying every enrollment's context (four product cards each in
    product_recommendations: 700 MB at 1M customers) is not paid up front. A LEFT JOIN, so a
    condition that never reads the context does not join at all (PostgreSQL removes the join)."""
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {SCOPE}")
    columns = list(conn.execute(*bound(f"SELECT * FROM ({enrollments_select}) AS s LIMIT 0", binds)).keys())
    kept = ", ".join(f"s.{c}" for c in columns if c != "context")
    conn.execute(*bound(f"CREATE TEMP TABLE {SCOPE} ON COMMIT DROP AS SELECT {kept} FROM ({enrollments_select}) AS s",
                        binds))
    conn.exec_driver_sql(f"ANALYZE {SCOPE} (enrollment_id, customer_id, entered_at)")
    if "context" not in columns:
        return f"SELECT * FROM {SCOPE}"
    return (f"SELECT s.*, e.context FROM {SCOPE} s "
            "LEFT JOIN lifecycle.enrollments e ON e.enrollment_id = s.enrollment_id")


def materialise_condition(conn: sa.Connection, name: str, enrollments_select: str, binds: dict, into: str) -> set[str]:
    """Run condition `name` over the enrollments `enrollments_select` gives (bound with `binds`)
    into temp table `into`; return the optional columns it provides."""
    path, condition = condition_sql(name)
    scope = materialise_scope(conn, enrollments_select, binds)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {into}")
    execute_file_sql(
        conn, path, f"CREATE TEMP TABLE {into} ON COMMIT DROP AS {with_enrollments_cte(condition, scope, provider_events(conn))}",
        binds,
    )
    columns = set(conn.execute(sa.text(f"SELECT * FROM {into} LIMIT 0")).keys())
    if "enrollment_id" not in columns:
        raise SegmentSQLError(f"{path.name}: a condition must return an enrollment_id column (it returns {sorted(columns)})")
    return columns & OPTIONAL_COLUMNS
