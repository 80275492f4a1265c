"""End-to-end journey tests: the demo shop, real journey runs, a real SMTP server, and an
expected outcome derived independently from the shop tables.

On the embedded PostgreSQL, the shop is copied once from the session's template (`shop`,
session scope) and each journey runs once over its window (`journey_run`, called by a module-scoped fixture in each test
module) against its own `RecordingSMTPServer`.

The expected outcome never reads the segment files or calls the engine's SQL: each test
module states its journey's rules in Python over the shop tables (pandas DataFrames), and
`simulate` below plays those rules through the same sequence of runs, applying the
engine's documented contract (DESIGN.md): a step is planned by the first run whose
interval end is at or after its due time (or "expired" when it is more than max_lateness
overdue), exit rules are checked before steps, in header order, and consent,
suppressions and the address are checked at send time.
"""

from __future__ import annotations

import hashlib
import re
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from functools import cached_property
from typing import Any, NamedTuple

import pandas as pd
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lifecycle.channels.email import EmailChannel
from lifecycle.channels.push import PushChannel
from lifecycle.channels.sms import SMSChannel
from lifecycle.config import SEGMENTS_DIR
from lifecycle.replay import run_interval
from lifecycle.spec import JourneySpec, load_spec
from lifecycle_demo import demo_shop
from lifecycle_demo.sinks.push_server import PushServer, demo_key_lookup
from lifecycle_demo.sinks.smtp_server import ReceivedMessage, RecordingSMTPServer
from lifecycle_demo.sinks.twilio_server import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, TwilioServer

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)  # "A": the demo shop's history ends just before it
SHOP_SEED = 11  # tests/conftest.py generates the shop with it; the demo push keys derive from it
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# What the tests call a usable address: something@domain.tld, no spaces.
VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
EXIT_STATUSES = ("converted", "exited", "expired")  # an enrollment that left the journey

SHOP_TABLES = ("customers", "consents", "products", "carts", "cart_items", "orders", "order_items", "reviews")


# ----------------------------------------------------------------------------- the shop


class Order(NamedTuple):
    order_id: int
    customer_id: int
    ordered_at: datetime
    status: str
    total: Decimal
    delivered_at: datetime | None


@dataclass
class Shop:
    """The generated demo shop as DataFrames, plus the lookups every journey needs."""

    engine: sa.Engine
    planted: demo_shop.Planted
    frames: dict[str, pd.DataFrame]
    email_of: dict[int, str] = field(init=False)
    email_consent: dict[int, str] = field(init=False)  # customer -> opted_in / opted_out (no row: absent)
    orders_of: dict[int, list[Order]] = field(init=False)  # non-cancelled orders per customer, by time

    def __post_init__(self) -> None:
        customers = self.frames["customers"]
        self.email_of = dict(zip(customers.customer_id.astype(int), customers.email, strict=True))
        consents = self.frames["consents"]
        email_rows = consents[consents.channel == "email"]
        self.email_consent = dict(zip(email_rows.customer_id.astype(int), email_rows.status, strict=True))
        self.orders_of = {}
        for order in self.orders():
            if order.status != "cancelled":
                self.orders_of.setdefault(order.customer_id, []).append(order)
        for orders in self.orders_of.values():
            orders.sort(key=lambda o: (o.ordered_at, o.order_id))

    def orders(self) -> list[Order]:
        return [
            Order(int(r.order_id), int(r.customer_id), py(r.ordered_at), r.status, Decimal(str(r.total)),
                  py(r.delivered_at))
            for r in self.frames["orders"].itertuples(index=False)
        ]

    def first_order_between(self, customer_id: int, after: datetime, before: datetime) -> Order | None:
        """The customer's first non-cancelled order with after < ordered_at < before."""
        for order in self.orders_of.get(customer_id, ()):
            if after < order.ordered_at < before:
                return order
        return None

    def last_order_before(self, customer_id: int, before: datetime) -> Order | None:
        """The customer's latest non-cancelled order with ordered_at < before."""
        orders = self.orders_of.get(customer_id, [])
        i = bisect_left([o.ordered_at for o in orders], before)
        return orders[i - 1] if i else None


