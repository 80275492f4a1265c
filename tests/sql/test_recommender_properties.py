"""lifecycle.recommend_for against a Python oracle on random shops (Hypothesis).

The recommender ranks once per distinct set of seeds and reads every customer's purchases in one
pass (migration 024): an optimisation that must not change a single pick. Small catalogues make
ties, shared seed sets, seeds that are themselves picked and products bought with nothing common;
orders and views fall either side of each window's edges, some orders are cancelled, some views
anonymous or without a product.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .conftest import DAY, ShopSQL, _emptied

AS_OF = datetime(2026, 11, 23, tzinfo=UTC)
ACTIVITY_DAYS, PAIR_DAYS = 30, 90
CUSTOMERS, PRODUCTS = range(1, 8), range(1, 7)
# Offsets before as_of: on and just inside each window's edge, and outside it (-1 s: at or after as_of).
OFFSETS = [timedelta(seconds=-1), timedelta(0), timedelta(seconds=1), DAY, 29 * DAY, 30 * DAY,
           30 * DAY + timedelta(seconds=1), 89 * DAY, 90 * DAY, 91 * DAY, 400 * DAY]

orders = st.lists(st.tuples(st.sampled_from(CUSTOMERS), st.sampled_from(OFFSETS),
                            st.sampled_from(["delivered", "delivered", "cancelled"]),
                            st.sets(st.sampled_from(PRODUCTS), min_size=1, max_size=4)), max_size=14)
views = st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(CUSTOMERS)), st.sampled_from(OFFSETS),
                           st.one_of(st.none(), st.sampled_from(PRODUCTS))), max_size=14)


def oracle(order_rows, view_rows, max_items: int, wanted: set[int] | None) -> set[tuple]:
    """(customer_id, product_id, score, rank) as 007_recommendations.sql documents them."""
    def within(offset: timedelta, days: int) -> bool:  # [as_of - days, as_of)
        return timedelta(0) < offset <= timedelta(days=days)

    counted = [(c, off, items) for c, off, status, items in order_rows if status != "cancelled"]
    together = Counter((a, b) for _, off, items in counted if within(off, PAIR_DAYS)
                       for a in items for b in items if a != b)
    seeds, bought = defaultdict(set), defaultdict(set)
    for c, off, items in counted:
        if within(off, ACTIVITY_DAYS):
            seeds[c] |= items
        if off > timedelta(0):
            bought[c] |= items
    for c, off, p in view_rows:
        if c is not None and p is not None and within(off, ACTIVITY_DAYS):
            seeds[c].add(p)
    picks = set()
    for c, own in seeds.items():
        if wanted is not None and c not in wanted:
            continue
        scores = Counter()
        for (a, b), n in together.items():
            if a in own:
                scores[b] += n
        ranked = sorted((p for p in scores if p not in bought[c]), key=lambda p: (-scores[p], p))
        picks |= {(c, p, scores[p], rank) for rank, p in enumerate(ranked[:max_items], start=1)}
    return picks


# Customers 1 and 2 share the seed set {1}; customer 1 bought (long ago) the three products ranked
# first for it, so their one pick is the fourth: the set is ranked as deep as its deepest buyer needs.
DEEPEST_BUYER = {"order_rows": [(3, 89 * DAY, "delivered", {1, 2, 3, 4, 5}), (4, 89 * DAY, "delivered", {1, 2, 3}),
                                (5, 89 * DAY, "delivered", {1, 2}), (1, 400 * DAY, "delivered", {2, 3, 4})],
                 "view_rows": [(1, DAY, 1), (2, DAY, 1)], "max_items": 1, "wanted": None, "parts": 1}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(**DEEPEST_BUYER)
@given(order_rows=orders, view_rows=views, max_items=st.integers(1, 5),
       wanted=st.one_of(st.none(), st.sets(st.sampled_from(CUSTOMERS), max_size=4)), parts=st.integers(1, 3))
def test_recommend_for_picks_what_the_documented_rule_picks(sql: ShopSQL, order_rows, view_rows, max_items, wanted,
                                                            parts):
    """Also in parts (a segment's `parts:`): together the parts pick exactly that, each customer in one."""
    _emptied(sql.engine)
    for order_id, (customer, offset, status, items) in enumerate(order_rows, start=1):
        sql.order(order_id, customer, AS_OF - offset, *sorted(items), status=status)
    for view_id, (customer, offset, product) in enumerate(view_rows, start=1):
        sql.given("page_views", {"view_id": view_id, "customer_id": customer, "product_id": product,
                                 "viewed_at": AS_OF - offset})
    got, customers_of_part = [], []
    with sql.engine.connect() as conn:
        for part in range(parts):
            rows = conn.execute(sa.text(
                "SELECT customer_id, product_id, score, rank FROM lifecycle.recommend_for("
                "CAST(:wanted AS bigint[]), :as_of, :max_items, :activity_days, :pair_days, :part, :parts)"),
                {"wanted": sorted(wanted) if wanted is not None else None, "as_of": AS_OF, "max_items": max_items,
                 "activity_days": ACTIVITY_DAYS, "pair_days": PAIR_DAYS, "part": part, "parts": parts}).all()
            got += rows
            customers_of_part.append({r.customer_id for r in rows})
    assert len(got) == len(set(got))
    assert sum(map(len, customers_of_part)) == len(set().union(*customers_of_part))  # no customer in two parts
    assert set(map(tuple, got)) == oracle(order_rows, view_rows, max_items, wanted)
