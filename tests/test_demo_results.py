"""What `lifecycle demo` prints about results (lifecycle_demo.cli.results_tables): the funnel rows,
the holdout lift and the A/B test, read back from the Journeys page's planted month of win_back
(tests/test_ui_page.py: a holdout of 5 customers and an email_2 with variants A and B)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from test_ui_page import EMAIL_1, EMAIL_2, HOLDOUT, JOURNEY, plant

from lifecycle_demo.cli import results_tables


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