def py(value: Any) -> Any:
    """A pandas Timestamp as a plain aware datetime (NaT -> None); other values unchanged."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def read_shop_frames(engine: sa.Engine, tables: Iterable[str] = SHOP_TABLES) -> dict[str, pd.DataFrame]:
    with engine.connect() as conn:
        return {t: pd.read_sql(sa.text(f"SELECT * FROM shop.{t}"), conn, coerce_float=False) for t in tables}


# ----------------------------------------------------------------------------- expected outcome


class Candidate(NamedTuple):
    """One row a journey's rules select in a run."""

    key: str
    customer_id: int
    entered_at: datetime
    email: str


class StepRule(NamedTuple):
    name: str
    after: timedelta
    action: bool = False  # a 'suppress' action: recorded as sent and suppresses the customer


class Conversion(NamedTuple):
    condition: str
    occurred_at: datetime
    order_id: str | None = None
    revenue: Decimal | None = None


class ExitRule(NamedTuple):
    condition: str
    message_step: str | None  # the exit message (None: exit silently)
    check: Callable[[ExpectedEnrollment, datetime], Conversion | None]  # (enrollment, as_of)


@dataclass
class ExpectedMessage:
    key: str
    customer_id: int
    step: str
    due_at: datetime
    planned_for: datetime  # interval end of the run that planned (and sent) it
    status: str = "planned"
    reason: str | None = None
    channel: str = "email"

    def row(self) -> tuple:
        return (self.key, self.step, self.channel, self.status, self.reason, self.due_at, self.planned_for)


@dataclass
class ExpectedEnrollment:
    """An enrollment the oracle expects. A journey's test adds what its own model tracks as
    keyword-only fields (`@dataclass(kw_only=True)` subclass: they follow these defaults)."""

    key: str
    customer_id: int
    entered_at: datetime
    enrolled_at: datetime
    status: str = "active"
    exit_reason: str | None = None
    exited_at: datetime | None = None
    conversion: Conversion | None = None
    messages: dict[str, ExpectedMessage] = field(default_factory=dict)
    holdout: bool = False  # in the journey's holdout: no marketing message, still converts


@dataclass
class Expected:
    enrollments: dict[str, ExpectedEnrollment]
    quarantined: dict[str, list[datetime]]  # key -> interval ends of the runs that quarantined it
    per_run: list[dict]  # {'end', 'selected', 'quarantined'} per run
    suppressed: dict[int, str]  # customer -> suppression reason, after the last run

    @property
    def messages(self) -> list[ExpectedMessage]:
        return [m for e in self.enrollments.values() for m in e.messages.values()]

    def sent_emails(self, shop: Shop) -> Counter:
        """(To address, step) of every email that should have reached the SMTP server."""
        return Counter(
            (shop.email_of[m.customer_id], m.step)
            for m in self.messages
            if m.status == "sent" and not (m.reason or "").startswith("action:")
        )


def intervals_for(start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, datetime]]:
    """Consecutive [start, end) intervals covering the window."""
    ends = []
    t = start + step
    while t <= end:
        ends.append(t)
        t += step
    return intervals_from_ends(ends, step)


