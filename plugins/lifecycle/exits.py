"""Exit rules: end active enrollments whose condition holds, record conversions, plan exit messages.

Rules apply in header order, before steps are planned; the first that matches an enrollment
wins. A condition (lifecycle.conditions) may return `occurred_at`, `order_id` and `revenue`:
the first qualifying event is the conversion credited.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.conditions import materialise_condition
from lifecycle.ids import typed_enrollments
from lifecycle.plan import insert_messages
from lifecycle.run_context import RunContext
from lifecycle.spec import JourneySpec

# The event columns a conversion records, in the SQL type each is given when a condition lacks it.
PICKED_COLUMNS = (("occurred_at", "timestamptz"), ("order_id", "text"), ("revenue", "numeric"))

# The condition's `enrollments` CTE (ids.typed_enrollments gives customer_id the shop's type).
ACTIVE_ENROLLMENTS = (
    "FROM lifecycle.enrollments e "
    "WHERE e.journey = :journey AND e.mode = :mode AND e.status = 'active' AND e.entered_at <= :as_of"
)

# An exit message's candidates (insert_messages' columns): the enrollments the rule's UPDATE
# ended, written by it in the same statement (counted there too, never fetched into Python).
EXIT_MESSAGES_TABLE = (
    "CREATE TEMP TABLE _exit_msgs (enrollment_id bigint, enrollment_key text, customer_id text, holdout boolean, "
    "due_at timestamptz, skip_reason text, channel text) ON COMMIT DROP"
)
EXIT_MESSAGES_CTE = """, msgs AS (
                        INSERT INTO _exit_msgs
                        SELECT enrollment_id, enrollment_key, customer_id, holdout, exited_at, NULL, :channel
                        FROM upd
                    )"""


def exit_pick_order(columns: set[str]) -> str:
    """ORDER BY terms (after enrollment_id) that pick the first qualifying event of a condition.

    Ties (README, "Ties"): of two events at the same instant the smaller order id came first.
    Ids made of digits compare as numbers, also when the column is text ('9' before '10'; zero-
    padded, never cast, so any length works), the rest in the column's own type. Every column the
    pick returns is in the ORDER BY, so rows that still tie are identical: any plan, same result.
    """
    terms = []
    if "occurred_at" in columns:
        terms.append("occurred_at NULLS LAST")
    if "order_id" in columns:
        terms += ["CASE WHEN order_id::text ~ '^[0-9]{1,40}$' THEN lpad(order_id::text, 40, '0') END NULLS LAST",
                  "order_id NULLS LAST"]
    if "revenue" in columns:
        terms.append("revenue NULLS LAST")
    return ", ".join(terms) or "enrollment_id"


def evaluate_exits(engine: Engine, spec: JourneySpec, run: RunContext) -> dict[str, int]:
    """Apply exit rules in header order; first match wins. Returns exits per condition."""
    counts = {}
    for rule in spec.exits:
        with engine.begin() as conn:
            active = typed_enrollments(conn, ACTIVE_ENROLLMENTS)
            extra = materialise_condition(conn, rule.when, active, {**run.binds(spec), **rule.params}, "_exit_hits")
            # The first qualifying event is the one attributed (its order and revenue).
            order = exit_pick_order(extra)
            pick = ", ".join(
                col if col in extra else f"CAST(NULL AS {typ}) AS {col}"
                for col, typ in PICKED_COLUMNS
            )
            if rule.channel:  # the exit message's candidates, filled by the UPDATE below
                conn.exec_driver_sql(EXIT_MESSAGES_TABLE)
            exited = conn.execute(
                sa.text(
                    f"""
                    WITH hit AS (
                        SELECT DISTINCT ON (enrollment_id) enrollment_id, {pick}
                        FROM _exit_hits ORDER BY enrollment_id, {order}
                    ), upd AS (
                        UPDATE lifecycle.enrollments e
                           SET status = :status, exit_reason = :reason,
                               exited_at = least(coalesce(hit.occurred_at, :as_of), :as_of),
                               next_step = NULL, next_due_at = NULL, updated_at = now(),
                               -- the step last planned: one that enrolled in this run has none yet,
                               -- whatever its enrollment assumed the plan would give it (enroll.py)
                               current_step = (SELECT m.step FROM lifecycle.messages m
                                               WHERE m.enrollment_id = e.enrollment_id
                                               ORDER BY m.due_at DESC, m.message_id DESC LIMIT 1)
                          FROM hit
                         WHERE e.enrollment_id = hit.enrollment_id AND e.status = 'active'
                     RETURNING e.enrollment_id, e.enrollment_key, e.customer_id, e.holdout, e.exited_at,
                               hit.order_id::text AS order_id, hit.revenue
                    ), conv AS (
                        INSERT INTO lifecycle.conversions
                            (enrollment_id, journey, mode, customer_id, condition, order_id, revenue,
                             converted_at, holdout)
                        SELECT enrollment_id, :journey, :mode, customer_id, :reason, order_id, revenue,
                               exited_at, holdout
                        FROM upd WHERE :status = 'converted'
                        ON CONFLICT (enrollment_id) DO NOTHING
                    ){EXIT_MESSAGES_CTE if rule.channel else ""}
                    SELECT count(*) FROM upd
                    """
                ),
                {**run.binds(), "status": rule.status, "reason": rule.reason, "channel": rule.channel},
            ).scalar_one()
            if rule.channel and exited:
                insert_messages(
                    conn, spec, run, "_exit_msgs", step=rule.message_step,
                    template=rule.template, lateness=spec.max_lateness,
                    coupon=rule.coupon,  # `then: {coupon: ...}`: a code with the exit message (a reward), as for a step's
                )
        counts[rule.reason] = exited
    return counts
