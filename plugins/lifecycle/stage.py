"""Run a segment's SELECT into a per-run staging table inside the warehouse.

The rows never leave the warehouse: validation, quarantine and enrollment all read the
staging table with set-based SQL. `_row` numbers the rows so errors can point at one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.channels import channel
from lifecycle.run_context import RunContext
from lifecycle.spec import JourneySpec
from lifecycle.sql import SegmentSQLError, execute_file_sql
from lifecycle.statistics import refresh_stale_statistics

STAGE_SCHEMA = "lifecycle_stage"
TIMESTAMP_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}
# Ids a warehouse may use (information_schema spelling): whole numbers or text (hex, `#1001`, UUIDs).
# The engine stores them as text in lifecycle.
ID_TYPES = {"bigint", "integer", "smallint", "text", "character varying", "character", "uuid"}


def stage_table(run: RunContext) -> str:
    return f"{STAGE_SCHEMA}.s_{run.journey[:40]}_{run.short_id}"


def coupon_product_columns(spec: JourneySpec) -> set[str]:
    """Columns named by `coupon: {product: ...}` (steps and exit messages): product-specific codes."""
    coupons = [s.coupon for s in spec.steps] + [getattr(e, "coupon", None) for e in spec.exits]
    return {c.product for c in coupons if c and c.product}


def channel_columns(spec: JourneySpec) -> set[str]:
    """Columns of the segment's rows that the journey's channels read (email: `email`), text."""
    return {c.segment_column for c in map(channel, spec.channels) if c.segment_column}


def required_columns(spec: JourneySpec) -> set[str]:
    return {spec.customer_id, spec.entry_key, spec.entered_at} | coupon_product_columns(spec) | channel_columns(spec)


def stage_segment(engine: Engine, spec: JourneySpec, run: RunContext) -> int:
    """Materialise the segment for this interval; return the number of rows selected."""
    table = stage_table(run)
    with engine.begin() as conn:
        refresh_stale_statistics(conn)  # segments may read lifecycle tables the last run changed
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {STAGE_SCHEMA}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        # In parts, the table is created empty (its columns are checked before any part runs)
        execute_file_sql(conn, spec.path, f"CREATE UNLOGGED TABLE {table} AS {_numbered(spec)}"
                         + (" WITH NO DATA" if spec.parts > 1 else ""), run.binds(spec))
        _check_columns(spec, _columns(conn, table))
        if spec.parts == 1:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    try:
        return sum(_stage_parts(engine, spec, run, table))
    except BaseException:
        drop_stage(engine, run)
        raise


def _stage_parts(engine: Engine, spec: JourneySpec, run: RunContext, table: str) -> list[int]:
    """Each part of the segment (`parts:`) inserted by its own query on its own connection, all at
    once: a heavy segment (product_recommendations' recommender) uses that many cores of the
    warehouse instead of one."""
    insert = f"INSERT INTO {table} {_numbered(spec)}"

    def stage_part(part: int) -> int:
        with engine.begin() as conn:
            return execute_file_sql(conn, spec.path, insert, {**run.binds(spec), "part": part,
                                                               "parts": spec.parts}).rowcount

    with ThreadPoolExecutor(spec.parts, thread_name_prefix="stage-part") as pool:
        futures = [pool.submit(stage_part, part) for part in range(spec.parts)]
    return [f.result() for f in futures]  # the first part's error, once every part has ended


def _numbered(spec: JourneySpec) -> str:
    """The segment's rows, each with its `_row`: 1, 2, 3, ... for one query (:part 0 of 1); part k
    of a segment staged in parts numbers its rows k+1, k+1+parts, ..., so `_row` stays unique."""
    row = "((row_number() OVER ()) - 1) * :parts + :part + 1"
    return f"SELECT ({row})::int AS _row, segment.* FROM (\n{spec.sql}\n) AS segment"


def _columns(conn: sa.Connection, table: str) -> dict[str, str]:
    return dict(
        conn.execute(
            sa.text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t"
            ),
            {"s": STAGE_SCHEMA, "t": table.split(".", 1)[1]},
        ).all()
    )


def _check_columns(spec: JourneySpec, columns: dict[str, str]) -> None:
    missing = sorted(required_columns(spec) - set(columns))
    if missing:
        raise SegmentSQLError(
            f"{spec.path.name}: the SELECT must return column(s) {', '.join(missing)}; "
            f"it returns {', '.join(c for c in columns if c != '_row')}"
        )
    if columns[spec.entered_at] not in TIMESTAMP_TYPES:
        raise SegmentSQLError(
            f"{spec.path.name}: entered_at column {spec.entered_at!r} must be a timestamp, "
            f"it is {columns[spec.entered_at]}"
        )
    for column in sorted(coupon_product_columns(spec)):
        if columns[column] not in ID_TYPES:
            raise SegmentSQLError(
                f"{spec.path.name}: coupon.product column {column!r} must hold product ids (whole numbers or "
                f"text), it is {columns[column]}"
            )


def drop_stage(engine: Engine, run: RunContext) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {stage_table(run)}")
