"""browse_abandonment end to end: hourly runs over [A-4d, A) on a fresh demo shop (the
`shop_db` fixture) with planted sessions, against a real SMTP server and the local web push
service, compared with the outcome derived here from the shop tables.

The expected outcome is stated in Python over the shop's rows (never the segment SQL):
counting a known customer's session views before the run's as_of, a product of the session is
abandoned unless the customer put it in a cart (a cart line's added_at, else its cart's
updated_at) or ordered it (not cancelled) at or after the product's first view in the session
and before as_of. The session qualifies when some abandoned product got at least MIN_SECONDS in
total or MIN_VIEWS views. The email lists the session's abandoned products only, the most
recently viewed first (of two views at the same instant, the larger view id came later), at
most three. The clock is the last view of the session + WAIT; a run selects sessions whose
clock is in (as_of - LOOKBACK, as_of], except those of a customer with another enrollment of
the journey within COOLDOWN of the clock (and, among several new ones at once, the earliest
only). email_1 at the clock, second_touch 24h later by push when the customer can receive
push, else by email. An order at or after entry (the enrolling run's as_of) converts; a cart
created or changed at or after entry exits.

Holdout: 10% of customers, drawn per customer by the bucket rule (conftest.holdout_rule), enter
the journey but get nothing: each step is recorded skipped ('holdout') when it comes due, on the
channel it would have gone out on, late or not; they still exit and convert, which is what the
journey's lift is measured against.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.render import money
from lifecycle.tracking import untrack
from lifecycle_demo.sinks.push_server import PushServer

from .conftest import (
    DAY,
    HOUR,
    VALID_EMAIL,
    ExpectedEnrollment,
    ExpectedMessage,
    JourneyRun,
    assert_same,
    holdout_rule,
    intervals_for,
    journey_run,
    py,
    read_shop_frames,
    text_and_html,
)

JOURNEY = "browse_abandonment"
BY_CHANNEL = ("channel", "status", "due_at")  # a message, as the planted cases read it
MIN_SECONDS, MIN_VIEWS = 60, 2
WAIT, LOOKBACK, COOLDOWN = 2 * HOUR, 48 * HOUR, 7 * DAY
SECOND_TOUCH = 24 * HOUR
MAX_LATENESS = 6 * HOUR
HOLDOUT_PERCENT = 10
held_out = holdout_rule(JOURNEY, HOLDOUT_PERCENT)
SHOP_URL = "https://shop.example.com"
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


# ----------------------------------------------------------------------------- planted cases


@dataclass
class Case:
    customer_id: int
    email: str
    last_view: datetime | None = None  # of the (first) qualifying session
    products: list[int] = field(default_factory=list)  # product ids viewed, most recent first
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.customer_id}:bt-{self.customer_id}-1"


def plant(engine: sa.Engine, anchor: datetime, push: PushServer) -> dict[str, Case]:
    """New customers (ids >= 900000) with email consent, their sessions, carts, orders and a push
    subscription the local push service knows."""
    a = anchor
    with engine.connect() as conn:
        products = [r[0] for r in conn.execute(sa.text("SELECT product_id FROM shop.products ORDER BY product_id"))]
    p = products[:20]
    view_ids = iter(range(9_000_000, 9_100_000))
    cart_ids, order_ids = iter(range(9_000_001, 9_000_100)), iter(range(9_000_001, 9_000_100))
    rows: dict[str, list[dict]] = {"customers": [], "consents": [], "page_views": [], "carts": [], "cart_items": [],
                                   "orders": [], "order_items": [], "push_subscriptions": []}
    cases: dict[str, Case] = {}

    def customer(name: str, cid: int, *, push_consent: bool = False) -> Case:
        assert held_out(cid) == (name == "held_out"), f"{name}: customer {cid} is on the wrong side of the holdout"
        email = f"browse.{name}@example.com"
        rows["customers"].append({"customer_id": cid, "email": email, "first_name": name.title().replace("_", ""),
                                  "country": "DE", "timezone": "Europe/Berlin", "created_at": a - 90 * DAY})
        rows["consents"].append({"customer_id": cid, "channel": "email", "updated_at": a - 90 * DAY})
        if push_consent:
            rows["consents"].append({"customer_id": cid, "channel": "push", "updated_at": a - 90 * DAY})
        cases[name] = Case(cid, email)
        return cases[name]

    def session(case: Case, n: int, end: datetime, views: list[tuple[int, int]]) -> None:
        """Views (product_id, seconds) that finish at `end`, one minute apart."""
        for i, (product_id, seconds) in enumerate(views):
            view(case, n, product_id, seconds, end - (len(views) - 1 - i) * MINUTE)

    def view(case: Case, n: int, product_id: int, seconds: int, at: datetime) -> None:
        rows["page_views"].append({
            "view_id": next(view_ids), "customer_id": case.customer_id, "session_id": f"bt-{case.customer_id}-{n}",
            "product_id": product_id, "viewed_at": at, "seconds": seconds,
        })

    def cart(case: Case, created: datetime, updated: datetime, lines: list[tuple[int, datetime | None]]) -> None:
        """A cart with lines (product_id, added_at)."""
        cart_id = next(cart_ids)
        rows["carts"].append({"cart_id": cart_id, "customer_id": case.customer_id,
                              "created_at": created, "updated_at": updated})
        rows["cart_items"] += [{"cart_id": cart_id, "product_id": product_id, "added_at": added}
                               for product_id, added in lines]

    def order(case: Case, at: datetime, product_ids: list[int]) -> int:
        order_id = next(order_ids)
        rows["orders"].append({"order_id": order_id, "customer_id": case.customer_id, "ordered_at": at,
                               "status": "placed", "total": Decimal("49.90"), "currency": "EUR",
                               "shipping_country": "DE"})
        rows["order_items"] += [{"order_id": order_id, "product_id": product_id} for product_id in product_ids]
        return order_id

    c = customer("long_look", 900001)  # 65 s on one product: qualifies, second touch by email
    c.last_view = a - 60 * HOUR
    session(c, 1, c.last_view, [(p[0], 65), (p[1], 10)])
    c.products = [p[1], p[0]]

    c = customer("viewed_twice", 900002, push_consent=True)  # p[2] twice: second touch by push
    c.last_view = a - 50 * HOUR
    session(c, 1, c.last_view, [(p[2], 20), (p[3], 15), (p[2], 20)])
    c.products = [p[2], p[3]]
    sub = push.register()
    c.extra["token"] = sub["endpoint"].rsplit("/", 1)[1]
    rows["push_subscriptions"].append({"subscription_id": 9_000_001, "customer_id": c.customer_id,
                                       "endpoint": sub["endpoint"], "p256dh": sub["keys"]["p256dh"],
                                       "auth": sub["keys"]["auth"], "created_at": a - 30 * DAY})

    c = customer("below", 900003)  # 30 s + 25 s on two products, each once: not selected
    c.last_view = a - 55 * HOUR
    session(c, 1, c.last_view, [(p[4], 30), (p[5], 25)])

    c = customer("carted", 900004)  # qualifies, but carted 30 min after the last view: not selected
    c.last_view = a - 40 * HOUR
    session(c, 1, c.last_view, [(p[6], 90)])
    cart(c, c.last_view + 30 * MINUTE, c.last_view + HOUR, [(p[6], c.last_view + 30 * MINUTE)])

    c = customer("ordered", 900005)  # enters, gets email_1, orders: converted, no second touch
    c.last_view = a - 60 * HOUR
    session(c, 1, c.last_view, [(p[7], 120)])
    c.extra["ordered_at"] = a - 45 * HOUR
    order(c, a - 45 * HOUR, [p[7]])

    c = customer("cooldown", 900006)  # two qualifying sessions 3 days apart: one enrollment
    c.last_view = a - 90 * HOUR
    session(c, 1, c.last_view, [(p[8], 70)])
    session(c, 2, c.last_view + 3 * DAY, [(p[9], 20), (p[9], 20)])

    c = customer("carted_later", 900007)  # enters, then a cart change: exited, no second touch
    c.last_view = a - 70 * HOUR
    session(c, 1, c.last_view, [(p[10], 61), (p[11], 5)])
    c.extra["carted_at"] = a - 60 * HOUR
    cart(c, a - 60 * HOUR, a - 59 * HOUR, [(p[11], a - 59 * HOUR)])

    # Carted or bought products are never mailed (issue 8, item 7); all these sessions end at a - 30h.
    end = a - 30 * HOUR
    c = customer("recarted", 900008)  # viewed 4 times, carted, viewed again 40 s later: not selected
    c.last_view = end
    session(c, 1, end - MINUTE, [(p[12], 20)] * 4)
    view(c, 1, p[12], 15, end)
    cart(c, end - 40 * SECOND, end - 40 * SECOND, [(p[12], end - 40 * SECOND)])

    c = customer("one_of_two", 900009)  # p[14] carted between views: only p[13] is mailed
    c.last_view, c.products = end, [p[13]]
    session(c, 1, end - MINUTE, [(p[13], 70), (p[14], 65)])
    cart(c, end - 30 * SECOND, end - 30 * SECOND, [(p[14], end - 30 * SECOND)])
    view(c, 1, p[13], 10, end)
    c.extra["left_out"] = [p[14]]

    c = customer("carted_after", 900010)  # p[16] carted after the last view: enters with p[15], stays
    c.last_view, c.products = end, [p[15]]
    session(c, 1, end, [(p[15], 70), (p[16], 70)])
    cart(c, end + 5 * MINUTE, end + 5 * MINUTE, [(p[16], end + 5 * MINUTE)])
    c.extra["left_out"] = [p[16]]

    c = customer("bought_after", 900011)  # p[18] ordered after the last view: enters with p[17], no conversion
    c.last_view, c.products = end, [p[17]]
    session(c, 1, end, [(p[17], 70), (p[18], 70)])
    order(c, end + 10 * MINUTE, [p[18]])
    c.extra["left_out"] = [p[18]]

    c = customer("all_carted", 900012)  # both looked-at products carted before a last look: not selected
    c.last_view = end
    session(c, 1, end, [(p[19], 70), (p[0], 70), (p[19], 5)])
    cart(c, end - 30 * SECOND, end - 30 * SECOND, [(p[19], end - 30 * SECOND), (p[0], end - 30 * SECOND)])

    c = customer("tie", 900013)  # carted in the same second as the first view: counts as after it
    c.last_view = end
    session(c, 1, end, [(p[1], 90), (p[1], 5)])
    cart(c, end - MINUTE, end - MINUTE, [(p[1], end - MINUTE)])

    c = customer("carted_before", 900015)  # the same, but carted a second before the first view: mailed
    c.last_view, c.products = end, [p[1]]
    session(c, 1, end, [(p[1], 90), (p[1], 5)])
    cart(c, end - MINUTE - SECOND, end - MINUTE - SECOND, [(p[1], end - MINUTE - SECOND)])

    c = customer("held_out", 900014)  # held out (bucket 8): both steps skipped, nothing sent; orders: converted
    c.last_view = a - 60 * HOUR
    session(c, 1, c.last_view, [(p[2], 80)])
    c.extra["ordered_at"] = a - 20 * HOUR  # after the second touch came due (A-34h)
    c.extra["order_id"] = order(c, a - 20 * HOUR, [p[3]])

    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, created_at) "
            "VALUES (:customer_id, :email, :first_name, :country, :timezone, :created_at)"), rows["customers"])
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) "
            "VALUES (:customer_id, :channel, 'opted_in', 'test', :updated_at)"), rows["consents"])
        conn.execute(sa.text(
            "INSERT INTO shop.page_views (view_id, customer_id, anonymous_id, session_id, product_id, category, "
            "viewed_at, seconds_on_page) SELECT :view_id, :customer_id, NULL, :session_id, :product_id, p.category, "
            ":viewed_at, :seconds FROM shop.products p WHERE p.product_id = :product_id"), rows["page_views"])
        conn.execute(sa.text("INSERT INTO shop.carts (cart_id, customer_id, created_at, updated_at) "
                             "VALUES (:cart_id, :customer_id, :created_at, :updated_at)"), rows["carts"])
        conn.execute(sa.text(
            "INSERT INTO shop.cart_items (cart_id, product_id, quantity, unit_price, added_at) "
            "SELECT :cart_id, :product_id, 1, p.price, :added_at FROM shop.products p WHERE p.product_id = :product_id"),
            rows["cart_items"])
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, shipping_country) "
            "VALUES (:order_id, :customer_id, :ordered_at, :status, :total, :currency, :shipping_country)"),
            rows["orders"])
        conn.execute(sa.text(
            "INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
            "SELECT :order_id, :product_id, 1, p.price FROM shop.products p WHERE p.product_id = :product_id"),
            rows["order_items"])
        conn.execute(sa.text(
            "INSERT INTO shop.push_subscriptions (subscription_id, customer_id, endpoint, p256dh, auth, created_at) "
            "VALUES (:subscription_id, :customer_id, :endpoint, :p256dh, :auth, :created_at)"),
            rows["push_subscriptions"])
    return cases


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def browse_run(shop_db) -> JourneyRun:
    engine, _planted, anchor = shop_db
    return journey_run(shop_db, JOURNEY, intervals_for(anchor - 4 * DAY, anchor, HOUR), push=True,
                       setup=lambda replay: plant(engine, anchor, replay.push))


# ----------------------------------------------------------------------------- expected outcome


@dataclass(kw_only=True)
class Enr(ExpectedEnrollment):
    # conversion: (order_id, revenue)
    last_view: datetime
    viewed: list[int]  # product ids the email lists, as of the latest run that selected it while active


@dataclass
class Expected:
    enrollments: dict[str, Enr]
    per_run: list[tuple[datetime, int, int]]  # (run end, selected, quarantined)

    @property
    def messages(self) -> list[ExpectedMessage]:
        return [m for e in self.enrollments.values() for m in e.messages.values()]


def derive_expected(run: JourneyRun) -> Expected:
    f = read_shop_frames(run.engine, ("customers", "consents", "page_views", "carts", "cart_items", "orders",
                                      "order_items", "push_subscriptions"))
    first, last_end = run.intervals[0][1], run.intervals[-1][1]
    email_of = {int(r.customer_id): r.email for r in f["customers"].itertuples(index=False)}
    consent = {(int(r.customer_id), r.channel): r.status for r in f["consents"].itertuples(index=False)}
    live_push = {int(c) for c in f["push_subscriptions"].loc[f["push_subscriptions"].revoked_at.isna(), "customer_id"]}
    suppressed = run.suppressions_before

    # Views of known customers per session; only sessions that can matter in the window.
    views = f["page_views"][f["page_views"].customer_id.notna()]
    sessions: dict[tuple[int, str], list[tuple[datetime, Any, int, int]]] = {}
    for v in views.itertuples(index=False):
        at = py(v.viewed_at)
        if first - LOOKBACK - WAIT - DAY <= at < last_end:
            sessions.setdefault((int(v.customer_id), v.session_id), [])
    # Sessions that straddle the pre-filter: take all their views, as (at, product, seconds, view id).
    for v in views.itertuples(index=False):
        if (int(v.customer_id), v.session_id) in sessions:
            product = None if pd.isna(v.product_id) else int(v.product_id)
            seconds = 0 if pd.isna(v.seconds_on_page) else int(v.seconds_on_page)
            sessions[int(v.customer_id), v.session_id].append((py(v.viewed_at), product, seconds, int(v.view_id)))

    carts_of: dict[int, list[tuple[datetime, datetime]]] = {}
    for c in f["carts"][f["carts"].customer_id.notna()].itertuples(index=False):
        carts_of.setdefault(int(c.customer_id), []).append((py(c.created_at), py(c.updated_at)))
    orders_of: dict[int, list[tuple[datetime, int, Decimal]]] = {}
    for o in f["orders"][f["orders"].status != "cancelled"].itertuples(index=False):
        orders_of.setdefault(int(o.customer_id), []).append((py(o.ordered_at), int(o.order_id), Decimal(str(o.total))))
    for orders in orders_of.values():
        orders.sort()

    # When each customer put each product in a cart or ordered it (not cancelled).
    acted_on: dict[tuple[int, int], list[datetime]] = {}
    cart_of = {int(c.cart_id): (int(c.customer_id), py(c.updated_at))
               for c in f["carts"][f["carts"].customer_id.notna()].itertuples(index=False)}
    for line in f["cart_items"].itertuples(index=False):
        if int(line.cart_id) in cart_of:
            cid, updated = cart_of[int(line.cart_id)]
            added = py(line.added_at)
            acted_on.setdefault((cid, int(line.product_id)), []).append(updated if added is None else added)
    ordered = {int(o.order_id): (int(o.customer_id), py(o.ordered_at))
               for o in f["orders"][f["orders"].status != "cancelled"].itertuples(index=False)}
    for line in f["order_items"].itertuples(index=False):
        if int(line.order_id) in ordered:
            cid, at = ordered[int(line.order_id)]
            acted_on.setdefault((cid, int(line.product_id)), []).append(at)

    def carted_or_bought(cid: int, product: int, since: datetime, before: datetime) -> bool:
        return any(since <= at < before for at in acted_on.get((cid, product), ()))

    def first_order(cid: int, since: datetime, before: datetime):
        """The first order at or after `since` (the time of entry), before `before`."""
        return next((o for o in orders_of.get(cid, ()) if since <= o[0] < before), None)

    def first_cart(cid: int, since: datetime, before: datetime) -> datetime | None:
        hits = [created if created >= since else updated
                for created, updated in carts_of.get(cid, ()) if since <= updated < before]
        return min(hits) if hits else None

    def qualifying(as_of: datetime) -> list[tuple[str, int, datetime, datetime, list[int]]]:
        """(key, customer, clock, last view, listed products) of every qualifying session, before the cooldown."""
        out = []
        for (cid, sid), vs in sessions.items():
            seen = [v for v in vs if v[0] < as_of]
            if not seen:
                continue
            last = max(v[0] for v in seen)
            clock = last + WAIT
            if not (as_of - LOOKBACK < clock <= as_of):
                continue
            per_product: dict[int, list[tuple[datetime, int, int]]] = {}  # (at, view id, seconds)
            for at, product, seconds, view_id in seen:
                if product is not None:
                    per_product.setdefault(product, []).append((at, view_id, seconds))
            abandoned = {product: pv for product, pv in per_product.items()
                         if not carted_or_bought(cid, product, min(at for at, _, _ in pv), as_of)}
            if not any(sum(s for _, _, s in pv) >= MIN_SECONDS or len(pv) >= MIN_VIEWS for pv in abandoned.values()):
                continue
            # most recently viewed first: by the last view's (time, id)
            listed = sorted(abandoned, key=lambda product: max((at, vid) for at, vid, _ in abandoned[product]),
                            reverse=True)[:3]
            out.append((f"{cid}:{sid}", cid, clock, last, listed))
        return out

    def can(cid: int, channel: str) -> bool:
        if (cid, channel) in suppressed or consent.get((cid, channel)) != "opted_in":
            return False
        if channel == "push":
            return cid in live_push
        return bool(VALID_EMAIL.match(email_of.get(cid) or ""))

    def send_time(m: ExpectedMessage) -> None:
        """Send-time checks, in the engine's documented order."""
        cid, ch = m.customer_id, m.channel
        if (cid, ch) in suppressed:
            m.status, m.reason = "suppressed", f"suppressed: {suppressed[cid, ch]}"
        elif (cid, ch) not in consent:
            m.status, m.reason = "suppressed", "no consent"
        elif consent[cid, ch] != "opted_in":
            m.status, m.reason = "suppressed", "consent withdrawn"
        elif ch == "email" and not VALID_EMAIL.match(email_of.get(cid) or ""):
            m.status, m.reason = "skipped", "invalid address"
        elif ch == "push" and cid not in live_push:
            m.status, m.reason = "skipped", "no live push subscription"
        else:
            m.status = "sent"

    enrollments: dict[str, Enr] = {}
    per_run = []
    for _, as_of in run.intervals:
        rows = qualifying(as_of)
        unblocked = [
            r for r in rows
            if not any(e.customer_id == r[1] and e.key != r[0] and abs(e.entered_at - r[2]) < COOLDOWN
                       for e in enrollments.values())
        ]
        picked = [
            r for r in unblocked
            if not any(u[1] == r[1] and (u[2], u[0]) < (r[2], r[0]) and u[2] > r[2] - COOLDOWN for u in unblocked)
        ]
        bad = 0
        for key, cid, clock, last, listed in picked:
            if not VALID_EMAIL.match(email_of.get(cid) or ""):
                bad += 1
            elif key not in enrollments:
                enrollments[key] = Enr(key=key, customer_id=cid, entered_at=clock, enrolled_at=as_of, last_view=last, viewed=listed,
                                           holdout=held_out(cid))
            elif enrollments[key].status == "active":  # the context is refreshed while active
                enrollments[key].last_view, enrollments[key].viewed = last, listed
        per_run.append((as_of, len(picked), bad))

        active = [e for e in enrollments.values() if e.status == "active" and e.entered_at <= as_of]
        for e in active:  # exit rules in header order
            order = first_order(e.customer_id, e.enrolled_at, as_of)
            if order:
                e.status, e.exit_reason, e.exited_at = "converted", "ordered_since_browse", min(order[0], as_of)
                e.conversion = (str(order[1]), order[2])
        for e in active:
            if e.status != "active":
                continue
            carted = first_cart(e.customer_id, e.enrolled_at, as_of)
            if carted:
                e.status, e.exit_reason, e.exited_at = "exited", "carted_since_browse", min(carted, as_of)

        planned = []
        for step, after in (("email_1", timedelta(0)), ("second_touch", SECOND_TOUCH)):
            for e in enrollments.values():
                due = e.entered_at + after
                if e.status != "active" or step in e.messages or due > as_of:
                    continue
                if step == "email_1" or not can(e.customer_id, "push") and can(e.customer_id, "email"):
                    channel = "email"
                else:
                    channel = "push"
                m = ExpectedMessage(e.key, e.customer_id, step, due, as_of, channel=channel)
                if e.holdout:  # before lateness: a held-out step is never sent, late or not
                    m.status, m.reason = "skipped", "holdout"
                elif due + MAX_LATENESS < as_of:
                    m.status, m.reason = "expired", f"late: due {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                else:
                    planned.append(m)
                e.messages[step] = m
        for m in planned:
            send_time(m)
    return Expected(enrollments, per_run)


