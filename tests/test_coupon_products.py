"""Product-specific codes: `coupon: {..., product: <column>}` in a step (or an exit message).

The header names the SELECT column holding the product id; the engine checks the column is
there and holds whole numbers, quarantines rows without a product, and records the product on
the code in lifecycle.coupons.product_id (NULL for codes good for the whole order)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from lifecycle.config import SEGMENTS_DIR
from lifecycle.replay import run_interval
from lifecycle.schema import create_shop_schema
from lifecycle.spec import SpecError, load_spec
from lifecycle.sql import SegmentSQLError
from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

HEADER = """/* ---
journey: {name}
schedule: hourly
entry_key: k
entered_at: t
steps:
  - name: offer
    after: 0h
    channel: email
    template: behaviour_discount/offer
    coupon: {coupon}
--- */
"""
ROWS = """SELECT v.k, v.customer_id, v.email, v.product_id, CAST(:as_of AS timestamptz) - interval '5 minutes' AS t
FROM (VALUES ('a', 1::bigint, 'a@example.com', {a}), ('b', 2::bigint, 'b@example.com', {b}))
     AS v(k, customer_id, email, product_id)
"""


def segment(tmp_path, coupon: str, sql: str = ROWS.format(a="7::bigint", b="NULL::bigint"), name: str = "probe"):
    path = tmp_path / f"{name}.sql"
    path.write_text(HEADER.format(name=name, coupon=coupon) + sql)
    return path


def test_the_shipped_journey_names_its_product_column():
    spec = load_spec(SEGMENTS_DIR / "behaviour_discount.sql")
    (step,) = spec.steps
    assert (step.coupon.product, step.coupon.percent_off, step.coupon.valid_days) == ("product_id", 10.0, 7)
    assert load_spec(SEGMENTS_DIR / "birthday.sql").steps[0].coupon.product is None  # a code for any order


@pytest.mark.parametrize(("coupon", "expected"), [
    ("{percent_off: 10, product: Product ID}",
     "steps[0] (offer).coupon.product: must name a column of the SELECT (lower_snake_case), got 'Product ID'"),
    ("{percent_off: 10, product: 7}", "steps[0] (offer).coupon.product: must name a column of the SELECT"),
    ("{percent_off: 10, produkt: product_id}", "unknown key 'produkt' (did you mean 'product'?)"),
])
def test_a_bad_product_key_is_named(tmp_path, coupon, expected):
    with pytest.raises(SpecError) as info:
        load_spec(segment(tmp_path, coupon))
    assert any(expected in p for p in info.value.problems), info.value.problems


@pytest.fixture()
def warehouse(scratch_engine):
    create_shop_schema(scratch_engine)  # the contact views read the shop's tables
    return scratch_engine


def run(engine, path):
    end = datetime(2026, 11, 20, 12, tzinfo=UTC)
    with RecordingSMTPServer() as smtp:
        from lifecycle.channels.email import EmailChannel

        return run_interval(engine, load_spec(path), end - timedelta(hours=1), end,
                            lambda name: EmailChannel("127.0.0.1", smtp.port))


def test_the_code_records_its_product_and_a_row_without_one_is_quarantined(warehouse, tmp_path):
    result = run(warehouse, segment(tmp_path, "{percent_off: 10, valid_days: 7, prefix: PR, product: product_id}"))
    assert (result["selected"], result["quarantined"]) == (2, 1)
    with warehouse.connect() as conn:
        quarantined = conn.execute(sa.text("SELECT enrollment_key, reasons FROM lifecycle.quarantine")).all()
        issued = conn.execute(sa.text("SELECT e.enrollment_key, c.product_id, c.percent_off, c.code "
                                      "FROM lifecycle.coupons c JOIN lifecycle.enrollments e USING (enrollment_id)")
                              ).all()
    assert [(k, list(r)) for k, r in quarantined] == [("b", ["product_id: missing (the coupon's product)"])]
    ((key, product_id, percent_off, code),) = issued
    assert (key, product_id, float(percent_off)) == ("a", "7", 10.0) and code.startswith("PR")


def test_a_code_without_product_records_none(warehouse, tmp_path):
    run(warehouse, segment(tmp_path, "{percent_off: 10}", ROWS.format(a="7::bigint", b="8::bigint")))
    with warehouse.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT customer_id, product_id FROM lifecycle.coupons")).all()) == [
            ("1", None), ("2", None)]


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT 'a' AS k, 1::bigint AS customer_id, 'a@example.com' AS email, CAST(:as_of AS timestamptz) AS t",
     "the SELECT must return column(s) product_id"),
    (ROWS.format(a="7.5", b="8.5"),
     "coupon.product column 'product_id' must hold product ids (whole numbers or text), it is numeric"),
])
def test_a_missing_or_non_id_product_column_stops_the_run_with_a_clear_error(warehouse, tmp_path, sql, expected):
    with pytest.raises(SegmentSQLError) as info:
        run(warehouse, segment(tmp_path, "{percent_off: 10, product: product_id}", sql))
    assert str(info.value).startswith("probe.sql: ") and expected in str(info.value)
    with warehouse.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lifecycle.coupons")).scalar_one() == 0


def test_a_code_drawn_twice_raises_and_plans_nothing(warehouse, tmp_path):
    """The codes are issued by the statement that plans the messages: a code drawn twice (here
    gen_random_uuid() shadowed by one that always draws the same) is a clear error that rolls the
    step back whole, never a message without its code."""
    from lifecycle.coupons import CouponCodeCollision

    with warehouse.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA collide")
        conn.exec_driver_sql("CREATE FUNCTION collide.gen_random_uuid() RETURNS uuid LANGUAGE sql "
                             "AS $$ SELECT '00000000-0000-4000-8000-000000000001'::uuid $$")
    engine = sa.create_engine(warehouse.url, connect_args={"options": "-c search_path=collide,pg_catalog,public"})
    try:
        with pytest.raises(CouponCodeCollision, match="same random code"):
            run(engine, segment(tmp_path, "{percent_off: 10}", ROWS.format(a="7::bigint", b="8::bigint")))
    finally:
        engine.dispose()
    with warehouse.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lifecycle.enrollments")).scalar_one() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM lifecycle.coupons")).scalar_one() == 0
