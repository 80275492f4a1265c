"""A/B tests of a step: its `variants:` (parsed here for spec.py), the stable assignment the
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

Assignment: lifecycle.assign_variant (migration 019) maps md5(journey:step:customer_id) to [0, 1)
and picks the variant whose share of the cumulated weights holds it, so a customer gets the same
variant in every re-run and backfill, and the shares follow the weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

VARIANT_KEYS = {"name", "weight", "template", "subject"}
AB_KEYS = {"metric", "baseline_rate", "mde", "winner"}
METRICS = ("converted", "clicked")
WINNERS = ("manual", "auto")
MAX_VARIANTS = 5


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float = 1.0
    template: str | None = None  # None: the step's template
    subject: str | None = None  # a one-line Jinja subject replacing <template>.subject.txt (email)


@dataclass(frozen=True)
class ABTest:
    metric: str = "converted"  # what the rule compares: conversions (any) or human clicks per send
    baseline_rate: float = 0.05  # the control's expected rate, fixed before the test (sample size)
    mde: float = 0.02  # minimum detectable effect: an absolute difference in the rate
    winner: str = "manual"  # auto: new sends switch to the winner once the rule is met


def parse_variants(where: str, raw: Any, raw_test: Any, channels: tuple[str, ...], action: str | None,
                   c: Any) -> tuple[tuple[Variant, ...], ABTest | None]:
    """A step's `variants:` and `ab_test:`; every problem goes to the checker `c` (spec._Checker)."""
    from lifecycle.spec import NAME, _unknown_keys

    if raw is None:
        c.add(f"{where}.ab_test: only a step with variants: has an A/B test")
        return (), None
    if action:
        c.add(f"{where}.variants: an action step ({action}) sends nothing to test")
        return (), None
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_VARIANTS:
        c.add(f"{where}.variants: must be a list of 2 to {MAX_VARIANTS} variants like "
              "[{name: a, weight: 50}, {name: b, weight: 50, subject: ...}]")
        return (), None
    variants: list[Variant] = []
    for i, v in enumerate(raw):
        at = f"{where}.variants[{i}]"
        if not isinstance(v, dict):
            c.add(f"{at}: must be a mapping like {{name: b, weight: 50, subject: ...}}")
            continue
        c.problems += _unknown_keys(f"{at}: ", v, VARIANT_KEYS)
        name = v.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            c.add(f"{at}.name: required, lower_snake_case (e.g. a, b, short_subject), got {name!r}")
            name = f"variant_{i}"
        at = f"{where}.variants[{i}] ({name})"
        weight = v.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            c.add(f"{at}.weight: a number above 0 (the share is weight / sum of weights), got {weight!r}")
            weight = 1
        template = v.get("template")
        if template is not None:
            template = c.channels_and_template(at, list(channels), template)[1]
        subject = _subject(at, v.get("subject"), channels, c)
        variants.append(Variant(name, float(weight), template, subject))
    names = [v.name for v in variants]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.add(f"{where}.variants: name {dup!r} is used twice")
    seen: dict[tuple, str] = {}
    for v in variants:
        if (v.template, v.subject) in seen:
            c.add(f"{where}.variants: {seen[(v.template, v.subject)]} and {v.name} send the same message "
                  "(give one a template: or a subject: of its own)")
        seen.setdefault((v.template, v.subject), v.name)
    return tuple(variants), _ab_test(where, raw_test, c)


def _subject(at: str, value: Any, channels: tuple[str, ...], c: Any) -> str | None:
    if value is None:
        return None
    if channels != ("email",):
        c.add(f"{at}.subject: only email steps have a subject (this step: {', '.join(channels)}); "
              "use template: for other channels")
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
        c.add(f"{at}.subject: one line of text (Jinja, like a .subject.txt file), got {value!r}")
        return None
    import jinja2

    from lifecycle.render import get_environment

    try:
        get_environment().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        c.add(f"{at}.subject: {exc.message}")
    return value.strip()


def _ab_test(where: str, raw: Any, c: Any) -> ABTest:
    from lifecycle.spec import _unknown_keys

    if raw is None:
        return ABTest()
    if not isinstance(raw, dict):
        c.add(f"{where}.ab_test: must be a mapping like {{metric: converted, baseline_rate: 0.05, mde: 0.02, "
              "winner: auto}}")
        return ABTest()
    c.problems += _unknown_keys(f"{where}.ab_test: ", raw, AB_KEYS)
    test = ABTest(**{k: raw[k] for k in AB_KEYS & set(raw)})
    if test.metric not in METRICS:
        c.add(f"{where}.ab_test.metric: {' or '.join(METRICS)}, got {test.metric!r}")
    if test.winner not in WINNERS:
        c.add(f"{where}.ab_test.winner: auto (switch new sends to the winner) or manual, got {test.winner!r}")
    rate, mde = test.baseline_rate, test.mde
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        c.add(f"{where}.ab_test.baseline_rate: the control's expected rate, a number between 0 and 1 "
              f"(0.05 = 5%), got {rate!r}")
    elif isinstance(mde, bool) or not isinstance(mde, (int, float)) or not 0 < mde < 1 - rate:
        c.add(f"{where}.ab_test.mde: the smallest difference in the rate worth detecting, a number above 0 "
              f"and below {1 - rate:g} (1 - baseline_rate), e.g. 0.02 for 2 points, got {mde!r}")
    return test


# ------------------------------------------------------------------------------- planning


def variant_binds(spec: Any, step: str) -> dict[str, Any]:
    """The binds of plan.insert_messages' variant expression: the step's variant names and
    weights (NULL for a step without variants or an exit message: no variant)."""
    found = next((s for s in spec.steps if s.name == step), None)
    if found is None or not found.variants:
        return {"variant_names": None, "variant_weights": None}
    return {"variant_names": [v.name for v in found.variants],
            "variant_weights": [v.weight for v in found.variants]}


# The variant column of a new message (plan.insert_messages, candidate row `r`).
ASSIGN_SQL = ("lifecycle.assign_variant(:journey, :mode, :step, CAST(r.customer_id AS text), "
              "CAST(:variant_names AS text[]), CAST(:variant_weights AS double precision[]))")


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
            result = ab_test(conn, journey=spec.journey, step=step.name, since=spec.start_date, until=run.as_of,
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
