"""upsell end to end: hourly runs ending A-32h .. A on a fresh demo shop (the `shop_db` fixture,
embedded PostgreSQL) with its planted cases plus two test-only carts that change between runs,
against a real SMTP server and the local web push service, compared with the outcome derived
here from the shop tables (never the segment SQL or the engine's code).

The rules as this test states them (the product's issue plus the journey's documented choices):
- Carts are read as of the run's as_of: a line counts from its added_at (none: the cart's
  updated_at); the cart's last change is its updated_at if that is before as_of, else its last
  line added before as_of. A known customer's cart is open when no non-cancelled order of the
  customer came after that change (and before as_of).
- A line has an upgrade when the product has an `upsell` link to a product of a higher tier
  that costs more than the line's price; of several, the same family (SKU without "-T<n>")
  first, then the cheapest, then the lowest id. A line whose upgrade is already in the cart has
  none. One item per cart: a cart that has an enrollment (any status) only ever offers that
  item again; otherwise the item added last (then the dearer, then the lowest id).
- The first touch is due WAIT after the last change; a run selects carts due in
  (as_of - LOOKBACK, as_of]. Key cart_id:product_id, the clock is the due time, a later
  selection of an active enrollment refreshes its context but never its clock.
- offer at once: push when the customer has a live subscription, push consent and no push
  suppression, else email when they can receive email, else push (recorded with the reason).
  follow_up by email 24h later, skipped when the upgrade is in the cart by then.
- Exits, in this order: an order with the upgrade converts (that order's total); any other
  order exits; the item no longer in the cart (and the upgrade not in it) exits, at the cart's
  last change.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from lifecycle.render import money
from lifecycle.tracking import untrack

from .conftest import (
    ANCHOR,
    DAY,
    HOUR,
    VALID_EMAIL,
    ExpectedEnrollment,
    ExpectedMessage,
    JourneyRun,
    Replay,
    assert_same,
    intervals_for,
    journey_run,
    text_and_html,
)

pytestmark = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)

JOURNEY = "upsell"
BY_CHANNEL = ("channel", "status", "reason", "planned_for")  # a message, as the planted cases read it
MINUTE = timedelta(minutes=1)
WAIT, LOOKBACK, FOLLOW_UP, MAX_LATENESS = 10 * MINUTE, 6 * HOUR, 24 * HOUR, 6 * HOUR
COMPLETE_AFTER = 7 * DAY
FIRST_END = 32  # hours before the anchor of the first run's end
SHOP_URL = "https://shop.example.com"
FAMILY = re.compile(r"-T[0-9]+$")


# ----------------------------------------------------------------------------- test-only carts


@dataclass(frozen=True)
class Mutation:
    """A cart change between two runs: lines removed and added at `at`, the cart's updated_at
    set to `at`; applied before the first run that ends after `at`."""

    at: datetime
    cart_id: int
    remove: tuple[int, ...] = ()
    add: tuple[int, ...] = ()  # product ids, quantity 1 at the list price


@dataclass
class Extra:
    customer_id: int
    email: str
    cart_id: int
    product_id: int  # the item that is upsold
    upgrade_id: int
    other_id: int | None = None
    order_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.cart_id}:{self.product_id}"


def plant_extra(engine: sa.Engine, anchor: datetime) -> tuple[dict[str, Extra], list[Mutation]]:
    """Two carts whose lines change after the upsell went out (the demo shop is static, so it
    cannot show a line leaving a cart)."""
    a = anchor
    with engine.connect() as conn:
        product = {sku: (pid, price) for pid, sku, price in conn.execute(
            sa.text("SELECT product_id, sku, price FROM shop.products"))}
    extra = {
        # CLO-01-T1 (added last, upsold) and PET-02-T1 in the cart; the T-shirt leaves the cart
        # after the upsell, comes back later: exited, never a second upsell, nor one for the pet food.
        "removed_then_readded": Extra(950001, "upsell.removed@example.com", 9_500_001, product["CLO-01-T1"][0],
                                      product["CLO-01-T2"][0], other_id=product["PET-02-T1"][0],
                                      details={"added": a - 30 * HOUR - 30 * MINUTE,
                                               "removed": a - 27 * HOUR - 40 * MINUTE,
                                               "readded": a - 25 * HOUR - 40 * MINUTE}),
        # SPO-01-T1 swapped for the upgrade SPO-01-T2 in the cart, which is ordered later:
        # stays in, the follow-up is skipped, the order converts.
        "swapped_then_ordered": Extra(950002, "upsell.swapped@example.com", 9_500_002, product["SPO-01-T1"][0],
                                      product["SPO-01-T2"][0], order_id=9_500_002,
                                      details={"added": a - 30 * HOUR - 20 * MINUTE,
                                               "swapped": a - 27 * HOUR - 20 * MINUTE,
                                               "ordered": a - 4 * HOUR}),
    }
    removed, swapped = extra["removed_then_readded"], extra["swapped_then_ordered"]
    mutations = [
        Mutation(removed.details["removed"], removed.cart_id, remove=(removed.product_id,)),
        Mutation(removed.details["readded"], removed.cart_id, add=(removed.product_id,)),
        Mutation(swapped.details["swapped"], swapped.cart_id, remove=(swapped.product_id,), add=(swapped.upgrade_id,)),
    ]
    price_of = {pid: price for pid, price in product.values()}
    with engine.begin() as conn:
        for e in extra.values():
            conn.execute(sa.text(
                "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, created_at) "
                "VALUES (:c, :email, 'Extra', 'DE', 'Europe/Berlin', :t)"), {"c": e.customer_id, "email": e.email,
                                                                             "t": a - 90 * DAY})
            conn.execute(sa.text(
                "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) "
                "VALUES (:c, 'email', 'opted_in', 'test', :t)"), {"c": e.customer_id, "t": a - 90 * DAY})
            added = e.details["added"]
            lines = [(e.product_id, added)] + ([(e.other_id, added - 20 * MINUTE)] if e.other_id else [])
            conn.execute(sa.text("INSERT INTO shop.carts (cart_id, customer_id, created_at, updated_at) "
                                 "VALUES (:cart, :c, :created, :updated)"),
                         {"cart": e.cart_id, "c": e.customer_id, "created": added - HOUR, "updated": added})
            for pid, at in lines:
                conn.execute(sa.text("INSERT INTO shop.cart_items (cart_id, product_id, quantity, unit_price, "
                                     "added_at) VALUES (:cart, :p, 1, :price, :at)"),
                             {"cart": e.cart_id, "p": pid, "price": price_of[pid], "at": at})
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, shipping_country) "
            "VALUES (:o, :c, :t, 'placed', :total, 'EUR', 'DE')"),
            {"o": swapped.order_id, "c": swapped.customer_id, "t": swapped.details["ordered"],
             "total": price_of[swapped.upgrade_id]})
        conn.execute(sa.text("INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
                             "VALUES (:o, :p, 1, :price)"),
                     {"o": swapped.order_id, "p": swapped.upgrade_id, "price": price_of[swapped.upgrade_id]})
    return extra, mutations


def apply_mutation(engine: sa.Engine, m: Mutation) -> None:
    with engine.begin() as conn:
        for pid in m.remove:
            conn.execute(sa.text("DELETE FROM shop.cart_items WHERE cart_id = :cart AND product_id = :p"),
                         {"cart": m.cart_id, "p": pid})
        for pid in m.add:
            conn.execute(sa.text("INSERT INTO shop.cart_items (cart_id, product_id, quantity, unit_price, added_at) "
                                 "SELECT :cart, product_id, 1, price, :at FROM shop.products WHERE product_id = :p"),
                         {"cart": m.cart_id, "p": pid, "at": m.at})
        conn.execute(sa.text("UPDATE shop.carts SET updated_at = :at WHERE cart_id = :cart"),
                     {"cart": m.cart_id, "at": m.at})


def applied_before(m: Mutation, ends: list[datetime]) -> datetime:
    return next(end for end in ends if end > m.at)


# ----------------------------------------------------------------------------- the run


@dataclass
class Snapshot:
    """The shop tables the rules read, as they were before the first run."""

    carts: dict[int, dict]  # cart_id -> {customer_id, updated_at}
    lines: dict[int, dict[int, tuple]]  # cart_id -> product_id -> (quantity, unit_price, added_at or None)
    products: dict[int, Any]
    upsells: dict[int, list[int]]  # product -> linked products (kind upsell)
    orders: dict[int, list[tuple]]  # customer -> [(ordered_at, order_id, total, {product ids})], non-cancelled
    email_of: dict[int, str]
    consent: dict[tuple[int, str], str]
    live_push: set[int]


@dataclass
class Planted:
    """What the test plants before the replay, and the shop as the rules read it then."""

    extra: dict[str, Extra]
    mutations: list[Mutation]  # applied between runs
    snapshot: Snapshot


def snapshot(engine: sa.Engine) -> Snapshot:
    with engine.connect() as conn:
        def q(sql: str) -> list:
            return conn.execute(sa.text(sql)).all()

        carts = {c: {"customer_id": cid, "updated_at": u} for c, cid, u in q(
            "SELECT cart_id, customer_id, updated_at FROM shop.carts")}
        lines: dict[int, dict[int, tuple]] = {}
        for cart, pid, qty, price, added in q(
                "SELECT cart_id, product_id, quantity, unit_price, added_at FROM shop.cart_items"):
            lines.setdefault(cart, {})[pid] = (qty, price, added)
        products = {r.product_id: r for r in q("SELECT product_id, sku, name, image_url, price, tier FROM shop.products")}
        upsells: dict[int, list[int]] = {}
        for pid, linked in q("SELECT product_id, linked_product_id FROM shop.product_links WHERE kind = 'upsell'"):
            upsells.setdefault(pid, []).append(linked)
        items: dict[int, set[int]] = {}
        for oid, pid in q("SELECT order_id, product_id FROM shop.order_items"):
            items.setdefault(oid, set()).add(pid)
        orders: dict[int, list[tuple]] = {}
        for oid, cid, at, total in q("SELECT order_id, customer_id, ordered_at, total FROM shop.orders "
                                     "WHERE status <> 'cancelled'"):
            orders.setdefault(cid, []).append((at, oid, total, items.get(oid, set())))
        for o in orders.values():
            o.sort()
        return Snapshot(
            carts, lines, products, upsells, orders,
            email_of=dict(q("SELECT customer_id, email FROM shop.customers")),
            consent={(c, ch): st for c, ch, st in q("SELECT customer_id, channel, status FROM shop.consents")},
            live_push={c for (c,) in q("SELECT customer_id FROM shop.push_subscriptions WHERE revoked_at IS NULL")},
        )


@pytest.fixture(scope="module")
def upsell_run(shop_db) -> JourneyRun:
    engine, _planted, anchor = shop_db
    intervals = intervals_for(anchor - (FIRST_END + 1) * HOUR, anchor, HOUR)
    ends = [end for _, end in intervals]

    def plant(replay: Replay) -> Planted:
        extra, mutations = plant_extra(engine, anchor)
        return Planted(extra, mutations, snapshot(engine))

    def mutate(replay: Replay, start: datetime, end: datetime) -> None:
        for m in replay.cases.mutations:
            if applied_before(m, ends) == end:
                apply_mutation(engine, m)

    return journey_run(shop_db, JOURNEY, intervals, push=True, setup=plant, before=mutate)


# ----------------------------------------------------------------------------- expected outcome


@dataclass(kw_only=True)
class Enr(ExpectedEnrollment):
    # conversion: (order_id, revenue)
    cart_id: int
    product_id: int
    upgrade_id: int
    context: dict  # what the last selection while active showed


@dataclass
class Expected:
    enrollments: dict[str, Enr]
    per_run: list[tuple[datetime, int, int]]  # (run end, selected, quarantined)
    quarantined_keys: set[str]

    @property
    def messages(self) -> list[ExpectedMessage]:
        return [m for e in self.enrollments.values() for m in e.messages.values()]


def derive_expected(run: JourneyRun) -> Expected:
    s = run.cases.snapshot
    ends = [end for _, end in run.intervals]
    carts = {c: dict(v) for c, v in s.carts.items()}
    lines = {c: dict(v) for c, v in s.lines.items()}
    pending = sorted(run.cases.mutations, key=lambda m: m.at)
    suppressed = run.suppressions_before

    def upgrade_of(pid: int, price: Decimal) -> int | None:
        p = s.products[pid]
        options = [s.products[q] for q in s.upsells.get(pid, ())
                   if s.products[q].tier > p.tier and s.products[q].price > price]
        family = FAMILY.sub("", p.sku)
        options.sort(key=lambda u: (FAMILY.sub("", u.sku) != family, u.price, u.product_id))
        return options[0].product_id if options else None

    def added(cart: int, pid: int) -> datetime:
        return lines[cart][pid][2] or carts[cart]["updated_at"]

    def in_cart_as_of(cart: int, pid: int, as_of: datetime) -> bool:
        return pid in lines.get(cart, {}) and added(cart, pid) < as_of

    def first_order(cid: int, after: datetime, before: datetime, product: int | None = None):
        return next((o for o in s.orders.get(cid, ()) if after < o[0] < before and (product is None or product in o[3])),
                    None)

    def can(cid: int, channel: str) -> bool:
        if (cid, channel) in suppressed or s.consent.get((cid, channel)) != "opted_in":
            return False
        return cid in s.live_push if channel == "push" else bool(VALID_EMAIL.match(s.email_of.get(cid) or ""))

    def send_time(m: ExpectedMessage) -> None:
        cid, ch = m.customer_id, m.channel
        if (cid, ch) in suppressed:
            m.status, m.reason = "suppressed", f"suppressed: {suppressed[cid, ch]}"
        elif (cid, ch) not in s.consent:
            m.status, m.reason = "suppressed", "no consent"
        elif s.consent[cid, ch] != "opted_in":
            m.status, m.reason = "suppressed", "consent withdrawn"
        elif ch == "email" and not VALID_EMAIL.match(s.email_of.get(cid) or ""):
            m.status, m.reason = "skipped", "invalid address"
        elif ch == "push" and cid not in s.live_push:
            m.status, m.reason = "skipped", "no live push subscription"
        else:
            m.status = "sent"

    def select(as_of: datetime) -> list[dict]:
        rows = []
        for cart, c in carts.items():
            cid = c["customer_id"]
            if cid is None:
                continue
            visible = {pid: v for pid, v in lines.get(cart, {}).items() if added(cart, pid) < as_of}
            if not visible:
                continue
            last = c["updated_at"] if c["updated_at"] < as_of else max(added(cart, pid) for pid in visible)
            due = last + WAIT
            if not (as_of - LOOKBACK < due <= as_of) or first_order(cid, last, as_of):
                continue
            eligible = {}
            for pid, (_, price, _) in visible.items():
                up = upgrade_of(pid, price)
                if up is not None and up not in visible:
                    eligible[pid] = up
            enrolled = {e.product_id for e in enrollments.values() if e.cart_id == cart}
            if enrolled:
                picks = [pid for pid in enrolled if pid in eligible]
            else:
                picks = sorted(eligible, key=lambda p: (-added(cart, p).timestamp(), -visible[p][1], p))[:1]
            for pid in picks:
                qty, price, _ = visible[pid]
                up = eligible[pid]
                rows.append({"key": f"{cart}:{pid}", "customer_id": cid, "cart_id": cart, "product_id": pid,
                             "upgrade_id": up, "due": due,
                             "context": {"cart_updated_at": last, "upsell_due_at": due, "quantity": qty,
                                         "price": price}})
        return rows

    enrollments: dict[str, Enr] = {}
    per_run, quarantined = [], set()
    for as_of in ends:
        while pending and applied_before(pending[0], ends) == as_of:  # the cart as the run finds it
            m = pending.pop(0)
            for pid in m.remove:
                del lines[m.cart_id][pid]
            for pid in m.add:
                lines[m.cart_id][pid] = (1, s.products[pid].price, m.at)
            carts[m.cart_id]["updated_at"] = m.at

        rows = select(as_of)
        bad = 0
        for r in rows:
            if not VALID_EMAIL.match(s.email_of.get(r["customer_id"]) or ""):
                bad += 1
                quarantined.add(r["key"])
            elif r["key"] not in enrollments:
                enrollments[r["key"]] = Enr(key=r["key"], customer_id=r["customer_id"], cart_id=r["cart_id"],
                                            product_id=r["product_id"], upgrade_id=r["upgrade_id"],
                                            entered_at=r["due"], enrolled_at=as_of, context=r["context"])
            elif enrollments[r["key"]].status == "active":
                enrollments[r["key"]].context = r["context"]
        per_run.append((as_of, len(rows), bad))

        active = [e for e in enrollments.values() if e.status == "active" and e.entered_at <= as_of]
        for e in active:  # exit rules in header order, first match wins
            order = first_order(e.customer_id, e.entered_at, as_of, e.upgrade_id)
            if order:
                e.status, e.exit_reason, e.exited_at = "converted", "upsell_ordered_upgrade", order[0]
                e.conversion = (str(order[1]), order[2])
        for e in active:
            order = e.status == "active" and first_order(e.customer_id, e.entered_at, as_of)
            if order:
                e.status, e.exit_reason, e.exited_at = "exited", "purchased_since_entry", order[0]
        for e in active:
            if (e.status == "active" and e.product_id not in lines.get(e.cart_id, {})
                    and not in_cart_as_of(e.cart_id, e.upgrade_id, as_of)):
                changed = carts[e.cart_id]["updated_at"]
                e.status, e.exit_reason = "exited", "upsell_item_removed"
                e.exited_at = min(changed if changed > e.entered_at else as_of, as_of)

        planned = []
        for e in enrollments.values():
            if e.status != "active" or e.entered_at > as_of:
                continue
            if "offer" not in e.messages:
                channel = "email" if not can(e.customer_id, "push") and can(e.customer_id, "email") else "push"
                m = ExpectedMessage(e.key, e.customer_id, "offer", e.entered_at, as_of, channel=channel)
                if e.entered_at + MAX_LATENESS < as_of:
                    m.status, m.reason = "expired", f"late: due {e.entered_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                else:
                    planned.append(m)
                e.messages["offer"] = m
            due = e.entered_at + FOLLOW_UP
            if "follow_up" not in e.messages and due <= as_of:
                m = ExpectedMessage(e.key, e.customer_id, "follow_up", due, as_of)
                if in_cart_as_of(e.cart_id, e.upgrade_id, as_of):
                    m.status, m.reason = "skipped", "condition met: upsell_upgrade_in_cart"
                elif due + MAX_LATENESS < as_of:
                    m.status, m.reason = "expired", f"late: due {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                else:
                    planned.append(m)
                e.messages["follow_up"] = m
            if len(e.messages) == 2 and e.entered_at + FOLLOW_UP + COMPLETE_AFTER <= as_of:
                e.status = "completed"
        for m in planned:
            send_time(m)
    return Expected(enrollments, per_run, quarantined)


@pytest.fixture(scope="module")
def expected(upsell_run) -> Expected:
    return derive_expected(upsell_run)


# ----------------------------------------------------------------------------- what the engine did


def keys_of_cart(run: JourneyRun, cart_id: int) -> list[str]:
    return sorted(k for k in run.enrollment_rows() if k.split(":")[0] == str(cart_id))


def sku(run: JourneyRun, product_id: int) -> str:
    return run.query("SELECT sku FROM shop.products WHERE product_id = :p", p=product_id)[0][0]


def product_id(run: JourneyRun, sku_: str) -> int:
    return run.query("SELECT product_id FROM shop.products WHERE sku = :s", s=sku_)[0][0]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ----------------------------------------------------------------------------- bulk comparison


def test_runs_select_and_quarantine_what_the_rules_pick(upsell_run, expected):
    assert len(upsell_run.intervals) == FIRST_END + 1
    statuses = upsell_run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey "
                                "AND mode = 'live' GROUP BY status")
    assert dict(statuses) == {"ok": len(upsell_run.intervals)}
    actual = [(end, r["selected"], r["quarantined"]) for (_, end), r in
              zip(upsell_run.intervals, upsell_run.results, strict=True)]
    assert_same(actual, expected.per_run, "(run end, rows selected, rows quarantined)")
    # The demo's planted cart of a customer whose address is 'not-an-email' is quarantined, never enrolled.
    quarantined = {k for (k,) in upsell_run.query("SELECT DISTINCT enrollment_key FROM lifecycle.quarantine "
                                                   "WHERE journey = :journey")}
    assert quarantined == expected.quarantined_keys and quarantined
    assert not quarantined & set(upsell_run.enrollment_rows())


def test_enrollments_and_exits(upsell_run, expected):
    statuses = Counter((e.status, e.exit_reason) for e in expected.enrollments.values())
    assert statuses["active", None] > 10 and statuses["converted", "upsell_ordered_upgrade"] >= 2
    assert statuses["exited", "purchased_since_entry"] >= 1 and statuses["exited", "upsell_item_removed"] == 1
    actual = [(k, r.customer_id, r.entered_at, r.enrolled_at, r.status, r.exit_reason, r.exited_at, r.holdout)
              for k, r in upsell_run.enrollment_rows().items()]
    wanted = [(e.key, e.customer_id, e.entered_at, e.enrolled_at, e.status, e.exit_reason, e.exited_at, False)
              for e in expected.enrollments.values()]
    assert_same(actual, wanted, "enrollments (key, customer, entered, enrolled, status, exit reason, exited, holdout)")


def test_context_shows_the_item_its_upgrade_and_the_cart_as_last_seen(upsell_run, expected):
    """The item and the upgrade are product references: no card (the push and emails get today's
    cards when they are sent); the item keeps its cart price and quantity, the upgrade no price."""
    actual, wanted = [], []
    for key, r in upsell_run.enrollment_rows().items():
        c = r.context
        assert set(c["item"]) == {"product_id", "sku", "price", "quantity"}, c["item"]
        assert set(c["upgrade"]) == {"product_id", "sku"}, c["upgrade"]
        actual.append((key, c["product_id"], c["upgrade_product_id"], c["item"]["product_id"],
                       c["upgrade"]["product_id"], c["item"]["sku"], c["upgrade"]["sku"], ts(c["cart_updated_at"]),
                       ts(c["upsell_due_at"]), c["item"]["quantity"], Decimal(str(c["item"]["price"])),
                       "price_difference" in c, c["url"], c["cart_url"]))
    products = upsell_run.cases.snapshot.products
    for e in expected.enrollments.values():
        up = products[e.upgrade_id]
        x = e.context
        wanted.append((e.key, e.product_id, e.upgrade_id, e.product_id, e.upgrade_id, products[e.product_id].sku,
                       up.sku, x["cart_updated_at"], x["upsell_due_at"], x["quantity"], x["price"],
                       False, f"{SHOP_URL}/p/{up.sku}", f"{SHOP_URL}/cart/{e.cart_id}"))
    assert_same(actual, wanted, "context (key, item, upgrade, skus, cart change, due, qty, cart price, "
                                "no stored difference (the email works it out), urls)")


def test_conversions(upsell_run, expected):
    actual = upsell_run.query(
        "SELECT e.enrollment_key, c.customer_id::bigint, c.condition, c.order_id, c.revenue, c.converted_at "
        "FROM lifecycle.conversions c JOIN lifecycle.enrollments e USING (enrollment_id) "
        "WHERE c.journey = :journey AND c.mode = 'live'")
    wanted = [(e.key, e.customer_id, "upsell_ordered_upgrade", *e.conversion, e.exited_at)
              for e in expected.enrollments.values() if e.status == "converted"]
    assert_same(actual, wanted, "conversions (key, customer, condition, order, revenue, at)")


def test_messages_match_expected(upsell_run, expected):
    seen = {(m.step, m.channel, m.status) for m in expected.messages}
    assert {("offer", "email", "sent"), ("offer", "push", "sent"), ("follow_up", "email", "sent"),
            ("follow_up", "email", "skipped")} <= seen, seen
    assert_same(upsell_run.message_rows(), [m.row() for m in expected.messages],
                "messages (key, step, channel, status, reason, due, run)")


def test_servers_received_exactly_the_sent_messages(upsell_run, expected):
    sent = [m for m in expected.messages if m.status == "sent"]
    email_of = upsell_run.cases.snapshot.email_of
    assert_same([(m["To"], m["X-Lifecycle-Step"]) for m in upsell_run.emails],
                [(email_of[m.customer_id], m.step) for m in sent if m.channel == "email"],
                "(To, step) received by the SMTP server")
    assert all(r == [m["To"]] for r, m in zip(upsell_run.rcpt_tos, upsell_run.emails, strict=True))
    assert all(m["X-Lifecycle-Journey"] == JOURNEY and m["List-Unsubscribe-Post"] for m in upsell_run.emails)
    token_of = {endpoint.rsplit("/", 1)[1]: cid for endpoint, cid in
                upsell_run.query("SELECT endpoint, customer_id FROM shop.push_subscriptions")}
    assert not upsell_run.push_rejected
    assert_same([token_of[p.token] for p in upsell_run.pushes],
                [m.customer_id for m in sent if m.channel == "push"], "customers the push service received for")


# ----------------------------------------------------------------------------- planted cases


def case_key(case) -> str:
    return f"{case.cart_id}:{case.product_id}"


def at(run: JourneyRun, hours: float, minutes: int = 0) -> datetime:
    return ANCHOR - timedelta(hours=hours, minutes=minutes)


def test_email_case_gets_both_products_with_prices(upsell_run, shop_db):
    case = shop_db[1]["upsell_email"]
    key = case_key(case)
    assert upsell_run.messages_of(key, columns=BY_CHANNEL) == {"offer": ("email", "sent", None, at(upsell_run, 31)),
                                            "follow_up": ("email", "sent", None, at(upsell_run, 7))}
    e = upsell_run.enrollment_rows()[key]
    assert e.entered_at == at(upsell_run, 31, 15) and e.status == "active"
    assert e.context["upgrade"]["product_id"] == product_id(upsell_run, "CLO-01-T2")
    products = {sku_: upsell_run.query("SELECT name, image_url, price FROM shop.products WHERE sku = :s", s=sku_)[0]
                for sku_ in ("CLO-01-T1", "CLO-01-T2")}
    (offer,) = [m for m in upsell_run.emails if m["To"] == case.email and m["X-Lifecycle-Step"] == "offer"]
    text, body = text_and_html(offer)
    for name, image_url, price in products.values():
        assert name in text and html.escape(name) in body and f'src="{image_url}"' in body
        assert money(price) in text and html.escape(money(price)) in body
    difference = money(products["CLO-01-T2"][2] - products["CLO-01-T1"][2])
    assert difference in text and products["CLO-01-T1"][0] in offer["Subject"]
    assert offer["List-Unsubscribe"] and offer["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    steps = [m["X-Lifecycle-Step"] for m in upsell_run.emails if m["To"] == case.email]
    assert steps == ["offer", "follow_up"]


def test_push_case_gets_the_upgrade_by_push_then_the_follow_up_by_email(upsell_run, shop_db):
    planted = shop_db[1]
    case = planted["upsell_push"]
    assert upsell_run.messages_of(case_key(case), columns=BY_CHANNEL) == {"offer": ("push", "sent", None, at(upsell_run, 31)),
                                                       "follow_up": ("email", "sent", None, at(upsell_run, 7))}
    tokens = {endpoint.rsplit("/", 1)[1] for (endpoint,) in upsell_run.query(
        "SELECT endpoint FROM shop.push_subscriptions WHERE customer_id = :c", c=case.customer_id)}
    (push,) = [p for p in upsell_run.pushes if p.token in tokens]
    item, upgrade = (upsell_run.query("SELECT name, price FROM shop.products WHERE sku = :s", s=s)[0]
                     for s in ("VIT-01-T1", "VIT-01-T2"))
    assert push.payload["url"].startswith(f"{SHOP_URL}/c/")  # the click action is tracked
    assert untrack(push.payload["url"]) == f"{SHOP_URL}/p/VIT-01-T2"
    assert item.name in push.payload["title"]
    assert upgrade.name in push.payload["body"] and money(upgrade.price) in push.payload["body"]
    assert money(item.price) in push.payload["body"]
    assert push.headers["ttl"] == str(12 * 3600)
    assert [m["X-Lifecycle-Step"] for m in upsell_run.emails if m["To"] == case.email] == ["follow_up"]
    # A live subscription without push consent: email.
    other = planted["upsell_push_without_consent"]
    assert upsell_run.messages_of(case_key(other), columns=BY_CHANNEL)["offer"] == ("email", "sent", None, at(upsell_run, 30))


def test_ordering_the_upgrade_converts_with_the_orders_total(upsell_run, shop_db):
    case = shop_db[1]["upsell_ordered_upgrade"]
    e = upsell_run.enrollment_rows()[case_key(case)]
    assert (e.status, e.exit_reason, e.exited_at) == ("converted", "upsell_ordered_upgrade", at(upsell_run, 26))
    (order_id,) = case.order_ids
    total = upsell_run.query("SELECT total FROM shop.orders WHERE order_id = :o", o=order_id)[0][0]
    conversion = upsell_run.query("SELECT c.order_id, c.revenue FROM lifecycle.conversions c "
                                  "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE e.enrollment_key = :k",
                                  k=case_key(case))
    assert conversion == [(str(order_id), total)] and total > 0
    assert set(upsell_run.messages_of(case_key(case), columns=BY_CHANNEL)) == {"offer"}


def test_any_other_order_exits_and_a_cancelled_one_does_not(upsell_run, shop_db):
    planted = shop_db[1]
    other = planted["upsell_ordered_other"]
    e = upsell_run.enrollment_rows()[case_key(other)]
    assert (e.status, e.exit_reason, e.exited_at) == ("exited", "purchased_since_entry", at(upsell_run, 20))
    assert set(upsell_run.messages_of(case_key(other), columns=BY_CHANNEL)) == {"offer"}
    assert not upsell_run.query("SELECT 1 FROM lifecycle.conversions c JOIN lifecycle.enrollments e "
                                "USING (enrollment_id) WHERE e.enrollment_key = :k", k=case_key(other))
    cancelled = planted["upsell_cancelled_order"]
    assert upsell_run.enrollment_rows()[case_key(cancelled)].status == "active"
    assert upsell_run.messages_of(case_key(cancelled), columns=BY_CHANNEL)["follow_up"] == ("email", "sent", None, at(upsell_run, 5))


def test_carts_that_never_enter(upsell_run, shop_db):
    planted = shop_db[1]
    customers = {r.customer_id for r in upsell_run.enrollment_rows().values()}
    for name in ("upsell_top_tier", "upsell_ordered_within_wait"):
        assert planted[name].customer_id not in customers, name
        assert not [m for m in upsell_run.emails if m["To"] == planted[name].email]


def test_one_item_per_cart(upsell_run, shop_db):
    planted = shop_db[1]
    two = planted["upsell_two_items"]  # the capsules were added last
    assert keys_of_cart(upsell_run, two.cart_id) == [f"{two.cart_id}:{product_id(upsell_run, 'COF-01-T1')}"]
    assert upsell_run.messages_of(case_key(two), columns=BY_CHANNEL)["offer"][-1] == at(upsell_run, 27)
    has_upgrade = planted["upsell_upgrade_already_in_cart"]  # the 30 pack's upgrade is the 90 pack in the cart
    assert keys_of_cart(upsell_run, has_upgrade.cart_id) == [case_key(has_upgrade)]
    assert has_upgrade.product_id == product_id(upsell_run, "VIT-02-T2")
    context = upsell_run.enrollment_rows()[case_key(has_upgrade)].context
    assert context["upgrade"]["sku"] == "VIT-02-T3"


def test_a_cart_changed_after_the_upsell_keeps_its_enrollment(upsell_run, shop_db):
    case = shop_db[1]["upsell_cart_changed_after"]
    assert keys_of_cart(upsell_run, case.cart_id) == [case_key(case)]  # no upsell for the earrings
    e = upsell_run.enrollment_rows()[case_key(case)]
    assert e.entered_at == at(upsell_run, 28, 10)  # the clock did not move ...
    assert ts(e.context["cart_updated_at"]) == at(upsell_run, 20)  # ... the context did
    assert upsell_run.messages_of(case_key(case), columns=BY_CHANNEL) == {"offer": ("email", "sent", None, at(upsell_run, 28)),
                                                       "follow_up": ("email", "sent", None, at(upsell_run, 4))}


def test_upgrade_in_the_cart_skips_the_follow_up(upsell_run, shop_db):
    case = shop_db[1]["upsell_upgrade_added"]
    assert upsell_run.messages_of(case_key(case), columns=BY_CHANNEL)["follow_up"] == (
        "email", "skipped", "condition met: upsell_upgrade_in_cart", at(upsell_run, 3))
    assert [m["X-Lifecycle-Step"] for m in upsell_run.emails if m["To"] == case.email] == ["offer"]


def test_due_at_or_after_the_run_end(upsell_run, shop_db):
    planted = shop_db[1]
    on_the_hour = planted["upsell_due_on_the_hour"]
    assert upsell_run.messages_of(case_key(on_the_hour), columns=BY_CHANNEL)["offer"][-1] == at(upsell_run, 5)
    assert upsell_run.enrollment_rows()[case_key(on_the_hour)].entered_at == at(upsell_run, 5)
    late = planted["upsell_changed_just_before_a_run"]
    assert upsell_run.messages_of(case_key(late), columns=BY_CHANNEL)["offer"][-1] == at(upsell_run, 2)
    assert upsell_run.enrollment_rows()[case_key(late)].entered_at == at(upsell_run, 2, 55)


def test_item_taken_out_exits_and_never_comes_back(upsell_run):
    case = upsell_run.cases.extra["removed_then_readded"]
    e = upsell_run.enrollment_rows()[case.key]
    assert (e.status, e.exit_reason, e.exited_at) == ("exited", "upsell_item_removed", case.details["removed"])
    assert set(upsell_run.messages_of(case.key, columns=BY_CHANNEL)) == {"offer"}
    assert keys_of_cart(upsell_run, case.cart_id) == [case.key]  # the pet food is never upsold
    assert [m["X-Lifecycle-Step"] for m in upsell_run.emails if m["To"] == case.email] == ["offer"]


def test_swap_to_the_upgrade_skips_the_follow_up_and_its_order_converts(upsell_run):
    case = upsell_run.cases.extra["swapped_then_ordered"]
    e = upsell_run.enrollment_rows()[case.key]
    assert (e.status, e.exit_reason, e.exited_at) == ("converted", "upsell_ordered_upgrade", case.details["ordered"])
    assert upsell_run.messages_of(case.key, columns=BY_CHANNEL)["follow_up"][:3] == (
        "email", "skipped", "condition met: upsell_upgrade_in_cart")
    assert upsell_run.query("SELECT c.order_id FROM lifecycle.conversions c JOIN lifecycle.enrollments e "
                            "USING (enrollment_id) WHERE e.enrollment_key = :k", k=case.key) == [(str(case.order_id),)]