@pytest.fixture(scope="module")
def expected(browse_run) -> Expected:
    return derive_expected(browse_run)


# ----------------------------------------------------------------------------- what the engine did


def push_customer(run: JourneyRun) -> dict[str, int]:
    """Push token -> customer, from the (rewritten) subscriptions."""
    return {endpoint.rsplit("/", 1)[1]: cid for endpoint, cid in
            run.query("SELECT endpoint, customer_id FROM shop.push_subscriptions")}


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_the_expected_sessions(browse_run, expected):
    assert len(browse_run.intervals) == 4 * 24
    statuses = browse_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey "
                                "AND mode = 'live' GROUP BY status")
    assert dict(statuses) == {"ok": len(browse_run.intervals)}
    actual = [(end, r["selected"], r["quarantined"]) for (_, end), r in
              zip(browse_run.intervals, browse_run.results, strict=True)]
    assert_same(actual, expected.per_run, "(run end, rows selected, rows quarantined)")


def test_enrollments_and_exits(browse_run, expected):
    statuses = Counter(e.status for e in expected.enrollments.values())
    assert statuses["active"] > 10 and statuses["converted"] >= 1 and statuses["exited"] >= 1, statuses
    actual = [(k, r.customer_id, r.entered_at, r.enrolled_at, r.status, r.exit_reason, r.exited_at, r.holdout)
              for k, r in browse_run.enrollment_rows().items()]
    wanted = [(e.key, e.customer_id, e.entered_at, e.enrolled_at, e.status, e.exit_reason, e.exited_at, e.holdout)
              for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, exit reason, exited, holdout)")


