"""A/B tests of a step: the stable assignment of its `variants:` that the
plan's message INSERT computes in SQL, the variant's template/subject at render time, and
`winner: auto` (switch new sends to the winner once the test's rule is met, recorded in
lifecycle.ab_decisions).

    steps:
      - name: reminder_1
        after: 1h
        channel: email
        template: cart_abandonment/reminder_1
        variants:
          - {name: a, weight: 50}                                   # the control: the step's own files
          - {name: b, weight: 50, subject: "{{ customer.first_name }}, your cart is waiting"}
        ab_test: {metric: converted, baseline_rate: 0.05, mde: 0.03, winner: auto}

The header keys are read by lifecycle.spec (Variant, ABTest, with the other step keys).
Assignment (migration 019): lifecycle.variant_bucket maps md5(journey:step:customer_id) to [0, 1)
and lifecycle.pick_variant picks the variant whose share of the cumulated weights holds it, so a customer gets the same
variant in every re-run and backfill, and the shares follow the weights.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from lifecycle.spec import ABTest, Variant

__all__ = ["ASSIGN_SQL", "ABTest", "Variant", "assign_sql", "decide_winners", "for_row", "variant_binds"]


# ------------------------------------------------------------------------------- planning


def variant_binds(spec: Any, step: str) -> dict[str, Any]:
    """The binds of plan.insert_messages' variant expression: the step's variant names and
    weights (NULL for a step without variants or an exit message: no variant)."""
    found = next((s for s in spec.steps if s.name == step), None)
    if found is None or not found.variants:
        return {"variant_names": None, "variant_weights": None}
    return {"variant_names": [v.name for v in found.variants],
            "variant_weights": [v.weight for v in found.variants]}


# The variant column of a new message (plan.insert_messages, candidate row `r`): the decided
# winner, looked up once per statement (an uncorrelated subquery), else the customer's pick
# (lifecycle.pick_variant, inlined: no function call per row).
ASSIGN_SQL = ("coalesce((SELECT d.winner FROM lifecycle.ab_decisions d WHERE d.journey = :journey "
              "AND d.mode = :mode AND d.step = :step AND d.winner IS NOT NULL), "
              "lifecycle.pick_variant(:journey, :step, CAST(r.customer_id AS text), CAST(:variant_names AS text[]), "
              "CAST(:variant_weights AS double precision[])))")


def assign_sql(spec: Any, step: str) -> str:
    """The variant expression of plan.insert_messages: a constant NULL for a step without
    variants (no function call per planned row), else ASSIGN_SQL."""
    return ASSIGN_SQL if variant_binds(spec, step)["variant_names"] else "CAST(NULL AS text)"


# ------------------------------------------------------------------------------- rendering


class _VariantRow:
    """A batch row as the builders see it, with its variant's template and subject."""

    def __init__(self, row: Any, template: str, subject: str | None):
        self._row, self.template, self.variant_subject = row, template, subject

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


def for_row(spec: Any, row: Any) -> Any:
    """`row` with the template (and email subject) of its message's variant; unchanged when the
    message has none or the variant has left the file (then the step's own files are used)."""
    name = getattr(row, "variant", None)
    step = next((s for s in spec.steps if s.name == row.step), None) if name else None
    variant = next((v for v in step.variants if v.name == name), None) if step else None
    if variant is None:
        return row
    return _VariantRow(row, variant.template or row.template, variant.subject)


# ----------------------------------------------------------------------------- winner: auto


def decide_winners(engine: Any, spec: Any, run: Any, now: datetime | None = None) -> list[dict]:
    """For each step with `winner: auto` whose test is not decided yet: evaluate the rule on every
    send so far and, once it is met, record the decision (lifecycle.ab_decisions), which makes the
    plan's assignment give new messages the winner. Returns the decisions made now."""
    from lifecycle.analytics import ab_test

    made = []
    for step in spec.steps:
        if not step.variants or step.ab_test.winner != "auto":
            continue
        with engine.begin() as conn:
            done = conn.execute(sa.text("SELECT 1 FROM lifecycle.ab_decisions WHERE journey = :j AND mode = :m "
                                        "AND step = :s"), {"j": spec.journey, "m": str(run.mode), "s": step.name})
            if done.first():
                continue
            result = ab_test(conn, journey=spec.journey, step=step.name, since=datetime(1970, 1, 1, tzinfo=UTC), until=run.as_of,
                             mode=str(run.mode), now=now or run.as_of, spec=spec)
            if not result["decided"]:
                continue
            conn.execute(
                sa.text("INSERT INTO lifecycle.ab_decisions (journey, mode, step, winner, decision, rule, stats, run_id) "
                        "VALUES (:j, :m, :s, :w, :d, :r, CAST(:stats AS jsonb), :run) ON CONFLICT DO NOTHING"),
                {"j": spec.journey, "m": str(run.mode), "s": step.name, "w": result["winner"],
                 "d": result["decision"], "r": result["rule"], "run": run.run_id,
                 "stats": json.dumps({k: result[k] for k in ("variants", "difference", "difference_ci",
                                                             "required_n_per_variant")}, default=str)},
            )
            made.append({"step": step.name, "winner": result["winner"], "decision": result["decision"]})
    return made