def intervals_from_ends(ends: list[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    return list(zip([ends[0] - step, *ends[:-1]], ends, strict=True))


def holdout_rule(journey: str, percent: float) -> Callable[[int], bool]:
    """Who is held out of a journey, as the tests model it: the customer's bucket 0-99 is the first
    8 hex digits of md5("<journey>:<customer_id>") read as a number, its 31 low bits mod 100;
    bucket < percent is held out (the same customer in every run)."""

    def held_out(customer_id: int) -> bool:
        digits = hashlib.md5(f"{journey}:{customer_id}".encode()).hexdigest()[:8]
        return (int(digits, 16) & 0x7FFFFFFF) % 100 < percent

    return held_out


def purchased_since_entry(shop) -> ExitRule:
    """The shared exit condition as the tests model it: the customer's first non-cancelled order
    after entering and before the run's as_of converts, with a thank-you email."""

    def purchased(e, as_of: datetime):
        order = shop.first_order_between(e.customer_id, e.entered_at, as_of)
        if order:
            return Conversion("purchased_since_entry", order.ordered_at, str(order.order_id), order.total)
        return None

    return ExitRule("purchased_since_entry", "thank_you", purchased)


def simulate(
    shop: Shop,
    intervals: list[tuple[datetime, datetime]],
    *,
    select: Callable[[datetime, datetime], Iterable[Candidate]],  # (interval_start, as_of) -> rows
    steps: list[StepRule],
    exits: list[ExitRule],
    max_lateness: timedelta,
    complete_after: timedelta = 7 * DAY,
    suppressed_before: dict[int, str] | None = None,
    refresh_clock: bool = False,
    holdout: Callable[[int], bool] | None = None,
) -> Expected:
    """Play a journey's rules run by run; return what every run should have left behind.
    `refresh_clock`: a row seen again with a later clock moves an active enrollment's clock.
    `holdout` (customer -> held out, see holdout_rule): a held-out enrollment's messages, steps,
    actions and exit messages alike, are recorded skipped ('holdout') when planned, late or
    not; it still exits and converts."""
    enrollments: dict[str, ExpectedEnrollment] = {}
    quarantined: dict[str, list[datetime]] = {}
    per_run: list[dict] = []
    suppressed = dict(suppressed_before or {})
    sunset_at: dict[int, datetime] = {}  # the sunsets this simulation wrote: customer -> since
    exit_steps = {r.message_step for r in exits if r.message_step}

    def plan(e: ExpectedEnrollment, step: str, due: datetime, as_of: datetime, action: bool) -> ExpectedMessage:
        if e.holdout:
            msg = ExpectedMessage(e.key, e.customer_id, step, due, as_of, "skipped", "holdout")
        elif due + max_lateness < as_of:
            msg = ExpectedMessage(e.key, e.customer_id, step, due, as_of, "expired",
                                  f"late: due {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC")
        elif action:
            msg = ExpectedMessage(e.key, e.customer_id, step, due, as_of, "sent", "action:")
            if e.customer_id not in suppressed:
                suppressed[e.customer_id], sunset_at[e.customer_id] = "no_response", as_of
        else:
            msg = ExpectedMessage(e.key, e.customer_id, step, due, as_of, "planned", None)
        e.messages[step] = msg
        return msg

    def lift_sunset(customer_id: int, as_of: datetime) -> None:
        """A sunset ends when the customer places a (non-cancelled) order at or after it, before as_of."""
        since = sunset_at.get(customer_id)
        if since and any(since <= o.ordered_at < as_of for o in shop.orders_of.get(customer_id, ())):
            del suppressed[customer_id], sunset_at[customer_id]

    def send(msg: ExpectedMessage, e: ExpectedEnrollment, as_of: datetime) -> None:
        """The send-time checks, in order: enrollment state, suppressions, consent, address."""
        lift_sunset(msg.customer_id, as_of)
        consent = shop.email_consent.get(msg.customer_id)
        if e.status in EXIT_STATUSES and msg.step not in exit_steps:
            msg.status, msg.reason = "skipped", f"enrollment {e.status}"
        elif msg.customer_id in suppressed:
            msg.status, msg.reason = "suppressed", f"suppressed: {suppressed[msg.customer_id]}"
        elif consent is None:
            msg.status, msg.reason = "suppressed", "no consent"
        elif consent != "opted_in":
            msg.status, msg.reason = "suppressed", "consent withdrawn"
        elif not VALID_EMAIL.match(shop.email_of[msg.customer_id] or ""):
            msg.status, msg.reason = "skipped", "invalid address"
        else:
            msg.status = "sent"

    def active(as_of: datetime) -> list[ExpectedEnrollment]:
        return [e for e in enrollments.values() if e.status == "active" and e.entered_at <= as_of]

    for start, as_of in intervals:
        planned: list[tuple[ExpectedMessage, ExpectedEnrollment]] = []
        rows = list(select(start, as_of))
        keys = [r.key for r in rows]
        assert len(keys) == len(set(keys)), "the journey's rules selected a key twice"
        bad = 0
        for r in rows:
            if not VALID_EMAIL.match(r.email or ""):
                quarantined.setdefault(r.key, []).append(as_of)
                bad += 1
            elif r.key not in enrollments:
                enrollments[r.key] = ExpectedEnrollment(r.key, r.customer_id, r.entered_at, as_of,
                                                        holdout=bool(holdout and holdout(r.customer_id)))
            elif refresh_clock and enrollments[r.key].status == "active":
                e = enrollments[r.key]
                e.entered_at = max(e.entered_at, r.entered_at)
        per_run.append({"end": as_of, "selected": len(rows), "quarantined": bad})

        for rule in exits:  # header order: the first rule that holds wins
            for e in active(as_of):
                hit = rule.check(e, as_of)
                if hit is None:
                    continue
                e.status, e.exit_reason, e.conversion = "converted", rule.condition, hit
                e.exited_at = min(hit.occurred_at, as_of)
                if rule.message_step:
                    planned.append((plan(e, rule.message_step, e.exited_at, as_of, False), e))

        for step in steps:
            for e in active(as_of):
                due = e.entered_at + step.after
                if step.name not in e.messages and due <= as_of:
                    planned.append((plan(e, step.name, due, as_of, step.action), e))

        done_after = steps[-1].after + complete_after
        for e in active(as_of):
            if all(s.name in e.messages for s in steps) and e.entered_at + done_after <= as_of:
                e.status = "completed"

        for msg, e in planned:
            if msg.status == "planned":
                send(msg, e, as_of)
    return Expected(enrollments, quarantined, per_run, suppressed)


# ----------------------------------------------------------------------------- what the engine did


class Replay:
    """What a replay talks to while it runs: the shop's engine, the journey, and local servers
    speaking the providers' APIs (SMTP always; Twilio and a web push service when asked for).
    Hooks get it, to plant rows between runs or to run one more interval (`run_once`)."""

    def __init__(self, engine: sa.Engine, spec: JourneySpec, smtp: RecordingSMTPServer,
                 twilio: TwilioServer | None, push: PushServer | None) -> None:
        self.engine, self.spec, self.smtp, self.twilio, self.push = engine, spec, smtp, twilio, push
        self.cases: Any = None  # what the `setup` hook returned, for the later hooks
        self._vapid: str | None = None

    def channel(self, name: str):
        if name == "email":
            return EmailChannel("127.0.0.1", self.smtp.port)
        if name == "sms" and self.twilio is not None:
            return SMSChannel(self.twilio.base_url, DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, from_number="+15005550006",
                              backoff=0.01, settle=0.01)
        if name == "push" and self.push is not None:
            if self._vapid is None:  # a fresh VAPID key per replay, as a deployment has its own
                self._vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()).decode()
            return PushChannel(self._vapid, "mailto:ops@shop.example.com")
        raise AssertionError(f"this replay has no {name!r} server: pass sms=True / push=True")

    def run_once(self, start: datetime, end: datetime, **kwargs) -> dict:
        """One interval through the engine (run_interval's keywords: run_id, mode, clock, ...)."""
        return run_interval(self.engine, self.spec, start, end, self.channel, **kwargs)


@dataclass
class JourneyRun:
    """A journey replayed over intervals (`journey_run`), and what the servers received."""

    journey: str
    spec: JourneySpec
    engine: sa.Engine
    planted: demo_shop.Planted
    intervals: list[tuple[datetime, datetime]]
    results: list[dict]  # run_interval's summary per run
    received: list[ReceivedMessage]  # what the SMTP server accepted, in order
    suppressions_before: dict[tuple[int | str, str], str]  # (customer, channel) -> reason, before the first run
    seconds: float
    sms: list[dict] = field(default_factory=list)  # what the Twilio server accepted
    pushes: list = field(default_factory=list)  # push_server.Received
    push_rejected: list = field(default_factory=list)
    cases: Any = None  # what the `setup` hook returned: the cases it planted
    finished: Any = None  # what the `finish` hook returned
    emails: list[EmailMessage] = field(init=False)  # `received`, parsed with the email package
    rcpt_tos: list[list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.emails = [m.message() for m in self.received]
        self.rcpt_tos = [m.rcpt_tos for m in self.received]

    @cached_property
    def shop(self) -> Shop:
        """The shop tables as DataFrames, read on first use (after the replay: with what hooks planted)."""
        return Shop(self.engine, self.planted, read_shop_frames(self.engine))

    @property
    def suppressed_before(self) -> dict[int, str]:
        """Email suppressions before the first run: customer -> reason."""
        return {c: r for (c, channel), r in self.suppressions_before.items() if channel == "email"}

    @property
    def ends(self) -> list[datetime]:
        return [end for _, end in self.intervals]

    # -- lifecycle tables, read back with plain SQL

    def query(self, sql: str, **params) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), {"journey": self.journey, **params}).all()

    def message_rows(self) -> list[tuple]:
        """(key, step, channel, status, reason, due_at, planned_for), reasons normalised like ExpectedMessage."""
        rows = self.query(
            """
            SELECT e.enrollment_key, m.step, m.channel, m.status, m.reason, m.due_at, m.planned_for
            FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id)
            WHERE m.journey = :journey AND m.mode = 'live'
            """
        )
        out = []
        for key, step, channel, status, reason, due_at, planned_for in rows:
            if status == "expired" and reason:
                reason = reason.split(",")[0]  # 'late: due YYYY-MM-DD HH:MM UTC, more than ... before the run'
            elif status == "sent" and reason and reason.startswith("action:"):
                reason = "action:"
            elif status == "skipped" and reason and reason.startswith("enrollment "):
                reason = " ".join(reason.split()[:2])  # 'enrollment converted (purchased_since_entry)'
            out.append((key, step, channel, status, reason, due_at, planned_for))
        return out

    def enrollment_rows(self) -> dict[str, Any]:
        rows = self.query(
            # lifecycle keeps ids as text; the demo shop's are whole numbers, compared as such here
            "SELECT enrollment_key, customer_id::bigint AS customer_id, entered_at, enrolled_at, status, exit_reason, "
            "exited_at, holdout, context FROM lifecycle.enrollments WHERE journey = :journey AND mode = 'live'"
        )
        return {r.enrollment_key: r for r in rows}

    def messages_of(self, key: str | None = None, *, customer_id: int | None = None,
                    columns: tuple[str, ...] = ("status", "reason", "due_at", "planned_for")) -> dict[str, tuple]:
        """step -> `columns` of lifecycle.messages, for one enrollment key or every message to one customer."""
        assert (key is None) != (customer_id is None), "one enrollment key or one customer"
        rows = self.query(
            f"SELECT m.step, {', '.join('m.' + c for c in columns)} FROM lifecycle.messages m "
            "JOIN lifecycle.enrollments e USING (enrollment_id) WHERE m.journey = :journey AND "
            + ("e.enrollment_key = :key" if key is not None else "m.customer_id = CAST(:customer AS text)"),
            key=key, customer=customer_id)
        return {r.step: tuple(r[1:]) for r in rows}

    def conversion_rows(self) -> dict[str, tuple]:
        rows = self.query(
            """
            SELECT e.enrollment_key, c.customer_id::bigint, c.condition, c.order_id, c.revenue, c.converted_at
            FROM lifecycle.conversions c JOIN lifecycle.enrollments e USING (enrollment_id)
            WHERE c.journey = :journey AND c.mode = 'live'
            """
        )
        return {r[0]: tuple(r[1:]) for r in rows}

    def quarantine_rows(self) -> list[tuple[str, tuple[str, ...], datetime]]:
        rows = self.query(
            """
            SELECT q.enrollment_key, q.reasons, r.interval_end
            FROM lifecycle.quarantine q JOIN lifecycle.runs r USING (journey, run_id)
            WHERE q.journey = :journey AND q.mode = 'live'
            """
        )
        return [(k, tuple(reasons), end) for k, reasons, end in rows]

    # -- what the SMTP server received

    def received_by_step(self) -> Counter:
        return Counter((m["To"], m["X-Lifecycle-Step"]) for m in self.emails)

    def steps_received_by(self, to: str) -> list[str]:
        """X-Lifecycle-Step of every email to `to`, in arrival order."""
        return [m["X-Lifecycle-Step"] for m in self.emails if m["To"] == to]

    def find_received(self, to: str, step: str) -> list[EmailMessage]:
        return [m for m in self.emails if m["To"] == to and m["X-Lifecycle-Step"] == step]