def test_emails_list_only_products_neither_carted_nor_bought(browse_run, expected):
    actual = [(k, tuple(p["product_id"] for p in r.context["viewed"])) for k, r in browse_run.enrollment_rows().items()]
    wanted = [(e.key, tuple(e.viewed)) for e in expected.enrollments.values()]
    assert_same(actual, wanted, "(enrollment, product ids listed in its latest context)")


def test_conversions(browse_run, expected):
    actual = browse_run.conversion_rows()
    wanted = {e.key: (e.customer_id, "ordered_since_browse", *e.conversion, e.exited_at)
              for e in expected.enrollments.values() if e.status == "converted"}
    assert_same(actual.items(), wanted.items(), "conversions")


def test_messages_match_expected(browse_run, expected):
    wanted = [m.row() for m in expected.messages]
    seen = {(m.step, m.channel, m.status) for m in expected.messages}
    assert {("email_1", "email", "sent"), ("second_touch", "email", "sent"), ("second_touch", "push", "sent"),
            ("email_1", "email", "expired")} <= seen, seen
    assert_same(browse_run.message_rows(), wanted, "messages (key, step, channel, status, reason, due, run)")


def test_servers_received_exactly_the_sent_messages(browse_run, expected):
    sent = [m for m in expected.messages if m.status == "sent"]
    email_of = dict(browse_run.query("SELECT customer_id, email FROM shop.customers"))
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in browse_run.emails],
                [(email_of[m.customer_id], m.step) for m in sent if m.channel == "email"],
                "(To, step) received by the SMTP server")
    assert all(r == [m["To"]] for r, m in zip(browse_run.rcpt_tos, browse_run.emails, strict=True))
    assert all(m["X-Lifecycle-Journey"] == JOURNEY and m["List-Unsubscribe-Post"] for m in browse_run.emails)
    tokens = push_customer(browse_run)
    assert not browse_run.push_rejected
    assert_same([tokens[p.token] for p in browse_run.pushes],
                [m.customer_id for m in sent if m.channel == "push"], "customers the push service received for")


