"""product_recommendations end to end on a fresh demo shop (the `shop_db` fixture, embedded
PostgreSQL) plus test-only rows: weekly runs ending on the Mondays 2026-11-09, 11-16 and
11-23 (A-11d, A-4d, A+3d) and a manual mid-week run ending Wednesday 11-18 (A-2d, the same ISO
week as 11-16), against a real SMTP server. The outcome is derived here in Python from the
shop tables, never from the segment SQL or the recommender functions.

Rules (the product's issue): customers who viewed a product (page views with a customer and a
product) or bought (non-cancelled orders) in [as_of - 30d, as_of) get a "picked for you" email
of up to 4 products they never bought (no non-cancelled order before as_of), ranked by
item-to-item co-occurrence: for each candidate, the number of non-cancelled orders in
[as_of - 90d, as_of) holding it together with one of the customer's viewed-or-bought products,
summed over those products; highest first, ties to the lower product_id. No candidate, no
email. One enrollment per customer and ISO week of the run's as_of (key customer:YYYY-Www; a
second run in the same week leaves enrolled customers alone); the email goes out at once. An
order with one of the picks after the email and before the next weekly run converts.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from lifecycle.channels.email import message_id_for
from lifecycle.render import money

from .conftest import (
    ANCHOR,
    DAY,
    HOUR,
    VALID_EMAIL,
    Candidate,
    Conversion,
    ExitRule,
    Expected,
    JourneyRun,
    Shop,
    StepRule,
    check_conversions,
    check_enrollments,
    check_messages,
    check_quarantine,
    check_runs,
    check_smtp,
    journey_run,
    simulate,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "product_recommendations"
WEEK = 7 * DAY
ENDS = [ANCHOR - 11 * DAY, ANCHOR - 4 * DAY, ANCHOR - 2 * DAY, ANCHOR + 3 * DAY]  # Mon, Mon, Wed, Mon
INTERVALS = [(end - WEEK, end) for end in ENDS]
ACTIVITY, PAIRS, MAX_PICKS = 30 * DAY, 90 * DAY, 4
MAX_LATENESS = 3 * DAY  # the weekly schedule's default
COMPLETE_AFTER = 7 * DAY
STEP = "picked_for_you"
CONDITION = "product_recommendations_ordered_pick"
SHOP_URL = "https://shop.example.com"

# Test-only rows: a product nobody ever bought, viewed by a customer with no other activity
# (active, but nothing is ever bought together with what they viewed: no picks, no email), and
# anonymous views of the planted seed product (no customer: never a seed).
UNSOLD, LONELY, ANON_VIEWS = 990001, 990101, 990200


def plant(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.products (product_id, sku, name, category, brand, price, image_url, product_type, tier) "
            "VALUES (:p, 'TST-UNSOLD', 'Test Lamp', 'furniture', 'Testlab', 49.00, "
            "'https://cdn.shop.example.com/img/TST-UNSOLD.jpg', 'hard', 1)"), {"p": UNSOLD})
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, created_at) "
            "VALUES (:c, 'lonely@recommendations.example.com', 'Lonely', 'DE', 'Europe/Berlin', :t)"),
            {"c": LONELY, "t": ANCHOR - 100 * DAY})
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) "
            "VALUES (:c, 'email', 'opted_in', 'test', :t)"), {"c": LONELY, "t": ANCHOR - 100 * DAY})
        conn.execute(sa.text(
            "INSERT INTO shop.page_views (view_id, customer_id, anonymous_id, session_id, product_id, category, "
            "viewed_at, seconds_on_page) VALUES (:v, :c, NULL, 'test-lonely', :p, 'furniture', :t, 40)"),
            {"v": 99_000_001, "c": LONELY, "p": UNSOLD, "t": ANCHOR - DAY})
        for i in range(3):
            conn.execute(sa.text(
                "INSERT INTO shop.page_views (view_id, customer_id, anonymous_id, session_id, product_id, category, "
                "viewed_at, seconds_on_page) SELECT :v, NULL, 'a-test', 'test-anon', product_id, category, :t, 30 "
                "FROM shop.products WHERE sku = 'JEW-02-T3'"),
                {"v": 99_000_100 + i, "t": ANCHOR - (3 + i) * DAY})


# ----------------------------------------------------------------------------- the rules, in Python


def iso_week_key(customer_id: int, as_of: datetime) -> str:
    year, week, _ = as_of.date().isocalendar()  # as_of is UTC
    return f"{customer_id}:{year}-W{week:02d}"


class Rules:
    """The journey's rules over the shop's rows."""

    def __init__(self, engine: sa.Engine, shop: Shop) -> None:
        self.shop = shop
        with engine.connect() as conn:
            self.views = [(c, p, t) for c, p, t in conn.execute(sa.text(
                "SELECT customer_id, product_id, viewed_at FROM shop.page_views"))
                if c is not None and p is not None]
            lines = conn.execute(sa.text("SELECT order_id, product_id FROM shop.order_items")).all()
        orders = {o.order_id: o for o in shop.orders()}
        self.products_of: dict[int, set[int]] = defaultdict(set)
        for order_id, product_id in lines:
            self.products_of[order_id].add(product_id)
        self.orders = sorted((o for o in orders.values() if o.status != "cancelled"),
                             key=lambda o: (o.ordered_at, o.order_id))
        self.picks: dict[str, list[tuple[int, int]]] = {}  # key -> [(product_id, score)] as enrolled
        self.enrolled: set[str] = set()
        self.ties = 0  # candidate lists whose top MAX_PICKS + 1 hold two equal scores

    def pairs(self, as_of: datetime, window: timedelta = PAIRS) -> Counter:
        """(product, other product) -> non-cancelled orders in [as_of - window, as_of) holding both."""
        counts: Counter = Counter()
        for o in self.orders:
            if as_of - window <= o.ordered_at < as_of:
                products = self.products_of[o.order_id]
                counts.update((a, b) for a in products for b in products if a != b)
        return counts

    def recommend(self, as_of: datetime) -> dict[int, list[tuple[int, int]]]:
        """customer -> every candidate (product, score), best first."""
        seeds: dict[int, set[int]] = defaultdict(set)
        for customer_id, product_id, viewed_at in self.views:
            if as_of - ACTIVITY <= viewed_at < as_of:
                seeds[customer_id].add(product_id)
        bought: dict[int, set[int]] = defaultdict(set)
        for o in self.orders:
            if o.ordered_at < as_of:
                bought[o.customer_id] |= self.products_of[o.order_id]
            if as_of - ACTIVITY <= o.ordered_at < as_of:
                seeds[o.customer_id] |= self.products_of[o.order_id]
        neighbours: dict[int, dict[int, int]] = defaultdict(dict)
        for (a, b), n in self.pairs(as_of).items():
            neighbours[a][b] = n
        out = {}
        for customer_id, products in seeds.items():
            score: Counter = Counter()
            for seed in products:
                for other, n in neighbours[seed].items():
                    if other not in bought[customer_id]:
                        score[other] += n
            if score:
                out[customer_id] = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))
        return out

    def select(self, interval_start: datetime, as_of: datetime):
        for customer_id, ranked in self.recommend(as_of).items():
            key = iso_week_key(customer_id, as_of)
            if key in self.enrolled:
                continue  # already enrolled this ISO week: left alone
            top = [score for _, score in ranked[: MAX_PICKS + 1]]
            self.ties += len(top) != len(set(top))
            email = self.shop.email_of[customer_id]
            if VALID_EMAIL.match(email or ""):
                self.enrolled.add(key)
                self.picks[key] = ranked[:MAX_PICKS]
            yield Candidate(key, customer_id, as_of, email)

    def ordered_pick(self, e, as_of: datetime) -> Conversion | None:
        picked = {p for p, _ in self.picks[e.key]}
        for o in self.orders:
            if o.customer_id == e.customer_id and e.entered_at < o.ordered_at < as_of and \
                    self.products_of[o.order_id] & picked:
                return Conversion(CONDITION, o.ordered_at, str(o.order_id), o.total)
        return None


def expected_outcome(shop: Shop, rules: Rules, suppressed_before: dict[int, str]) -> Expected:
    return simulate(shop, INTERVALS, select=rules.select, steps=[StepRule(STEP, timedelta(0))],
                    exits=[ExitRule(CONDITION, None, rules.ordered_pick)], max_lateness=MAX_LATENESS,
                    complete_after=COMPLETE_AFTER, suppressed_before=suppressed_before)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(shop_db) -> JourneyRun:
    plant(shop_db[0])
    return journey_run(shop_db, JOURNEY, INTERVALS)


@pytest.fixture(scope="module")
def rules(run) -> Rules:
    return Rules(run.engine, run.shop)


@pytest.fixture(scope="module")
def expected(run, rules) -> Expected:
    return expected_outcome(run.shop, rules, run.suppressed_before)


def context_of(run: JourneyRun, key: str) -> dict:
    return run.query("SELECT context FROM lifecycle.enrollments WHERE journey = :journey AND enrollment_key = :k",
                     k=key)[0][0]


def keys_of(run: JourneyRun, customer_id: int) -> dict[str, str]:
    """enrollment key -> status, for one customer."""
    return dict(run.query("SELECT enrollment_key, status FROM lifecycle.enrollments "
                          "WHERE journey = :journey AND customer_id = CAST(:c AS text)", c=customer_id))


def sku_id(run: JourneyRun, sku: str) -> int:
    return run.query("SELECT product_id FROM shop.products WHERE sku = :s", s=sku)[0][0]


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_customers(run, expected):
    check_runs(run, expected)
    mondays = [r["selected"] for r in expected.per_run if r["end"].weekday() == 0]
    assert len(mondays) == 3 and min(mondays) > 100  # the random shop's customers too
    # The mid-week run selects only customers not yet enrolled for the week (new activity).
    assert 0 < expected.per_run[2]["selected"] < mondays[1]


def test_enrollments_one_per_customer_and_iso_week(run, expected):
    check_enrollments(run, expected)
    weeks = Counter(key.split(":")[1] for key in run.enrollment_rows())
    assert set(weeks) == {"2026-W46", "2026-W47", "2026-W48"}  # 11-16 and 11-18 share week 47
    per_customer_week = Counter(tuple(k.split(":")) for k in run.enrollment_rows())
    assert max(per_customer_week.values()) == 1


def test_picks_are_the_top_four_co_purchases_never_bought(run, rules, expected):
    """Every enrollment's context holds exactly the derived picks, in rank order, with scores, as
    product references: no card and no price (the email gets today's card when it is sent)."""
    actual, wanted = {}, {}
    for key, context in run.query("SELECT enrollment_key, context FROM lifecycle.enrollments "
                                  "WHERE journey = :journey"):
        assert all(set(p) == {"product_id", "score"} for p in context["products"]), context["products"]
        actual[key] = [(p["product_id"], p["score"]) for p in context["products"]]
        assert context["iso_week"] == key.split(":")[1]
    for key, picks in rules.picks.items():
        wanted[key] = list(picks)
    assert actual == wanted
    assert set(wanted) == set(expected.enrollments)
    assert Counter(len(p) for p in wanted.values())[MAX_PICKS] > 0.5 * len(wanted)
    assert rules.ties > 0, "no equal scores near the cut: the tie-break was not exercised"


def test_messages_match_expected(run, expected):
    check_messages(run, expected)
    statuses = Counter(m.status for m in expected.messages)
    assert statuses["sent"] > 50 and statuses["suppressed"] > 0


def test_smtp_received_exactly_the_sent_emails(run, expected):
    check_smtp(run, expected)


def test_conversions_are_orders_with_a_pick(run, expected):
    check_conversions(run, expected)
    assert any(e.status == "converted" for e in expected.enrollments.values())


def test_quarantine(run, expected):
    check_quarantine(run, expected)


def enrollment_key_of_email(run: JourneyRun) -> dict[str, str]:
    """Message-ID -> enrollment key, for the messages recorded as sent."""
    rows = run.query("SELECT m.idempotency_key, e.enrollment_key FROM lifecycle.messages m "
                     "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.journey = :journey "
                     "AND m.status = 'sent'")
    return {message_id_for(idempotency_key): key for idempotency_key, key in rows}


def test_the_email_shows_each_pick_with_image_name_and_price(run, rules):
    key_of = enrollment_key_of_email(run)
    products = {int(p.product_id): p for p in run.shop.frames["products"].itertuples(index=False)}
    for message in run.emails:
        key = key_of[message["Message-ID"]]
        assert message["To"] == run.shop.email_of[int(key.split(":")[0])]
        picks = [products[pid] for pid, _ in rules.picks[key]]
        text, body = text_and_html(message)
        assert picks[0].name in message["Subject"]
        positions = []
        for p in picks:
            url = f"{SHOP_URL}/p/{p.sku}"
            assert p.name in text and html.escape(p.name) in body
            assert f'src="{p.image_url}"' in body
            assert money(p.price, "EUR") in text and money(p.price, "EUR") in body
            assert f"{url}?utm_source=lifecycle" in text
            positions.append(body.index(f'src="{p.image_url}"'))
        assert positions == sorted(positions), "picks shown out of rank order"
    assert len(run.emails) == len(key_of) > 50


# ----------------------------------------------------------------------------- planted cases


def test_planted_cases_cover_every_rule(run):
    names = {n for n in run.planted if n.startswith(JOURNEY)}
    assert names == {
        "product_recommendations_bundle_buyer_1", "product_recommendations_bundle_buyer_2",
        "product_recommendations_viewer", "product_recommendations_bought_pick", "product_recommendations_inactive",
        "product_recommendations_cancelled_only", "product_recommendations_no_consent",
        "product_recommendations_converts", "product_recommendations_ordered_other",
    }


def picked(rules: Rules, key: str) -> list[int]:
    return [pid for pid, _ in rules.picks[key]]


def test_the_bundle_makes_the_serum_the_earrings_strongest_pair(run, rules):
    earrings, serum = sku_id(run, "JEW-02-T3"), sku_id(run, "COS-02-T3")
    for as_of in ENDS:
        pairs = rules.pairs(as_of)
        strongest = max(n for (a, _), n in pairs.items() if a == earrings)
        assert pairs[earrings, serum] == strongest >= 10
    for n in (1, 2):
        case = run.planted[f"product_recommendations_bundle_buyer_{n}"]
        for key in keys_of(run, case.customer_id):
            assert not {earrings, serum} & set(picked(rules, key))


def test_viewer_is_picked_for_from_the_run_after_the_view(run, rules):
    case = run.planted["product_recommendations_viewer"]
    serum = sku_id(run, "COS-02-T3")
    weeks = keys_of(run, case.customer_id)
    assert weeks == {f"{case.customer_id}:2026-W47": "active", f"{case.customer_id}:2026-W48": "active"}
    for key in weeks:
        assert picked(rules, key)[0] == serum
    assert [m["X-Lifecycle-Step"] for m in run.emails if m["To"] == case.email] == [STEP, STEP]


def test_a_bought_product_is_never_picked_even_when_it_scores_best(run, rules):
    case = run.planted["product_recommendations_bought_pick"]
    earrings, serum = sku_id(run, "JEW-02-T3"), sku_id(run, "COS-02-T3")
    weeks = keys_of(run, case.customer_id)
    assert set(weeks) == {f"{case.customer_id}:2026-W47", f"{case.customer_id}:2026-W48"}
    for key in weeks:
        as_of = ENDS[1] if key.endswith("W47") else ENDS[3]
        assert serum not in picked(rules, key) and picked(rules, key)
        # The only seed is the earrings: without the exclusion the serum would lead.
        assert rules.pairs(as_of)[earrings, serum] > rules.picks[key][0][1]
        assert [p["product_id"] for p in context_of(run, key)["products"]] == picked(rules, key)
    # The mid-week run (A-2d) selected them again for week 47, but they were enrolled by A-4d's run.
    assert run.query("SELECT enrolled_at FROM lifecycle.enrollments WHERE journey = :journey "
                     "AND enrollment_key = :k", k=f"{case.customer_id}:2026-W47")[0][0] == ENDS[1]


@pytest.mark.parametrize("name", ["product_recommendations_inactive", "product_recommendations_cancelled_only"])
def test_never_picked_for(run, name):
    assert keys_of(run, run.planted[name].customer_id) == {}


def test_active_but_nothing_bought_together_means_no_email(run, rules):
    assert LONELY in {c for c, _, t in rules.views if ENDS[-1] - ACTIVITY <= t < ENDS[-1]}
    assert LONELY not in rules.recommend(ENDS[-1])
    assert keys_of(run, LONELY) == {}


def test_no_consent_is_enrolled_and_recorded_suppressed(run):
    case = run.planted["product_recommendations_no_consent"]
    key = f"{case.customer_id}:2026-W47"
    assert set(keys_of(run, case.customer_id)) == {key, f"{case.customer_id}:2026-W48"}
    rows = run.query("SELECT m.status, m.reason FROM lifecycle.messages m JOIN lifecycle.enrollments e "
                     "USING (enrollment_id) WHERE e.enrollment_key = :k AND m.journey = :journey", k=key)
    assert rows == [("suppressed", "no consent")]
    assert not [m for m in run.emails if m["To"] == case.email]


def test_an_order_with_a_pick_converts_and_drops_out_of_the_next_picks(run, rules):
    case = run.planted["product_recommendations_converts"]
    serum = sku_id(run, "COS-02-T3")
    (order_id,) = case.order_ids
    w47, w48 = f"{case.customer_id}:2026-W47", f"{case.customer_id}:2026-W48"
    assert keys_of(run, case.customer_id) == {w47: "converted", w48: "active"}
    total, ordered = run.query("SELECT total, ordered_at FROM shop.orders WHERE order_id = :o", o=order_id)[0]
    assert run.conversion_rows()[w47] == (case.customer_id, CONDITION, str(order_id), total, ordered)
    assert serum in picked(rules, w47) and serum not in picked(rules, w48)


def test_an_order_without_a_pick_does_not_convert(run):
    case = run.planted["product_recommendations_ordered_other"]
    w47 = f"{case.customer_id}:2026-W47"
    assert keys_of(run, case.customer_id)[w47] == "completed"
    assert w47 not in run.conversion_rows()


# ----------------------------------------------------------------------------- the recommender SQL


def test_co_purchased_counts_the_orders_holding_both(run, rules):
    for as_of, days in ((ENDS[1], 90), (ENDS[1], 30), (ANCHOR - 60 * DAY, 90)):
        rows = run.query("SELECT product_id, other_product_id, orders_together FROM lifecycle.co_purchased(:a, :d)",
                         a=as_of, d=days)
        wanted = dict(rules.pairs(as_of, days * DAY))
        assert {(a, b): n for a, b, n in rows} == wanted
        assert all(wanted[b, a] == n for (a, b), n in wanted.items())


def test_recommend_for_replays_any_as_of_and_takes_a_customer_list(run, rules):
    """What browse-abandonment style callers use: a given list of customers, a past as_of, fewer items."""
    as_of = ANCHOR - 30 * DAY - 5 * HOUR
    everyone = rules.recommend(as_of)
    rows = run.query("SELECT customer_id, product_id, score, rank FROM lifecycle.recommend_for(NULL, :a, 2)", a=as_of)
    assert sorted(rows) == sorted((c, p, s, i + 1) for c, ranked in everyone.items()
                                  for i, (p, s) in enumerate(ranked[:2]))
    some = sorted(everyone)[::7] + [LONELY, 424242]  # the lonely customer and an unknown id get nothing
    rows = run.query("SELECT customer_id, product_id, score, rank FROM "
                     "lifecycle.recommend_for(CAST(:ids AS bigint[]), :a)", ids=some, a=as_of)
    assert sorted(rows) == sorted((c, p, s, i + 1) for c in some for i, (p, s) in enumerate(everyone.get(c, [])[:4]))
    assert len({c for c, *_ in rows}) == len(sorted(everyone)[::7])