def journey_run(
    db: Shop | tuple,
    journey: str,
    intervals: list[tuple[datetime, datetime]],
    *,
    setup: Callable[[Replay], Any] | None = None,
    before: Callable[[Replay, datetime, datetime], None] | None = None,
    after: Callable[[Replay, datetime, datetime, dict], None] | None = None,
    finish: Callable[[Replay], Any] | None = None,
    clock: Callable[[datetime], datetime] | None = None,
    spec: JourneySpec | None = None,
    sms: bool = False,
    push: bool = False,
    smtp_reject: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> JourneyRun:
    """Replay `journey` over `intervals` (oldest first) against its own local servers.

    `db` is the session's `Shop` or a module's `shop_db`. Hooks, all optional: `setup(replay)` once
    the servers listen (plant rows; its return value is `run.cases`), `before(replay, start,
    end)` and `after(replay, start, end, result)` around each interval (shop events between runs),
    `finish(replay)` after the last one, servers still up (`run.finished`); `clock(end)` is the
    wall clock each run sees (default: the real one). `env` is set for the replay only."""
    engine, planted = (db.engine, db.planted) if isinstance(db, Shop) else db[:2]
    spec = spec or load_spec(SEGMENTS_DIR / f"{journey}.sql")
    results: list[dict] = []
    with ExitStack() as stack:
        environ = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in (env or {}).items():
            environ.setenv(name, value)
        smtp = stack.enter_context(RecordingSMTPServer(reject=smtp_reject))
        twilio = stack.enter_context(TwilioServer()) if sms else None
        push_server = None
        if push:
            push_server = PushServer(key_lookup=demo_key_lookup(engine, seed=SHOP_SEED))
            push_server.start()
            stack.callback(push_server.stop)
        replay = Replay(engine, spec, smtp, twilio, push_server)
        cases = replay.cases = setup(replay) if setup else None
        if push_server:
            _route_push_subscriptions(engine, push_server.origin)
        with engine.connect() as conn:
            suppressions_before = {(int(c) if c.isdigit() else c, ch): r for c, ch, r in conn.execute(sa.text(
                "SELECT customer_id, channel, reason FROM lifecycle.suppressions"))}  # the demo shop's ids: numbers
        t0 = time.perf_counter()
        for start, end in intervals:
            if before:
                before(replay, start, end)
            kwargs = {"clock": lambda end=end: clock(end)} if clock else {}
            results.append(replay.run_once(start, end, **kwargs))
            if after:
                after(replay, start, end, results[-1])
        seconds = time.perf_counter() - t0
        received = list(smtp.messages)
        sent_sms = list(twilio.messages) if twilio else []
        finished = finish(replay) if finish else None
        pushes = list(push_server.received) if push_server else []
        push_rejected = list(push_server.rejected) if push_server else []
    run = JourneyRun(journey, spec, engine, planted, intervals, results, received, suppressions_before, seconds,
                     sent_sms, pushes, push_rejected, cases, finished)
    if isinstance(db, Shop):
        run.shop = db  # the session's shop: its frames are read already
    return run


def _route_push_subscriptions(engine: sa.Engine, origin: str) -> None:
    """The shop's subscriptions point at a made-up push host; route them to the local one."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE shop.push_subscriptions "
                             "SET endpoint = :origin || '/push/' || regexp_replace(endpoint, '^.*/', '')"),
                     {"origin": origin})


def daily(ends: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """One-day intervals ending at `ends` (not necessarily consecutive)."""
    return [(end - DAY, end) for end in ends]


@pytest.fixture(scope="session")
def shop(embedded_server_url, shop_copy) -> Shop:
    """The demo shop on the embedded server (a copy of the session's template), shared by the
    journeys that use it. Journeys run on the embedded server only; the service server has its
    focused tests (connections, concurrency, backfill, guarantees)."""
    url, drop, planted = shop_copy(embedded_server_url)
    engine = sa.create_engine(url)
    yield Shop(engine, planted, read_shop_frames(engine))
    engine.dispose()
    drop()


# ----------------------------------------------------------------------------- comparing


def assert_same(actual: Iterable, expected: Iterable, what: str, show: int = 8) -> None:
    """Multiset equality with a readable diff (a few examples each way)."""
    actual, expected = Counter(actual), Counter(expected)
    missing, unexpected = expected - actual, actual - expected
    if missing or unexpected:
        lines = [f"{what}: {sum(missing.values())} expected but missing, {sum(unexpected.values())} unexpected"]
        lines += [f"  missing:    {row!r}" for row in sorted(map(repr, missing))[:show]]
        lines += [f"  unexpected: {row!r}" for row in sorted(map(repr, unexpected))[:show]]
        pytest.fail("\n".join(lines))


def text_and_html(message) -> tuple[str, str]:
    """The text/plain and text/html bodies of a multipart/alternative email (asserted to be so),
    as rendered: tracked links (lifecycle.tracking) back to their targets, the open pixel out."""
    from lifecycle.tracking import untrack

    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    parts = {part.get_content_type(): part for part in message.iter_parts()}
    assert set(parts) == {"text/plain", "text/html"}, set(parts)
    return untrack(parts["text/plain"].get_content()), untrack(parts["text/html"].get_content(), html=True)


# ----------------------------------------------------------------------------- the checks every journey runs


def check_runs(run: JourneyRun, expected: Expected) -> None:
    """Every run finished ok and selected / quarantined exactly the rows the rules pick."""
    statuses = run.query("SELECT status, count(*) FROM lifecycle.runs WHERE journey = :journey AND mode = 'live' "
                         "GROUP BY status")
    assert dict(statuses) == {"ok": len(run.intervals)}
    actual = [(end, r["selected"], r["quarantined"]) for (_, end), r in zip(run.intervals, run.results, strict=True)]
    wanted = [(r["end"], r["selected"], r["quarantined"]) for r in expected.per_run]
    assert_same(actual, wanted, f"{run.journey}: (run end, rows selected, rows quarantined)")


def check_messages(run: JourneyRun, expected: Expected) -> None:
    """lifecycle.messages equals the expected messages, status by status (key, step, reason, timing)."""
    actual = run.message_rows()
    wanted = [m.row() for m in expected.messages]
    statuses = sorted({r[3] for r in actual} | {r[3] for r in wanted})
    for status in statuses:
        assert_same([r for r in actual if r[3] == status], [r for r in wanted if r[3] == status],
                    f"{run.journey}: messages with status {status!r} (key, step, channel, status, reason, due, run)")


def check_smtp(run: JourneyRun, expected: Expected) -> None:
    """The SMTP server received exactly the expected 'sent' emails, each once."""
    assert_same(run.received_by_step(), expected.sent_emails(run.shop),
                f"{run.journey}: (To, X-Lifecycle-Step) received by the SMTP server")
    ids = Counter(m["Message-ID"] for m in run.emails)
    assert not [i for i, n in ids.items() if n > 1], "a Message-ID was received twice"
    for received, msg in zip(run.received, run.emails, strict=True):
        assert received.rcpt_tos == [msg["To"]]
        assert msg["X-Lifecycle-Journey"] == run.journey


def check_enrollments(run: JourneyRun, expected: Expected) -> None:
    """lifecycle.enrollments: who entered, when the clock started, and how each left."""
    actual = [
        (k, r.customer_id, r.entered_at, r.enrolled_at, r.status, r.exit_reason, r.exited_at, r.holdout)
        for k, r in run.enrollment_rows().items()
    ]
    wanted = [
        (e.key, e.customer_id, e.entered_at, e.enrolled_at, e.status, e.exit_reason, e.exited_at, e.holdout)
        for e in expected.enrollments.values()
    ]
    assert_same(actual, wanted, f"{run.journey}: enrollments (key, customer, entered, enrolled, status, "
                                "exit reason, exited, holdout)")


def check_conversions(run: JourneyRun, expected: Expected) -> None:
    """lifecycle.conversions: one row per converted enrollment, with the order and revenue that did it."""
    wanted = {
        e.key: (e.customer_id, e.conversion.condition, e.conversion.order_id, e.conversion.revenue, e.exited_at)
        for e in expected.enrollments.values() if e.status == "converted"
    }
    assert_same(run.conversion_rows().items(), wanted.items(), f"{run.journey}: conversions")


def check_quarantine(run: JourneyRun, expected: Expected) -> None:
    """Rows with an unusable address are quarantined (with the reason) in every run that selects them."""
    wanted = [(k, ("email: not a valid address",), end) for k, ends in expected.quarantined.items() for end in ends]
    assert_same(run.quarantine_rows(), wanted, f"{run.journey}: quarantine (key, reasons, run end)")
    assert not set(expected.quarantined) & set(run.enrollment_rows()), "a quarantined row was enrolled"
