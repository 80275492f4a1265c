"""cross_sell end to end: daily runs ending A-6d .. A+3d on a fresh demo shop (the `shop_db`
fixture, embedded PostgreSQL) plus a test-only order, against a real SMTP server, compared with
the outcome derived here in Python from the shop tables (never the segment SQL or the
recommender functions).

Rules (the product's issue): every non-cancelled order is a candidate (key: order id, clock:
ordered_at); a run picks up orders placed in [as_of - 3d, as_of) that are not enrolled yet.
Suggestions: the cross_sell links of the ordered products, minus every product the customer
had bought by the time of the order (non-cancelled orders at or before it, this one included),
ranked by the number of non-cancelled orders in [as_of - 90d, as_of) holding the suggestion
together with one of the order's products, summed over the order's products (highest first,
ties to the lower product_id), the top 3; an order with no suggestion is not selected. A
thank-you 1 day after the order, a follow-up 2 days after that. The customer's next
non-cancelled order ends the enrollment: converted (that order, its total) if it holds a
suggested product, otherwise exited without a conversion.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal

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
    intervals_for,
    journey_run,
    simulate,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "cross_sell"
FIRST_END, LAST_END = ANCHOR - 6 * DAY, ANCHOR + 3 * DAY
LOOKBACK, PAIRS, MAX_SUGGESTIONS = 3 * DAY, 90 * DAY, 3
STEPS = [StepRule("thank_you", DAY), StepRule("follow_up", 3 * DAY)]
MAX_LATENESS = 2 * DAY  # the daily schedule's default
CONVERTS, ENDS = "cross_sell_ordered_suggestion", "purchased_since_entry"
SHOP_URL = "https://shop.example.com"
INVALID_ORDER = 990_001  # test-only: an order by the planted customer whose email is 'not-an-email'


def plant(engine: sa.Engine, customer_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, shipping_country) "
            "VALUES (:o, :c, :t, 'placed', 19.99, 'EUR', 'ES')"), {"o": INVALID_ORDER, "c": customer_id,
                                                                   "t": ANCHOR - 2 * DAY})
        conn.execute(sa.text(
            "INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
            "SELECT :o, product_id, 1, price FROM shop.products WHERE sku = 'CLO-01-T1'"), {"o": INVALID_ORDER})


# ----------------------------------------------------------------------------- the rules, in Python


class Rules:
    def __init__(self, engine: sa.Engine, shop: Shop) -> None:
        self.shop = shop
        with engine.connect() as conn:
            lines = conn.execute(sa.text("SELECT order_id, product_id FROM shop.order_items")).all()
            self.links: dict[int, set[int]] = defaultdict(set)
            for p, q in conn.execute(sa.text(
                    "SELECT product_id, linked_product_id FROM shop.product_links WHERE kind = 'cross_sell'")):
                self.links[p].add(q)
        self.products_of: dict[int, set[int]] = defaultdict(set)
        for order_id, product_id in lines:
            self.products_of[order_id].add(product_id)
        self.orders = sorted((o for o in shop.orders() if o.status != "cancelled"),
                             key=lambda o: (o.ordered_at, o.order_id))
        self.order = {o.order_id: o for o in self.orders}
        self.suggested: dict[str, list[tuple[int, int]]] = {}  # key -> [(product_id, score)] as enrolled
        self.unranked: dict[str, list[tuple[int, int]]] = {}  # key -> every suggestion candidate, ranked
        self.enrolled: set[str] = set()

    def pairs(self, as_of: datetime) -> Counter:
        counts: Counter = Counter()
        for o in self.orders:
            if as_of - PAIRS <= o.ordered_at < as_of:
                products = self.products_of[o.order_id]
                counts.update((a, b) for a in products for b in products if a != b)
        return counts

    def select(self, interval_start: datetime, as_of: datetime):
        pairs = None
        for o in self.orders:
            key = str(o.order_id)
            if not (as_of - LOOKBACK <= o.ordered_at < as_of) or key in self.enrolled:
                continue
            had = set().union(*(self.products_of[p.order_id] for p in self.orders
                                if p.customer_id == o.customer_id and p.ordered_at <= o.ordered_at))
            linked = set().union(*(self.links[p] for p in self.products_of[o.order_id])) - had
            if not linked:
                continue
            pairs = pairs if pairs is not None else self.pairs(as_of)
            scores = {q: sum(pairs[p, q] for p in self.products_of[o.order_id]) for q in linked}
            ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            email = self.shop.email_of[o.customer_id]
            if VALID_EMAIL.match(email or ""):
                self.enrolled.add(key)
                self.suggested[key], self.unranked[key] = ranked[:MAX_SUGGESTIONS], ranked
            yield Candidate(key, o.customer_id, o.ordered_at, email)

    def next_order(self, e, as_of: datetime):
        return self.shop.first_order_between(e.customer_id, e.entered_at, as_of)

    def ordered_suggestion(self, e, as_of: datetime) -> Conversion | None:
        nxt = self.next_order(e, as_of)
        if nxt and self.products_of[nxt.order_id] & {p for p, _ in self.suggested[e.key]}:
            return Conversion(CONVERTS, nxt.ordered_at, str(nxt.order_id), nxt.total)
        return None

    def ordered_again(self, e, as_of: datetime) -> Conversion | None:
        nxt = self.next_order(e, as_of)
        return Conversion(ENDS, nxt.ordered_at, str(nxt.order_id), nxt.total) if nxt else None


def expected_outcome(shop: Shop, rules: Rules, intervals, suppressed_before) -> Expected:
    expected = simulate(shop, intervals, select=rules.select, steps=STEPS,
                        exits=[ExitRule(CONVERTS, None, rules.ordered_suggestion),
                               ExitRule(ENDS, None, rules.ordered_again)],
                        max_lateness=MAX_LATENESS, suppressed_before=suppressed_before)
    for e in expected.enrollments.values():  # the second rule is `status: exited`: no conversion
        if e.exit_reason == ENDS:
            e.status, e.conversion = "exited", None
    return expected


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(shop_db) -> JourneyRun:
    engine, planted, _ = shop_db
    plant(engine, planted["cart_invalid_email"].customer_id)
    return journey_run(shop_db, JOURNEY, intervals_for(FIRST_END - DAY, LAST_END, DAY))


@pytest.fixture(scope="module")
def rules(run) -> Rules:
    return Rules(run.engine, run.shop)


@pytest.fixture(scope="module")
def expected(run, rules) -> Expected:
    return expected_outcome(run.shop, rules, run.intervals, run.suppressed_before)


def sku_id(run: JourneyRun, sku: str) -> int:
    return run.query("SELECT product_id FROM shop.products WHERE sku = :s", s=sku)[0][0]


def suggested_ids(run: JourneyRun, order_id: int) -> list[int]:
    context = run.query("SELECT context FROM lifecycle.enrollments WHERE journey = :journey AND enrollment_key = :k",
                        k=str(order_id))[0][0]
    return [p["product_id"] for p in context["suggested"]]


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_orders(run, expected):
    assert [end for _, end in run.intervals][0] == FIRST_END and run.intervals[-1][1] == LAST_END
    check_runs(run, expected)
    assert sum(r["selected"] for r in expected.per_run) > 30


def test_enrollments_one_per_order_and_how_each_ended(run, expected):
    check_enrollments(run, expected)
    statuses = Counter(e.status for e in expected.enrollments.values())
    assert statuses["converted"] and statuses["exited"] and statuses["active"]


def test_suggestions_are_the_top_three_linked_products_not_bought(run, rules, expected):
    """The suggestions are product references (id and score: no card, no price; the emails get
    today's cards when they are sent); what the order held stays whole cards (what was bought)."""
    products = {int(p.product_id): p for p in run.shop.frames["products"].itertuples(index=False)}
    actual, wanted = {}, {}
    for key, context in run.query("SELECT enrollment_key, context FROM lifecycle.enrollments "
                                  "WHERE journey = :journey"):
        assert all(set(p) == {"product_id", "score"} for p in context["suggested"]), context["suggested"]
        actual[key] = ([(p["product_id"], p["score"]) for p in context["suggested"]],
                       [(i["product_id"], i["name"], Decimal(str(i["price"])), i["image_url"], i["quantity"])
                        for i in context["items"]])
    for key, suggested in rules.suggested.items():
        items = sorted((products[p].name, p) for p in rules.products_of[int(key)])
        quantities = dict(run.query("SELECT product_id, quantity FROM shop.order_items WHERE order_id = :o",
                                    o=int(key)))
        wanted[key] = (list(suggested),
                       [(p, name, Decimal(str(products[p].price)), products[p].image_url, quantities[p])
                        for name, p in items])
    assert actual == wanted
    assert set(wanted) == set(expected.enrollments)
    assert any(len(r) > MAX_SUGGESTIONS for r in rules.unranked.values())  # the cut was exercised


def test_messages_match_expected(run, expected):
    check_messages(run, expected)
    by_step = Counter((m.step, m.status) for m in expected.messages)
    assert by_step["thank_you", "sent"] and by_step["follow_up", "sent"]


def test_smtp_received_exactly_the_sent_emails(run, expected):
    check_smtp(run, expected)


def test_conversions_only_for_a_next_order_with_a_suggestion(run, expected):
    check_conversions(run, expected)


def test_quarantine(run, expected):
    check_quarantine(run, expected)
    assert list(expected.quarantined) == [str(INVALID_ORDER)]


def test_the_emails_show_the_suggestions_in_rank_order(run, rules):
    rows = run.query("SELECT m.idempotency_key, e.enrollment_key FROM lifecycle.messages m "
                     "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.journey = :journey "
                     "AND m.status = 'sent'")
    key_of = {message_id_for(idempotency_key): key for idempotency_key, key in rows}
    products = {int(p.product_id): p for p in run.shop.frames["products"].itertuples(index=False)}
    for message in run.emails:
        key = key_of[message["Message-ID"]]
        text, body = text_and_html(message)
        if message["X-Lifecycle-Step"] == "thank_you":
            assert message["Subject"].startswith("Thanks for your order")
            assert f"{SHOP_URL}/account/orders/{key}?utm_source=lifecycle" in text
        positions = []
        for pid, _ in rules.suggested[key]:
            p = products[pid]
            assert p.name in text and html.escape(p.name) in body
            assert money(p.price, "EUR") in text and money(p.price, "EUR") in body
            assert f"{SHOP_URL}/p/{p.sku}?utm_source=lifecycle" in text
            positions.append(body.index(f'src="{p.image_url}"'))
        assert positions == sorted(positions), "suggestions shown out of rank order"
    assert len(run.emails) == len(key_of) > 20


# ----------------------------------------------------------------------------- planted cases


def test_planted_cases_cover_every_rule(run):
    assert {n for n in run.planted if n.startswith(JOURNEY)} == {
        "cross_sell_full_sequence", "cross_sell_converts", "cross_sell_ordered_other", "cross_sell_next_order_decides",
        "cross_sell_already_bought", "cross_sell_nothing_to_suggest", "cross_sell_top_three", "cross_sell_cancelled",
        "cross_sell_no_consent", "cross_sell_reordered_before_email", "cross_sell_converted_before_email",
    }


def ordered_at(run: JourneyRun, order_id: int) -> datetime:
    return run.query("SELECT ordered_at FROM shop.orders WHERE order_id = :o", o=order_id)[0][0]


def test_full_sequence_thank_you_then_follow_up(run):
    (order_id,) = run.planted["cross_sell_full_sequence"].order_ids
    at = ordered_at(run, order_id)
    assert at == ANCHOR - 4 * DAY - 2 * HOUR
    assert run.messages_of(str(order_id)) == {
        "thank_you": ("sent", None, at + DAY, ANCHOR - 3 * DAY),
        "follow_up": ("sent", None, at + 3 * DAY, ANCHOR - DAY),
    }
    assert set(suggested_ids(run, order_id)) == {sku_id(run, "SHO-01-T1"), sku_id(run, "SHO-02-T1")}
    assert run.enrollment_rows().get(str(order_id)).status == "active"  # watched for 7 days after the follow-up


def test_a_next_order_with_a_suggestion_converts(run):
    case = run.planted["cross_sell_converts"]
    first, again = case.order_ids
    e = run.enrollment_rows().get(str(first))
    assert (e.status, e.exit_reason, e.exited_at) == ("converted", CONVERTS, ordered_at(run, again))
    total = run.query("SELECT total FROM shop.orders WHERE order_id = :o", o=again)[0][0]
    assert run.conversion_rows()[str(first)] == (case.customer_id, CONVERTS, str(again), total, ordered_at(run, again))
    assert case.product_id in suggested_ids(run, first)
    assert set(run.messages_of(str(first))) == {"thank_you"}


@pytest.mark.parametrize("name", ["cross_sell_ordered_other", "cross_sell_next_order_decides"])
def test_a_next_order_without_a_suggestion_exits_without_conversion(run, name):
    case = run.planted[name]
    first, nxt = case.order_ids[:2]
    e = run.enrollment_rows().get(str(first))
    assert (e.status, e.exit_reason, e.exited_at) == ("exited", ENDS, ordered_at(run, nxt))
    assert str(first) not in run.conversion_rows()
    assert set(run.messages_of(str(first))) == {"thank_you"}
    assert not set(suggested_ids(run, first)) & {p for (p,) in run.query(
        "SELECT product_id FROM shop.order_items WHERE order_id = :o", o=nxt)}
    if name == "cross_sell_next_order_decides":  # the order after the next one holds a suggestion
        assert case.product_id in suggested_ids(run, first)


def test_the_next_order_gets_its_own_thank_you(run):
    _, again = run.planted["cross_sell_ordered_other"].order_ids
    assert run.messages_of(str(again))["thank_you"][0] == "sent"


def test_an_already_bought_product_is_not_suggested(run):
    case = run.planted["cross_sell_already_bought"]
    _, order_id = case.order_ids
    assert suggested_ids(run, order_id) == [sku_id(run, "SHO-02-T1")]


@pytest.mark.parametrize("name", ["cross_sell_nothing_to_suggest", "cross_sell_cancelled"])
def test_never_enrolled(run, name):
    assert run.enrollment_rows().get(str(run.planted[name].order_ids[-1])) is None


def test_four_linked_products_three_suggested(run, rules):
    (order_id,) = run.planted["cross_sell_top_three"].order_ids
    assert len(rules.unranked[str(order_id)]) == 4
    assert suggested_ids(run, order_id) == [p for p, _ in rules.unranked[str(order_id)][:3]]


def test_no_consent_is_recorded_suppressed(run):
    (order_id,) = run.planted["cross_sell_no_consent"].order_ids
    assert {step: m[:2] for step, m in run.messages_of(str(order_id)).items()} == {
        "thank_you": ("suppressed", "no consent"), "follow_up": ("suppressed", "no consent")}


def test_a_reorder_before_the_thank_you_exits_at_once(run):
    first, again = run.planted["cross_sell_reordered_before_email"].order_ids
    e = run.enrollment_rows().get(str(first))
    assert (e.status, e.enrolled_at, e.exited_at) == ("exited", ANCHOR - 2 * DAY, ordered_at(run, again))
    assert run.messages_of(str(first)) == {}
    assert run.messages_of(str(again))["thank_you"][0] == "sent"


def test_a_suggestion_bought_before_the_first_run_still_converts(run):
    """Suggestions leave out what was bought by the time of the order, not by the run: the
    necklace ordered 10 hours later (before any run saw the first order) is a suggestion, so
    that order converts the first one."""
    case = run.planted["cross_sell_converted_before_email"]
    first, again = case.order_ids
    assert case.product_id in suggested_ids(run, first)
    e = run.enrollment_rows().get(str(first))
    assert (e.status, e.enrolled_at, e.exited_at) == ("converted", ANCHOR - 2 * DAY, ordered_at(run, again))
    assert run.conversion_rows()[str(first)][2] == str(again)
    assert run.messages_of(str(first)) == {}
