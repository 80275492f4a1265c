"""What `lifecycle demo` prints about results (lifecycle_demo.cli.results_tables): the funnel rows,
the holdout lift and the A/B test, read back from the Journeys page's planted month of win_back
(tests/test_ui_page.py: a holdout of 5 customers and an email_2 with variants A and B); and the
lift block of browse_abandonment (10% held out) after the journey ran on the seeded demo shop with
its planted sessions (tests/journeys/test_browse_abandonment.py), its numbers recounted from the
audit tables."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from types import SimpleNamespace

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle
from journeys.conftest import intervals_for, journey_run
from journeys.test_browse_abandonment import plant as plant_browse_cases
from test_ui_page import EMAIL_1, EMAIL_2, HOLDOUT, JOURNEY, plant

from lifecycle.config import SEGMENTS_DIR
from lifecycle.spec import load_spec
from lifecycle_demo.cli import DEMO_LIFT_NOTE, results_tables


def _rows(text: str, first: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.split()[:1] == [first]]


def test_the_demo_prints_funnels_lift_and_the_ab_test(shop_db):
    engine, _, _ = shop_db
    plant(engine)
    # the planted month as a journey with a 20% holdout whose email_2 tests variants A and B
    spec = SimpleNamespace(journey=JOURNEY, holdout_percent=20, complete_after=timedelta(days=7),
                           steps=[SimpleNamespace(name="email_1", variants=()),
                                  SimpleNamespace(name="email_2", ab_test=None,
                                                  variants=(SimpleNamespace(name="A"), SimpleNamespace(name="B")))])
    text = results_tables(engine, [spec], datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))

    funnel = {(r[1], r[2] if r[2] in ("A", "B") else ""): r for r in _rows(text, JOURNEY)}
    email_1 = funnel[("email_1", "")]
    assert email_1[2:] == [str(EMAIL_1[k]) for k in ("entered", "sent", "delivered", "opened", "clicked",
                                                     "converted")] + [f"{EMAIL_1['revenue']:.2f}"]
    for variant, numbers in EMAIL_2.items():
        row = funnel[("email_2", variant)]
        assert (row[4], row[6], row[7]) == tuple(str(numbers[k]) for k in ("sent", "opened", "clicked"))

    assert f"Holdout lift: {JOURNEY} (20% of customers held out" in text
    (treated,) = _rows(text, "treated")
    (held,) = [r for r in _rows(text, "held") if r[1] == "out"]
    assert treated[1:4] == [str(HOLDOUT["treated_n"]), str(HOLDOUT["treated_conversions"]), "20.0%"]
    assert held[2:5] == [str(HOLDOUT["holdout_n"]), str(HOLDOUT["holdout_conversions"]), "20.0%"]
    assert "absolute lift +0.0% [" in text  # equal rates
    assert "(Newcombe)" in text and "(Katz)" in text and "(bootstrap)" in text

    ab_text = text.split(f"A/B test: {JOURNEY} email_2 (metric converted;")[1]
    ab = {r[0]: r for r in (line.split() for line in ab_text.splitlines()[2:4])}
    assert (ab["A"][1], ab["A"][2]) == ("6", "2") and (ab["B"][1], ab["B"][2]) == ("6", "0")
    assert "\n  decision: collecting: 6 of " in ab_text


# ----------------------------------------------------------------------------- a journey's real holdout

BROWSE = "browse_abandonment"
# The demo runs the last three days hourly; every 6 hours over the last four days finds the same
# sessions (a run looks 48 h back) in a quarter of the runs, and the lift only needs who entered
# and who ordered.
BROWSE_EVERY = timedelta(hours=6)
BROWSE_DAYS = 4


def _browse_lift_block(text: str) -> list[str]:
    head = f"Holdout lift: {BROWSE} (10% of customers held out; 95% intervals):"
    lines = text.splitlines()
    return lines[lines.index(head) + 1:lines.index(head) + 6]


def _interval(text: str, before: str) -> tuple[float, float, float]:
    """(value, low, high) of `<before> +1.2% [-3.4%, +5.6%]` (percentages as fractions)."""
    value, low, high = text.split(before, 1)[1].split()[:3]
    number = lambda s: float(s.strip("[],%")) / (100 if s.rstrip("],").endswith("%") else 1)  # noqa: E731
    return number(value), number(low), number(high)


def recount(engine, since: datetime, until: datetime) -> dict[bool, dict]:
    """Per group (held out or not), from the audit tables: customers whose enrollment entered in
    [since, until), those of them with a conversion, and the revenue of their converting orders
    (an order counted once)."""
    with engine.connect() as conn:
        enrollments = pd.read_sql(sa.text(
            "SELECT enrollment_id, customer_id, holdout FROM lifecycle.enrollments WHERE journey = :j "
            "AND mode = 'live' AND entered_at >= :since AND entered_at < :until"),
            conn, params={"j": BROWSE, "since": since, "until": until})
        conversions = pd.read_sql(sa.text(
            "SELECT enrollment_id, order_id, revenue FROM lifecycle.conversions WHERE journey = :j AND mode = 'live'"),
            conn, params={"j": BROWSE}, coerce_float=False)
    converted = enrollments.merge(conversions, on="enrollment_id")
    groups = {}
    for held in (False, True):
        mine = converted[converted.holdout == held].drop_duplicates("order_id")
        groups[held] = {"n": enrollments[enrollments.holdout == held].customer_id.nunique(),
                        "x": mine.customer_id.nunique(), "revenue": float(sum(mine.revenue))}
    return groups


@pytest.mark.slow  # a journey replay (16 runs)
def test_the_demo_prints_the_lift_of_a_journey_with_a_holdout_as_the_audit_tables_count_it(shop_db):
    """browse_abandonment on the seeded demo shop and its planted sessions: both groups have
    customers and conversions (the 600-customer shop's few held-out customers buy nothing in these
    days; the planted held-out buyer does), and each printed figure is the one the audit tables
    give. The shop's orders do not depend on what was sent, so the lift's intervals span 0, as the
    printed note says."""
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    spec = load_spec(SEGMENTS_DIR / f"{BROWSE}.sql")
    assert spec.holdout_percent == 10
    journey_run(shop_db, BROWSE, intervals_for(anchor - BROWSE_DAYS * timedelta(days=1), anchor, BROWSE_EVERY),
                push=True, setup=lambda replay: plant_browse_cases(engine, anchor, replay.push))
    since, until = anchor - 365 * timedelta(days=1), anchor + timedelta(days=1)  # as the demo asks
    text = results_tables(engine, [spec], since, until)
    treated_line, held_line, _abs, _revenue = block = _browse_lift_block(text)[1:5]

    groups = recount(engine, since, until)
    t, h = groups[False], groups[True]
    assert t["x"] > 0 and h["x"] > 0 and t["n"] > h["n"] > 0
    p_t, p_h = t["x"] / t["n"], h["x"] / h["n"]
    assert treated_line.split() == ["treated", str(t["n"]), str(t["x"]), f"{p_t:.1%}", f"{t['revenue'] / t['n']:.2f}"]
    assert held_line.split() == ["held", "out", str(h["n"]), str(h["x"]), f"{p_h:.1%}",
                                 f"{h['revenue'] / h['n']:.2f}"]

    lift, low, high = _interval(block[2], "absolute lift")
    assert f"{lift:+.1%}" == f"{p_t - p_h:+.1%}" and low < 0 < high  # customers who ignore email: ~0
    revenue, low, high = _interval(block[3], "revenue per customer")
    assert f"{revenue:+.2f}" == f"{t['revenue'] / t['n'] - h['revenue'] / h['n']:+.2f}" and low < 0 < high
    z, d, r = NormalDist().inv_cdf(0.975), p_t - p_h, t["n"] / h["n"]
    needed = math.ceil(z ** 2 * (p_t * (1 - p_t) / r + p_h * (1 - p_h)) / d ** 2) - h["n"]
    assert block[3].endswith(f"held-out customers still needed for the interval to exclude 0: {needed}")
    assert DEMO_LIFT_NOTE in text