# ----------------------------------------------------------------------------- planted cases


def test_long_look_gets_email_then_email(browse_run):
    case = browse_run.cases["long_look"]
    clock = case.last_view + WAIT
    assert browse_run.messages_of(case.key, columns=BY_CHANNEL) == {
        "email_1": ("email", "sent", clock), "second_touch": ("email", "sent", clock + SECOND_TOUCH)}
    enrollment = browse_run.enrollment_rows()[case.key]
    assert (enrollment.status, enrollment.entered_at, enrollment.enrolled_at) == ("active", clock, clock)
    steps = [m["X-Lifecycle-Step"] for m in browse_run.emails if m["To"] == case.email]
    assert steps == ["email_1", "second_touch"]


def test_viewed_twice_gets_email_then_push_to_the_product(browse_run):
    case = browse_run.cases["viewed_twice"]
    clock = case.last_view + WAIT
    assert browse_run.messages_of(case.key, columns=BY_CHANNEL) == {
        "email_1": ("email", "sent", clock), "second_touch": ("push", "sent", clock + SECOND_TOUCH)}
    (push,) = [p for p in browse_run.pushes if p.token == case.extra["token"]]
    sku = browse_run.query("SELECT sku FROM shop.products WHERE product_id = :p", p=case.products[0])[0][0]
    assert push.payload["url"].startswith(f"{SHOP_URL}/c/")  # the click action is tracked
    assert untrack(push.payload["url"]) == f"{SHOP_URL}/p/{sku}"
    assert push.payload["title"] and push.headers["ttl"] == str(12 * 3600)
    assert [m["X-Lifecycle-Step"] for m in browse_run.emails if m["To"] == case.email] == ["email_1"]


