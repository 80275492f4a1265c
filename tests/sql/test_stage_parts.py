"""stage.py with `parts:` in the header: the segment runs as that many queries at once, each on
its own connection, each selecting the customers lifecycle.in_part gives its :part of :parts.
The staged rows are those of one query, once each; a part that fails leaves no stage table."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from lifecycle.run_context import RunContext
from lifecycle.sql import SegmentSQLError
from lifecycle.stage import drop_stage, stage_segment, stage_table

from .conftest import DAY

AS_OF = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def staged(sql, spec, name: str) -> list[dict]:
    run = RunContext(spec.journey, name, "live", AS_OF - 7 * DAY, AS_OF)
    count = stage_segment(sql.engine, spec, run)
    try:
        with sql.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM {stage_table(run)} ORDER BY _row")).mappings().all()
    finally:
        drop_stage(sql.engine, run)
    assert count == len(rows)
    return [dict(r) for r in rows]


def without_row(rows: list[dict]) -> list[tuple]:
    """The staged rows as (week_key, products), sorted: what the parts selected, not how they numbered it."""
    return sorted((r["week_key"], str(r["products"])) for r in rows)


def plant(sql, customers: int = 40) -> None:
    for order_id, products in ((900, (1, 2, 3)), (901, (1, 3)), (902, (2, 4)), (903, (3, 4))):
        sql.order(order_id, 9999, AS_OF - 40 * DAY, *products)
    sql.given("page_views", *({"view_id": c, "customer_id": c, "product_id": 1 + c % 4, "viewed_at": AS_OF - DAY}
                              for c in range(1, customers + 1)))


def test_in_two_parts_the_same_rows_once_each(sql):
    plant(sql)
    spec = sql.spec("product_recommendations")
    assert spec.parts == 2
    halves = staged(sql, spec, "parts-2")
    whole = staged(sql, dataclasses.replace(spec, parts=1), "parts-1")
    assert len(whole) == 40
    assert without_row(halves) == without_row(whole)
    assert len({r["_row"] for r in halves}) == len(halves)  # numbered across parts without a clash
    with sql.engine.connect() as conn:
        sizes = [conn.execute(sa.text("SELECT count(*) FROM generate_series(1, 40) c "
                                      "WHERE lifecycle.in_part(c::bigint, :part, 2)"), {"part": p}).scalar_one()
                 for p in (0, 1)]
    assert sum(sizes) == 40 and min(sizes) > 0  # both parts had customers


def test_a_part_that_fails_names_the_file_and_leaves_no_table(sql):
    plant(sql, customers=4)
    spec = sql.spec("product_recommendations")
    broken = dataclasses.replace(spec, sql=spec.sql.replace("WHERE NOT EXISTS (", "WHERE 1 / :part > 0 AND NOT EXISTS (", 1))
    assert broken.sql != spec.sql
    run = RunContext(spec.journey, "parts-broken", "live", AS_OF - 7 * DAY, AS_OF)
    with pytest.raises(SegmentSQLError, match=r"product_recommendations\.sql: the warehouse rejected the SQL: division by zero"):
        stage_segment(sql.engine, broken, run)
    with sql.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": stage_table(run)}).scalar() is None
