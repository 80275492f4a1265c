"""Coupon codes: one unguessable code per planned message of a coupon step or exit message."""

from __future__ import annotations

import sqlalchemy as sa

from lifecycle.run_context import RunContext
from lifecycle.spec import Coupon


def issue_coupons(conn: sa.Connection, run: RunContext, step: str, coupon: Coupon) -> None:
    """A code for each message of `step` this run planned (idempotent per enrollment and step),
    valid from the message's due time. `coupon.product` names the context column whose product
    the code is limited to."""
    conn.execute(
        sa.text(
            """
            INSERT INTO lifecycle.coupons
                (code, journey, mode, enrollment_id, step, customer_id, percent_off, valid_from, valid_until,
                 product_id)
            SELECT :code_prefix || upper(substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)),
                   m.journey, m.mode, m.enrollment_id, m.step, m.customer_id, :pct,
                   m.due_at, m.due_at + make_interval(days => :days),
                   e.context ->> CAST(:product_column AS text)  -- the id as text, whatever its type in the shop
            FROM lifecycle.messages m
            JOIN lifecycle.enrollments e ON e.enrollment_id = m.enrollment_id
            WHERE m.journey = :journey AND m.mode = :mode AND m.step = :step
              AND m.planned_run_id = :run_id AND m.status IN ('planned', 'dry_run')
            ON CONFLICT DO NOTHING
            """
        ),
        {**run.binds(), "run_id": run.run_id, "step": step, "pct": coupon.percent_off,
         "days": coupon.valid_days, "code_prefix": coupon.prefix or run.journey[:2].upper() + "-",
         "product_column": coupon.product},
    )