def test_below_thresholds_and_carted_never_enter(browse_run):
    keys = {r.customer_id for r in browse_run.enrollment_rows().values()}
    # recarted: carted, then viewed again 40 s later; all_carted: every looked-at product carted;
    # tie: carted in the same second as the first view (counts as after it)
    for name in ("below", "carted", "recarted", "all_carted", "tie"):
        assert browse_run.cases[name].customer_id not in keys, name
        assert not [m for m in browse_run.emails if m["To"] == browse_run.cases[name].email]


def test_order_converts_and_stops_the_second_touch(browse_run):
    case = browse_run.cases["ordered"]
    enrollment = browse_run.enrollment_rows()[case.key]
    assert (enrollment.status, enrollment.exit_reason, enrollment.exited_at) == (
        "converted", "ordered_since_browse", case.extra["ordered_at"])
    assert set(browse_run.messages_of(case.key, columns=BY_CHANNEL)) == {"email_1"}
    assert [m["X-Lifecycle-Step"] for m in browse_run.emails if m["To"] == case.email] == ["email_1"]


def test_cart_change_exits_without_conversion(browse_run):
    case = browse_run.cases["carted_later"]
    enrollment = browse_run.enrollment_rows()[case.key]
    assert (enrollment.status, enrollment.exit_reason, enrollment.exited_at) == (
        "exited", "carted_since_browse", case.extra["carted_at"])
    assert set(browse_run.messages_of(case.key, columns=BY_CHANNEL)) == {"email_1"}
    assert not browse_run.query("SELECT 1 FROM lifecycle.conversions c JOIN lifecycle.enrollments e "
                                "USING (enrollment_id) WHERE e.enrollment_key = :key", key=case.key)


