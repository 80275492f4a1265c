"""What each journey earns: funnels, holdout lift and A/B tests (read-only).

The counting is SQL in the warehouse (migration 019_analytics.sql: lifecycle.funnel,
lifecycle.attributed_conversions, lifecycle.lift_units, lifecycle.ab_exposures); the statistics
are here, on what those return. Every function takes an open connection and only reads.

Cohort: `since`/`until` (timezone-aware, half-open [since, until)) select the enrollments that
ENTERED in the period (their entered_at), in one mode; everything that followed them counts,
whenever it happened. Attribution: a conversion is credited to the last human click on a message
of its enrollment within the journey's conversion window (`complete_after`) before it; ties at
the same instant go to the larger message_id. Methods (README "Results: funnels, lift and A/B tests"):

- a difference of two rates: Newcombe's hybrid score interval (method 10), from the two Wilson
  score intervals; 95%.
- a ratio of two rates (relative lift): Katz's log interval, exp(ln RR ± z·sqrt(1/x1 − 1/n1 +
  1/x2 − 1/n2)) − 1; undefined (None) when either group has no conversion.
- revenue per customer: the difference of the means, with a percentile bootstrap interval (2,000
  resamples of each group, seeded: the same data always gives the same interval).
- held-out customers still needed: with the current split r = n_t / n_h kept, the holdout size
  at which the Wald interval of the difference excludes 0, n_h = z²·(p_t·q_t / r + p_h·q_h) / d²,
  minus the held-out customers already there (0 once the interval excludes 0; None while d = 0).
- A/B sample size, fixed before the test: n per variant = (z_{1−α/2}·sqrt(2·p̄·q̄) +
  z_{1−β}·sqrt(p1·q1 + p2·q2))² / δ², p1 = baseline_rate, p2 = p1 + mde, α = 0.05 two-sided
  (Bonferroni α/(k−1) for k > 2 variants, each against the first), power 1 − β = 0.8.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import sqlalchemy as sa

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 12
DEFAULT_WINDOW = timedelta(days=7)  # a journey whose file cannot be read: the default complete_after
FUNNEL_KEYS = ("journey", "step", "variant", "entered", "sent", "delivered", "opened", "clicked", "converted",
               "revenue", "unsubscribed", "complained")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _z(alpha: float = ALPHA) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


# --------------------------------------------------------------------------------- statistics


def wilson(x: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of a proportion x/n."""
    if n == 0:
        return (0.0, 1.0)
    z, p = _z(alpha), x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(x1: int, n1: int, x2: int, n2: int, alpha: float = ALPHA) -> tuple[float, tuple[float, float]]:
    """p1 − p2 and Newcombe's hybrid score interval (from the two Wilson intervals)."""
    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = wilson(x1, n1, alpha), wilson(x2, n2, alpha)
    d = p1 - p2
    return d, (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def katz(x1: int, n1: int, x2: int, n2: int, alpha: float = ALPHA) -> tuple[float | None, tuple | None]:
    """Relative lift p1/p2 − 1 and Katz's log interval; (None, None) when a group has no conversion."""
    if not (x1 and x2 and n1 and n2):
        return None, None
    rr = (x1 / n1) / (x2 / n2)
    half = _z(alpha) * math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    return rr - 1, (rr * math.exp(-half) - 1, rr * math.exp(half) - 1)


def _resampled_means(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of a group of n customers whose non-zero revenues are `values` (the others
    spent 0): resampling n with replacement draws Binomial(n, k/n) of the k non-zero customers."""
    if n == 0:
        return np.full(BOOTSTRAP_RESAMPLES, np.nan)
    if len(values) == 0:
        return np.zeros(BOOTSTRAP_RESAMPLES)
    picks = rng.binomial(n, len(values) / n, size=BOOTSTRAP_RESAMPLES)
    drawn = values[rng.integers(0, len(values), size=int(picks.sum()), dtype=np.int32)]
    sums = np.add.reduceat(np.append(drawn, 0.0), np.concatenate(([0], np.cumsum(picks)[:-1])))
    return np.where(picks > 0, sums, 0.0) / n


def bootstrap_mean_difference(values1: np.ndarray, n1: int, values2: np.ndarray, n2: int,
                              alpha: float = ALPHA, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of mean1 − mean2 (each group resampled on its own)."""
    rng = np.random.default_rng(seed)
    diffs = _resampled_means(values1, n1, rng) - _resampled_means(values2, n2, rng)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def holdout_needed(x_t: int, n_t: int, x_h: int, n_h: int, alpha: float = ALPHA) -> int | None:
    """Held-out customers still needed for the interval of the difference to exclude 0, the
    treated/held-out split kept as it is (module docstring); None when the rates are equal."""
    if not (n_t and n_h):
        return None
    lo, hi = newcombe(x_t, n_t, x_h, n_h, alpha)[1]
    if lo > 0 or hi < 0:
        return 0
    p_t, p_h = x_t / n_t, x_h / n_h
    d = p_t - p_h
    if d == 0:
        return None
    needed = _z(alpha) ** 2 * (p_t * (1 - p_t) * n_h / n_t + p_h * (1 - p_h)) / d ** 2
    return max(0, math.ceil(needed) - n_h)


def required_n(baseline: float, mde: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Sends per variant for a two-sided two-proportion test to detect baseline → baseline + mde."""
    p1, p2 = baseline, baseline + mde
    pbar = (p1 + p2) / 2
    za, zb = _z(alpha), NormalDist().inv_cdf(power)
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / mde ** 2
    return math.ceil(n)


# --------------------------------------------------------------------------------- the journeys


@functools.lru_cache(maxsize=64)
def _spec_at(path: str, mtime_ns: int) -> Any:
    from lifecycle.spec import SpecError, load_spec

    try:
        return load_spec(Path(path))
    except SpecError:
        return None


def _spec(journey: str) -> Any:
    """The journey's spec from its segment file (None when missing or broken), re-read on change."""
    from lifecycle.config import SEGMENTS_DIR

    path = Path(SEGMENTS_DIR) / f"{journey}.sql"
    try:
        return _spec_at(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


def _windows(conn: sa.Connection, journey: str | None) -> dict[str, float]:
    """Each journey's conversion window (complete_after) in seconds, for the SQL attribution."""
    names = [journey] if journey else conn.execute(
        sa.text("SELECT DISTINCT journey FROM lifecycle.enrollments ORDER BY journey")).scalars().all()
    windows = {}
    for name in names:
        spec = _spec(name)
        windows[name] = (spec.complete_after if spec else DEFAULT_WINDOW).total_seconds()
    return windows


def _aware(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name}: a timezone-aware datetime, got {value!r}")
    return value


# --------------------------------------------------------------------------------- the query layer


def funnel(conn: sa.Connection, *, since: datetime, until: datetime, mode: str = "live",
           journey: str | None = None) -> list[dict]:
    """Per journey, step and variant (None when the step has none): entered, sent, delivered,
    opened, clicked (humans only), converted, revenue, unsubscribed, complained, for the treated
    enrollments that entered in [since, until). Each journey also has one row with step None: its
    entered is the cohort, its converted/revenue the conversions no click explains (unattributed),
    so a journey's converted add up over its rows. Sorted by journey, then steps in the order
    they were first sent, then variant."""
    import json

    rows = conn.execute(
        sa.text("SELECT * FROM lifecycle.funnel(:since, :until, :mode, :journey, CAST(:windows AS jsonb), :default)"),
        {"since": _aware("since", since), "until": _aware("until", until), "mode": mode, "journey": journey,
         "windows": json.dumps(_windows(conn, journey)), "default": DEFAULT_WINDOW.total_seconds()},
    ).all()
    out = []
    for r in rows:
        d = {k: getattr(r, k) for k in FUNNEL_KEYS}
        d.update({k: int(d[k]) for k in FUNNEL_KEYS[3:] if k != "revenue"})
        d["revenue"] = float(d["revenue"] or 0)
        out.append(d)
    order = _step_order(conn, journey, mode)
    return sorted(out, key=lambda d: (d["journey"], d["step"] is not None,
                                      order.get((d["journey"], d["step"]), 1 << 30), d["step"] or "",
                                      d["variant"] or ""))


def _step_order(conn: sa.Connection, journey: str | None, mode: str) -> dict[tuple[str, str], int]:
    """Steps in the order of the journey file (exit messages after them)."""
    names = {journey} if journey else set(_windows(conn, None))
    order = {}
    for name in names:
        spec = _spec(name)
        if spec:
            steps = [s.name for s in spec.steps] + [e.message_step for e in spec.exits if e.message_step]
            order.update({(name, s): i for i, s in enumerate(steps)})
    return order


def lift(conn: sa.Connection, *, journey: str, since: datetime, until: datetime, mode: str = "live") -> dict:
    """Treated vs held-out customers of the journey's enrollments that entered in [since, until):
    conversion rates, absolute and relative lift with 95% intervals, revenue per customer and
    its lift with a bootstrap interval, and the held-out customers still needed."""
    units = conn.execute(
        sa.text("SELECT holdout, converted, revenue FROM lifecycle.lift_units(:journey, :since, :until, :mode)"),
        {"journey": journey, "since": _aware("since", since), "until": _aware("until", until), "mode": mode},
    ).all()
    groups = {flag: [u for u in units if u.holdout is flag] for flag in (False, True)}
    n_t, n_h = len(groups[False]), len(groups[True])
    x_t = sum(1 for u in groups[False] if u.converted)
    x_h = sum(1 for u in groups[True] if u.converted)
    revenue = {flag: np.array([float(u.revenue) for u in g if u.revenue], dtype=float) for flag, g in groups.items()}
    result: dict[str, Any] = {
        "treated_n": n_t, "holdout_n": n_h, "treated_conversions": x_t, "holdout_conversions": x_h,
        "treated_rate": x_t / n_t if n_t else None, "holdout_rate": x_h / n_h if n_h else None,
        "abs_lift": None, "abs_lift_ci": None, "rel_lift": None, "rel_lift_ci": None,
        "treated_revenue_per_customer": float(revenue[False].sum()) / n_t if n_t else None,
        "holdout_revenue_per_customer": float(revenue[True].sum()) / n_h if n_h else None,
        "revenue_lift": None, "revenue_lift_ci": None, "holdout_needed": None,
        "method": ("unit: customer (entered in the period); abs_lift: difference of conversion rates, 95% "
                   "Newcombe hybrid score interval (Wilson); rel_lift: rate ratio - 1, 95% Katz log interval; "
                   f"revenue_lift: difference of revenue per customer, 95% percentile bootstrap "
                   f"({BOOTSTRAP_RESAMPLES} resamples per group, seed {BOOTSTRAP_SEED}); holdout_needed: "
                   "held-out customers still needed for the interval to exclude 0 at the current split, "
                   "n_h = z^2 (p_t q_t / r + p_h q_h) / d^2 with r = n_t / n_h (Wald)"),
    }
    if n_t and n_h:
        result["abs_lift"], result["abs_lift_ci"] = newcombe(x_t, n_t, x_h, n_h)
        result["rel_lift"], result["rel_lift_ci"] = katz(x_t, n_t, x_h, n_h)
        result["revenue_lift"] = result["treated_revenue_per_customer"] - result["holdout_revenue_per_customer"]
        result["revenue_lift_ci"] = bootstrap_mean_difference(revenue[False], n_t, revenue[True], n_h)
        result["holdout_needed"] = holdout_needed(x_t, n_t, x_h, n_h)
    return result


def ab_test(conn: sa.Connection, *, journey: str, step: str, since: datetime, until: datetime, mode: str = "live",
            now: datetime | None = None, spec: Any = None) -> dict:
    """The A/B test of a step for the enrollments that entered in [since, until): each variant's
    sends, clicks, conversions, rate (of the test's metric) and revenue, the difference of the
    best challenger from the first variant with its 95% interval, the sample size fixed up front,
    and the decision of the rule (a fixed-horizon test: README "A/B tests"). `now` (default the
    wall clock) decides whether the horizon's conversion window is over; `spec` the journey's
    (default: its segment file)."""
    spec = spec or _spec(journey)
    found = next((s for s in spec.steps if s.name == step), None) if spec else None
    from lifecycle.spec import ABTest

    settings = found.ab_test if found is not None and found.ab_test is not None else ABTest()
    listed = [v.name for v in found.variants] if found is not None else []
    window = spec.complete_after if spec else DEFAULT_WINDOW
    now = now or datetime.now(UTC)
    exposures = conn.execute(
        sa.text("SELECT variant, exposed_at, clicked, converted, revenue "
                "FROM lifecycle.ab_exposures(:journey, :step, :since, :until, :mode)"),
        {"journey": journey, "step": step, "since": _aware("since", since), "until": _aware("until", until),
         "mode": mode},
    ).all()
    names = listed + sorted({e.variant for e in exposures} - set(listed))  # control first, as listed
    k = max(len(names), 2)
    alpha = ALPHA / (k - 1)
    needed = required_n(settings.baseline_rate, settings.mde, alpha)
    by_variant = {name: [e for e in exposures if e.variant == name] for name in names}
    horizon = bool(names) and all(len(g) >= needed for g in by_variant.values()) and \
        max(g[needed - 1].exposed_at for g in by_variant.values()) + window <= now
    metric = settings.metric
    variants = []
    for name, group in by_variant.items():
        sample = group[:needed] if horizon else group
        hits = sum(1 for e in sample if getattr(e, metric))
        variants.append({
            "variant": name, "n": len(sample), "sent": len(group),
            "clicked": sum(1 for e in group if e.clicked), "converted": sum(1 for e in group if e.converted),
            "hits": hits, "rate": hits / len(sample) if sample else None,
            "revenue": float(sum(e.revenue for e in group if e.converted)),
        })
    rule = (f"fixed horizon: {needed} sends per variant, computed up front for alpha {ALPHA:g} two-sided"
            + (f" (Bonferroni: {alpha:.4g} per comparison with the first variant)" if k > 2 else "")
            + f", power {POWER:g}, baseline {metric} rate {settings.baseline_rate:g} and a minimum detectable "
            f"effect of {settings.mde:g} (absolute); the first {needed} sends of each variant are compared once "
            f"the last of them is {_span(window)} old (the conversion window); a variant wins if the 95% Newcombe "
            f"interval of its difference from the first variant excludes 0 (the better of those that do), "
            f"else no winner. Nothing is decided before the horizon. Winner: {settings.winner}.")
    result: dict[str, Any] = {"variants": variants, "difference": None, "difference_ci": None,
                              "required_n_per_variant": needed, "metric": metric, "rule": rule,
                              "decided": False, "winner": None}
    control = variants[0] if variants else None
    challengers = [v for v in variants[1:] if v["n"] and control and control["n"]]
    compared = []
    for v in challengers:
        d, ci = newcombe(v["hits"], v["n"], control["hits"], control["n"], alpha)
        compared.append((v, d, ci))
    if compared:
        best = max(compared, key=lambda t: (t[1], t[0]["variant"]))
        result["difference"], result["difference_ci"] = best[1], best[2]
        result["compared"] = f"{best[0]['variant']} - {control['variant']}"
    if not horizon:
        have = min((len(g) for g in by_variant.values()), default=0)
        result["decision"] = (f"collecting: {have} of {needed} sends in the smallest variant"
                              if have < needed else f"waiting {_span(window)} for the horizon's conversions")
        return result
    result["decided"] = True
    winners = [(v, d, ci) for v, d, ci in compared if ci[0] > 0 or ci[1] < 0]
    if not winners:
        result["decision"] = "no winner: no variant differs from the first by a significant amount"
        return result
    # a challenger significantly better wins; if all that differ are worse, the first variant wins
    better = [t for t in winners if t[1] > 0]
    winner = max(better, key=lambda t: (t[1], t[0]["variant"]))[0]["variant"] if better else control["variant"]
    result["winner"] = winner
    result["decision"] = f"winner: {winner}"
    return result


def _span(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g}h" if hours < 48 else f"{hours / 24:g} days"
