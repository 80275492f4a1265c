"""Coupon codes: one unguessable code per planned message of a coupon step or exit message.

The codes are issued by the statement that plans the messages (lifecycle.plan.insert_messages
adds `coupon_cte` to its INSERT ... SELECT): a code for each message it inserted, from its RETURNING
rows, with no second pass that finds the run's messages again and joins them to their
enrollments (a fifth of a big first day's plan step).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from lifecycle.run_context import RunContext
from lifecycle.spec import Coupon

CODE_KEY = "coupons_pkey"


class CouponCodeCollision(RuntimeError):
    """Two coupons drew the same random code (64 random bits: about one chance in 10^7 per million
    codes issued). The planning transaction rolled back whole, so a retry of the task draws new
    codes; nothing was planned twice or lost."""


def coupon_cte(coupon: Coupon, inserted: str = "ins") -> str:
    """A data-modifying CTE (`, coupons AS (...)`) that issues a code for each planned (or dry-run)
    message among the RETURNING rows of the CTE `inserted` (journey, mode, enrollment_id, step,
    customer_id, due_at, status), valid from the message's due time. `coupon.product` names the
    context column whose product the code is limited to (read from the enrollment, by its key).
    A message that already has its code (journey, enrollment, step) keeps it; a code drawn twice
    raises (see `collisions_raised`), it is never silently skipped: its email would go out without one."""
    product = ("(SELECT e.context ->> CAST(:coupon_product AS text) FROM lifecycle.enrollments e "
               "WHERE e.enrollment_id = i.enrollment_id)") if coupon.product else "CAST(NULL AS text)"
    return f"""
    , coupons AS (
        INSERT INTO lifecycle.coupons
            (code, journey, mode, enrollment_id, step, customer_id, percent_off, valid_from, valid_until, product_id)
        SELECT :coupon_prefix || upper(substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)),
               i.journey, i.mode, i.enrollment_id, i.step, i.customer_id, :coupon_pct,
               i.due_at, i.due_at + make_interval(days => :coupon_days),
               {product}  -- the id as text, whatever its type in the shop
        FROM {inserted} i
        WHERE i.status IN ('planned', 'dry_run')
        ON CONFLICT (journey, enrollment_id, step) DO NOTHING
    )"""


def coupon_binds(coupon: Coupon, run: RunContext) -> dict:
    return {"coupon_pct": coupon.percent_off, "coupon_days": coupon.valid_days,
            "coupon_prefix": coupon.prefix or run.journey[:2].upper() + "-", "coupon_product": coupon.product}


@contextmanager
def collisions_raised() -> Iterator[None]:
    """Turn a unique violation on the coupon code into CouponCodeCollision."""
    try:
        yield
    except sa.exc.IntegrityError as e:
        if getattr(getattr(e.orig, "diag", None), "constraint_name", None) == CODE_KEY:
            raise CouponCodeCollision(
                "two coupons drew the same random code; the plan step rolled back and a retry draws new codes"
            ) from e
        raise