def test_cooldown_allows_one_enrollment_per_week(browse_run):
    case = browse_run.cases["cooldown"]
    rows = [r for r in browse_run.enrollment_rows().values() if r.customer_id == case.customer_id]
    assert [r.enrollment_key for r in rows] == [case.key]
    assert rows[0].entered_at == case.last_view + WAIT


def test_email_shows_viewed_and_complementary_products(browse_run):
    """The context names the products by reference (id only: no card, no price); the email shows
    each one's name, image and price, filled in from the shop when it is sent."""
    case = browse_run.cases["long_look"]
    context = browse_run.enrollment_rows()[case.key].context
    assert all(set(p) == {"product_id"} for p in context["viewed"] + context["suggested"]), context
    assert [p["product_id"] for p in context["viewed"]] == case.products
    viewed = browse_run.query("SELECT product_id, name, image_url, price FROM shop.products "
                              "WHERE product_id = ANY(:ids)", ids=case.products)
    links = {r[0] for r in browse_run.query(
        "SELECT linked_product_id FROM shop.product_links WHERE kind = 'cross_sell' AND product_id = ANY(:ids)",
        ids=case.products)}
    suggested = [p["product_id"] for p in context["suggested"]]
    assert 1 <= len(suggested) <= 2 and set(suggested) <= links - set(case.products)
    (message,) = [m for m in browse_run.emails if m["To"] == case.email and m["X-Lifecycle-Step"] == "email_1"]
    text, body = text_and_html(message)
    for _, name, image_url, price in viewed:
        assert name in text and html.escape(name) in body and image_url in body
        assert html.escape(money(price)) in body and money(price) in text
    for name, image_url, price in browse_run.query(
            "SELECT name, image_url, price FROM shop.products WHERE product_id = ANY(:ids)", ids=suggested):
        assert name in text and html.escape(name) in body and image_url in body
        assert html.escape(money(price)) in body and money(price) in text
    assert message["List-Unsubscribe"] and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


# ----------------------------------------------------------------------------- the holdout


def test_held_out_customers_enter_get_nothing_and_still_convert(browse_run, expected):
    """Every step of a held-out customer's enrollment is recorded skipped ('holdout') and nothing
    reaches them by email or push; the planted held-out customer orders and converts, the
    conversion recorded as held out."""
    held = [e for e in expected.enrollments.values() if e.holdout]
    assert held and len(held) < len(expected.enrollments) / 2
    assert {(m.status, m.reason) for e in held for m in e.messages.values()} == {("skipped", "holdout")}
    assert not {e.customer_id for e in held} & {e.customer_id for e in expected.enrollments.values()
                                                  if not e.holdout}  # drawn per customer
    email_of = dict(browse_run.query("SELECT customer_id, email FROM shop.customers"))
    assert not {email_of[e.customer_id] for e in held} & {m["To"] for m in browse_run.emails}
    tokens = push_customer(browse_run)
    assert not {e.customer_id for e in held} & {tokens[p.token] for p in browse_run.pushes}

    case = browse_run.cases["held_out"]
    clock = case.last_view + WAIT
    enrollment = browse_run.enrollment_rows()[case.key]
    assert (enrollment.holdout, enrollment.status, enrollment.exited_at) == (True, "converted", case.extra["ordered_at"])
    assert browse_run.messages_of(case.key, columns=("channel", "status", "reason", "due_at")) == {
        "email_1": ("email", "skipped", "holdout", clock),
        "second_touch": ("email", "skipped", "holdout", clock + SECOND_TOUCH)}
    assert browse_run.query("SELECT c.order_id, c.revenue, c.holdout FROM lifecycle.conversions c JOIN lifecycle.enrollments e "
                            "USING (enrollment_id) WHERE e.journey = :journey AND e.enrollment_key = :key",
                            key=case.key) == [(str(case.extra["order_id"]), Decimal("49.90"), True)]
    assert not [m for m in browse_run.emails if m["To"] == case.email]


def test_lift_counts_treated_and_held_out_customers_as_the_rules_do(browse_run, expected):
    """lifecycle.analytics.lift over the run: customers and converted customers per group equal
    the ones the rules give (a customer converts when any of their enrollments did), and both
    groups have conversions, so the lift has an interval."""
    from lifecycle import analytics

    groups: dict[bool, dict[int, bool]] = {False: {}, True: {}}
    for e in expected.enrollments.values():
        seen = groups[e.holdout]
        seen[e.customer_id] = seen.get(e.customer_id, False) or e.status == "converted"
    first, last = browse_run.intervals[0][0], browse_run.intervals[-1][1]
    with browse_run.engine.connect() as conn:
        lift = analytics.lift(conn, journey=JOURNEY, since=first - 30 * DAY, until=last + DAY)
    assert_same([(lift["treated_n"], lift["treated_conversions"]), (lift["holdout_n"], lift["holdout_conversions"])],
                [(len(g), sum(g.values())) for g in (groups[False], groups[True])],
                "lift (customers, converted) for treated, held out")
    assert lift["treated_conversions"] >= 1 and lift["holdout_conversions"] >= 1
    assert lift["abs_lift_ci"] is not None and lift["rel_lift_ci"] is not None


@pytest.mark.parametrize("name", ["one_of_two", "carted_after", "bought_after", "carted_before"])
def test_a_carted_or_bought_product_is_left_out_of_the_email(browse_run, name):
    """The session enters for its other product, which alone is mailed; carting or buying before
    entry neither exits nor converts the enrollment."""
    case = browse_run.cases[name]
    enrollment = browse_run.enrollment_rows()[case.key]
    assert (enrollment.status, enrollment.entered_at) == ("active", case.last_view + WAIT)
    assert [p["product_id"] for p in enrollment.context["viewed"]] == case.products
    assert browse_run.messages_of(case.key, columns=BY_CHANNEL)["email_1"][:2] == ("email", "sent")
    (message,) = [m for m in browse_run.emails if m["To"] == case.email and m["X-Lifecycle-Step"] == "email_1"]
    _, body = text_and_html(message)
    skus = dict(browse_run.query("SELECT product_id, sku FROM shop.products WHERE product_id = ANY(:ids)",
                                 ids=case.products + case.extra.get("left_out", [])))
    for product_id in case.products:
        assert f"/img/{skus[product_id]}.jpg" in body
    for product_id in case.extra.get("left_out", []):
        assert f"/img/{skus[product_id]}.jpg" not in body
