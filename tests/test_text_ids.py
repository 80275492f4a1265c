"""Ids may be text (issue 8, item 6): a shop whose customer, order, product and cart ids are
strings (`C-0000042`, `#0000001001`, hex product ids, UUID-like cart ids) runs the journeys
exactly like the same shop with integer ids.

Two databases per server hold the demo shop generated with the same seed; in one of them every
id column is converted to text in place (foreign keys dropped and re-added). The journeys run
through the engine (`run_interval`, a real SMTP server) on both, and everything they leave
behind must be the same once the integer shop's ids are written in the text shop's forms: who
was enrolled, which message went to which address (and what it said), conversions with their
order ids and revenue, coupons with their product ids, suppressions.

The text forms keep the numbers' order (fixed width), so the documented tie rule (the smaller
id first: lexicographic for text) picks the same rows in both shops.
"""

from __future__ import annotations

import dataclasses
import email
import email.header
import email.policy
import re
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from conftest import _admin_url, _fresh_database

from lifecycle import schema
from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR, SQL_DIR
from lifecycle.links import unsubscribe_token, verify_unsubscribe_token
from lifecycle.replay import run_interval
from lifecycle.spec import load_spec
from lifecycle.tracking import untrack
from lifecycle_demo import demo_shop
from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

# The twins replay 126 intervals each in one module fixture: minutes on a quiet machine, more than
# pytest-timeout's default 600 s on a loaded one. The timeout is there to catch hangs, not slowness.
pytestmark = pytest.mark.timeout(1800)

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
CUSTOMERS, SEED = 600, 11
HOUR, DAY = timedelta(hours=1), timedelta(days=1)

# id kind -> (SQL for integer id {x} as text, the same in Python). Fixed width: order-preserving.
ID_FORMS = {
    "customer": ("'C-' || lpad({x}::text, 7, '0')", lambda i: f"C-{int(i):07d}"),
    "order": ("'#' || lpad({x}::text, 10, '0')", lambda i: f"#{int(i):010d}"),
    "product": ("'sku-' || lpad(to_hex({x}), 8, '0')", lambda i: f"sku-{int(i):08x}"),
    "cart": ("'00000000-0000-4000-8000-' || lpad(to_hex({x}), 12, '0')",
             lambda i: f"00000000-0000-4000-8000-{int(i):012x}"),
}
ID_COLUMNS = {  # shop table -> {column: id kind}
    "customers": {"customer_id": "customer"},
    "consents": {"customer_id": "customer"},
    "push_subscriptions": {"customer_id": "customer"},
    "products": {"product_id": "product"},
    "product_links": {"product_id": "product", "linked_product_id": "product"},
    "orders": {"order_id": "order", "customer_id": "customer"},
    "order_items": {"order_id": "order", "product_id": "product"},
    "carts": {"cart_id": "cart", "customer_id": "customer"},
    "cart_items": {"cart_id": "cart", "product_id": "product"},
    "page_views": {"customer_id": "customer", "product_id": "product"},
    "reviews": {"order_id": "order", "product_id": "product", "customer_id": "customer"},
    "referrals": {"referrer_customer_id": "customer", "converted_order_id": "order"},
    "engagement_events": {"customer_id": "customer"},
}


def as_text(kind: str, value):
    return None if value is None else ID_FORMS[kind][1](value)


def convert_ids_to_text(engine: sa.Engine) -> None:
    """Every id column of the shop becomes text, in place (what a store with string ids has)."""
    with engine.begin() as conn:
        keys = conn.execute(sa.text(
            "SELECT format('%I.%I', n.nspname, t.relname), quote_ident(c.conname), pg_get_constraintdef(c.oid) "
            "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE c.contype = 'f' AND n.nspname = 'shop' ORDER BY 1, 2")).all()
        for table, name, _ in keys:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        for table, columns in ID_COLUMNS.items():
            changes = ", ".join(
                f"ALTER COLUMN {column} TYPE text USING {ID_FORMS[kind][0].format(x=column)}"
                for column, kind in columns.items()
            )
            conn.exec_driver_sql(f"ALTER TABLE shop.{table} {changes}")
        for table, name, definition in keys:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")


def id_type(engine: sa.Engine, table: str, column: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = :s AND table_name = :t "
            "AND column_name = :c"), {"s": table.split(".")[0], "t": table.split(".")[1], "c": column}).scalar_one()


@pytest.fixture(scope="module")
def twin_shops(request):
    """(integer shop, text shop): the same demo shop twice, one with its ids converted to text.
    Journey replays, so on the embedded server only (README, "Tests": the service server has its
    focused set)."""
    admin_url = _admin_url(request, "embedded")
    engines, drops = [], []
    for text_ids in (False, True):
        url, drop = _fresh_database(admin_url)
        engine = sa.create_engine(url)
        planted = demo_shop.generate(engine, ANCHOR, customers=CUSTOMERS, seed=SEED)
        if text_ids:
            convert_ids_to_text(engine)
        schema.migrate(engine)
        engines.append(engine)
        drops.append(drop)
    yield engines[0], engines[1], planted
    for engine, drop in zip(engines, drops, strict=True):
        engine.dispose()
        drop()


# ----------------------------------------------------------------------------- running journeys


def intervals(start: datetime, end: datetime, every: timedelta) -> list[tuple[datetime, datetime]]:
    out, t = [], start
    while t < end:
        out.append((t, t + every))
        t += every
    return out


# journey -> the runs: (interval start, interval end) pairs
RUNS = {
    "win_back": intervals(ANCHOR - 26 * DAY, ANCHOR, DAY),
    "cart_abandonment": intervals(ANCHOR - 2 * DAY, ANCHOR, HOUR),
    "review_request": intervals(ANCHOR - 12 * DAY, ANCHOR, DAY),
    "product_recommendations": [(end - 7 * DAY, end) for end in (ANCHOR - 11 * DAY, ANCHOR - 4 * DAY, ANCHOR + 3 * DAY)],
    "behaviour_discount": intervals(ANCHOR - 51 * HOUR, ANCHOR - 20 * HOUR, HOUR),
    "cross_sell": intervals(ANCHOR - 6 * DAY, ANCHOR, DAY),
}
# behaviour_discount: after the run ending then, the planted case orders its product with its code
REDEEM_AFTER, REDEEM_AT, REDEEM_ORDER = ANCHOR - 31 * HOUR, ANCHOR - 30 * HOUR, 990_000_001


def redeem(engine: sa.Engine, planted, text_ids: bool) -> None:
    """The planted behaviour_discount case places an order with its code, holding the code's product."""
    case = planted["behaviour_discount_four_views"]
    customer = as_text("customer", case.customer_id) if text_ids else case.customer_id
    order = as_text("order", REDEEM_ORDER) if text_ids else REDEEM_ORDER
    with engine.begin() as conn:
        code, product = conn.execute(sa.text(
            "SELECT code, product_id FROM lifecycle.coupons WHERE journey = 'behaviour_discount' "
            "AND customer_id = :c"), {"c": str(customer)}).one()
        price = conn.execute(sa.text("SELECT price FROM shop.products WHERE product_id::text = :p"),
                             {"p": product}).scalar_one()
        product_id = product if text_ids else int(product)
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency, coupon_code) "
            "VALUES (:o, :c, :t, 'placed', :total, 'EUR', :code)"),
            {"o": order, "c": customer, "t": REDEEM_AT, "total": price * Decimal("0.9"), "code": code})
        conn.execute(sa.text("INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
                             "VALUES (:o, :p, 1, :u)"), {"o": order, "p": product_id, "u": price})


TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_\-=%]+")  # a Fernet unsubscribe token, also URL-quoted


def run_journey(engine: sa.Engine, journey: str, planted, text_ids: bool) -> dict[str, Counter]:
    """Run the journey's intervals against a fresh SMTP server; return what it left behind."""
    spec = load_spec(SEGMENTS_DIR / f"{journey}.sql")
    # A/B variants are assigned by a hash of the customer's own id, so twins whose ids differ ('42'
    # and 'C-42') land in different variants by design: the twins run without them (the
    # assignment itself is tested in test_variants.py).
    spec = dataclasses.replace(spec, steps=tuple(dataclasses.replace(s, variants=(), ab_test=None) for s in spec.steps))
    # The holdout draws its bucket from a hash of the customer's own id too, so twins would be held
    # out differently by design: none held out (the holdout is tested per journey in tests/journeys/).
    spec = dataclasses.replace(spec, holdout_percent=0)
    with RecordingSMTPServer() as server:
        for start, end in RUNS[journey]:
            run_interval(engine, spec, start, end, lambda _: EmailChannel("127.0.0.1", server.port))
            if journey == "behaviour_discount" and end == REDEEM_AFTER:
                redeem(engine, planted, text_ids)
        emails = [what_it_says(m.data) for m in server.messages]
    outcome = read_outcome(engine, journey)
    codes = {row[2]: "<code>" for row in outcome.pop("codes")}

    def body(text: str) -> str:  # unsubscribe tokens and coupon codes are random per shop
        text = untrack(text)  # tracked links name message ids
        for code, placeholder in codes.items():
            text = text.replace(code, placeholder)
        return TOKEN.sub("<token>", text)

    outcome["emails"] = Counter((to, step, subject, body(text)) for to, step, subject, text in emails)
    return outcome


def what_it_says(data: bytes) -> tuple[str, str, str, str]:
    """(To, X-Lifecycle-Step, Subject, text/plain body) of a received email. Parsed with the email
    package's compat32 policy: the default policy's header objects cost more than the replays' sends
    (thousands of emails per module), and both twins' emails are read the same way."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    (plain,) = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    text = plain.get_payload(decode=True).decode(plain.get_content_charset("ascii"), errors="replace")
    subject = str(email.header.make_header(email.header.decode_header(message["Subject"])))
    return message["To"], message["X-Lifecycle-Step"], subject, text


def read_outcome(engine: sa.Engine, journey: str) -> dict[str, Counter]:
    queries = {
        "enrollments": "SELECT customer_id, entered_at, status, exit_reason, holdout FROM lifecycle.enrollments "
                       "WHERE journey = :j",
        "messages": "SELECT customer_id, step, channel, status, reason, due_at FROM lifecycle.messages "
                    "WHERE journey = :j",
        "conversions": "SELECT customer_id, condition, order_id, revenue, converted_at FROM lifecycle.conversions "
                       "WHERE journey = :j",
        "coupons": "SELECT customer_id, step, product_id, percent_off, valid_from, valid_until FROM lifecycle.coupons "
                   "WHERE journey = :j",
        "codes": "SELECT customer_id, step, code FROM lifecycle.coupons WHERE journey = :j",
        "suppressions": "SELECT customer_id, channel, reason FROM lifecycle.suppressions WHERE source = :j",
    }
    with engine.connect() as conn:
        return {name: Counter(tuple(r) for r in conn.execute(sa.text(sql), {"j": journey})) for name, sql in queries.items()}


def in_text_forms(outcome: dict[str, Counter]) -> dict[str, Counter]:
    """The integer shop's outcome with its ids written as the text shop writes them."""
    customer = lambda c: as_text("customer", c)  # noqa: E731
    return {
        "enrollments": Counter({(customer(c), *rest): n for (c, *rest), n in outcome["enrollments"].items()}),
        "messages": Counter({(customer(c), *rest): n for (c, *rest), n in outcome["messages"].items()}),
        "conversions": Counter({(customer(c), cond, as_text("order", o), rev, at): n
                                for (c, cond, o, rev, at), n in outcome["conversions"].items()}),
        "coupons": Counter({(customer(c), step, as_text("product", p), *rest): n
                            for (c, step, p, *rest), n in outcome["coupons"].items()}),
        "suppressions": Counter({(customer(c), *rest): n for (c, *rest), n in outcome["suppressions"].items()}),
        "emails": Counter({(to, step, subject, ids_in_links(body)): n
                           for (to, step, subject, body), n in outcome["emails"].items()}),
    }


def ids_in_links(body: str) -> str:
    """Ids an email shows (`order #254`) or links to (the cart's page, the order's, a review
    form), in their text forms; in links percent-encoded ('#' is '%23')."""
    def url(kind: str, value: str) -> str:
        return quote(as_text(kind, value), safe="")

    body = re.sub(r"/cart/(\d+)", lambda m: "/cart/" + url("cart", m[1]), body)
    body = re.sub(r"/account/orders/(\d+)", lambda m: "/account/orders/" + url("order", m[1]), body)
    body = re.sub(r"/review/(\d+)/(\d+)", lambda m: f"/review/{url('order', m[1])}/{url('product', m[2])}", body)
    return re.sub(r"order #(\d+)", lambda m: "order #" + as_text("order", m[1]), body)


@pytest.fixture(scope="module")
def outcomes(twin_shops):
    """journey -> (integer shop's outcome in text forms, text shop's outcome)."""
    int_shop, text_shop, planted = twin_shops
    return {
        journey: (in_text_forms(run_journey(int_shop, journey, planted, text_ids=False)),
                  run_journey(text_shop, journey, planted, text_ids=True))
        for journey in RUNS
    }


# ----------------------------------------------------------------------------- the tests


@pytest.mark.slow  # the twin shops' journey replays
def test_the_text_shop_really_has_text_ids(twin_shops):
    int_shop, text_shop, _ = twin_shops
    for table, columns in ID_COLUMNS.items():
        for column in columns:
            assert id_type(int_shop, f"shop.{table}", column) == "bigint"
            assert id_type(text_shop, f"shop.{table}", column) == "text", (table, column)


@pytest.mark.slow  # the twin shops' journey replays
@pytest.mark.parametrize("journey", list(RUNS))
def test_a_journey_on_text_ids_does_what_it_does_on_integer_ids(outcomes, journey):
    expected, actual = outcomes[journey]
    for what in ("enrollments", "messages", "conversions", "coupons", "suppressions", "emails"):
        missing, extra = expected[what] - actual[what], actual[what] - expected[what]
        assert not missing and not extra, (
            f"{journey} {what}: only on the integer shop {sorted(missing, key=str)[:3]!s:.1500}, "
            f"only on the text shop {sorted(extra, key=str)[:3]!s:.1500}")
    assert expected["emails"], f"{journey} sent nothing: the comparison would prove nothing"


@pytest.mark.slow  # the twin shops' journey replays
def test_the_text_shop_stores_its_own_ids(outcomes):
    """The lifecycle rows hold the shop's text ids, not numbers."""
    _, text = outcomes["win_back"]
    assert all(c.startswith("C-") for c, *_ in text["enrollments"])
    conversions = [row for _, actual in outcomes.values() for row in actual["conversions"]]
    assert conversions and all(o is None or o.startswith("#") for _, _, o, _, _ in conversions)
    assert any(o for _, _, o, _, _ in conversions), "no conversion with an order id: nothing compared"
    suppressed = outcomes["win_back"][1]["suppressions"]
    assert suppressed and all(c.startswith("C-") for c, *_ in suppressed)


@pytest.mark.slow  # the twin shops' journey replays
def test_a_product_code_is_issued_and_redeemed_with_text_product_ids(outcomes, twin_shops):
    _, text = outcomes["behaviour_discount"]
    assert text["coupons"] and all(p.startswith("sku-") for _, _, p, *_ in text["coupons"])
    redeemed = [row for row in text["conversions"] if row[1] == "behaviour_discount_redeemed"]
    assert [o for _, _, o, _, _ in redeemed] == [as_text("order", REDEEM_ORDER)]


@pytest.mark.slow  # the twin shops' journey replays
def test_picks_name_text_product_ids(outcomes, twin_shops):
    _, text_shop, _ = twin_shops
    with text_shop.connect() as conn:
        picks = conn.execute(sa.text(
            "SELECT p ->> 'product_id' FROM lifecycle.enrollments e, jsonb_array_elements(e.context -> 'products') p "
            "WHERE e.journey = 'product_recommendations'")).scalars().all()
        result = conn.execute(sa.text(
            "SELECT pg_get_function_result('lifecycle.recommend_for(text[], timestamptz, integer, integer, integer, integer, integer)'"
            "::regprocedure)")).scalar_one()
    assert picks and all(p.startswith("sku-") for p in picks)
    assert "customer_id text, product_id text" in result


# ----------------------------------------------------------------------------- an existing database


def test_an_integer_database_with_rows_migrates_to_text_ids(scratch_engine, tmp_path):
    """A warehouse migrated before 012 keeps its rows: ids become text ('42'), keys still hold,
    and the recommender keeps the integer shop's types."""
    before = tmp_path / "before_012"
    before.mkdir()
    for path in (SQL_DIR / "lifecycle").iterdir():
        if path.name == "contacts.sql":  # the views as they were, without the recommender call
            (before / path.name).write_text(path.read_text().split("\n-- The recommender")[0])
        elif re.match(r"^\d{3}_", path.name) and path.name < "012":
            shutil.copy(path, before / path.name)
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine, before)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    with scratch_engine.begin() as conn:
        assert id_type(scratch_engine, "lifecycle.enrollments", "customer_id") == "bigint"
        enrollment = conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
            "enrolled_run_id) VALUES ('win_back', '42', 42, :t, :t, 'r1') RETURNING enrollment_id"), {"t": at}).scalar()
        conn.execute(sa.text(
            "INSERT INTO lifecycle.messages (idempotency_key, journey, enrollment_id, customer_id, step, channel, "
            "status, due_at, planned_for, planned_run_id) VALUES ('k1', 'win_back', :e, 42, 's', 'email', 'sent', "
            ":t, :t, 'r1')"), {"e": enrollment, "t": at})
        conn.execute(sa.text(
            "INSERT INTO lifecycle.conversions (enrollment_id, journey, customer_id, condition, order_id, revenue, "
            "converted_at) VALUES (:e, 'win_back', 42, 'purchased_since_entry', '1001', 12.50, :t)"),
            {"e": enrollment, "t": at})
        conn.execute(sa.text(
            "INSERT INTO lifecycle.coupons (code, journey, enrollment_id, step, customer_id, percent_off, valid_from, "
            "valid_until, product_id) VALUES ('WB-1', 'win_back', :e, 's', 42, 15, :t, :t, 7)"),
            {"e": enrollment, "t": at})
        conn.execute(sa.text("INSERT INTO lifecycle.suppressions (customer_id, channel, reason) "
                             "VALUES (42, 'email', 'unsubscribe')"))
        conn.execute(sa.text("INSERT INTO lifecycle.audience_members (audience_id, journey, customer_id, email_sha256) "
                             "VALUES ('a1', 'win_back', 42, repeat('a', 64))"))
        conn.execute(sa.text("INSERT INTO lifecycle.preference_choices (customer_id, channel, choice, source) "
                             "VALUES (42, 'email', 'stay', 'preferences_page')"))

    assert "012_text_ids" in schema.migrate(scratch_engine)

    with scratch_engine.begin() as conn:
        for table, column in (("enrollments", "customer_id"), ("messages", "customer_id"),
                              ("conversions", "customer_id"), ("suppressions", "customer_id"),
                              ("coupons", "customer_id"), ("coupons", "product_id"),
                              ("audience_members", "customer_id"), ("preference_choices", "customer_id")):
            assert id_type(scratch_engine, f"lifecycle.{table}", column) == "text", (table, column)
            assert conn.execute(sa.text(f"SELECT array_agg({column}) FROM lifecycle.{table}")).scalar_one() == [
                "7" if column == "product_id" else "42"]
        # the keys still hold on the text columns
        again = conn.execute(sa.text("INSERT INTO lifecycle.suppressions (customer_id, channel, reason) "
                                     "VALUES ('42', 'email', 'unsubscribe') ON CONFLICT (customer_id, channel) "
                                     "WHERE lifted_at IS NULL DO NOTHING")).rowcount
        assert again == 0
        assert conn.execute(sa.text("SELECT pg_get_function_result('lifecycle.recommend_for(bigint[], timestamptz, "
                                    "integer, integer, integer, integer, integer)'::regprocedure)")).scalar_one().startswith(
            "TABLE(customer_id bigint, product_id bigint")


# ----------------------------------------------------------------------------- tokens


def test_url_escape_keeps_an_id_in_the_path(scratch_engine):
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine)
    with scratch_engine.connect() as conn:
        escaped = conn.execute(sa.text(
            "SELECT lifecycle.url_escape(v) FROM unnest(CAST(:v AS text[])) WITH ORDINALITY AS t(v, n) ORDER BY n"),
            {"v": ["#1001", "1001", "a/b c", "3f2a-9c_1.e~", "é"]}).scalars().all()
    assert escaped == [quote(v, safe="-_.~") for v in ["#1001", "1001", "a/b c", "3f2a-9c_1.e~", "é"]]


@pytest.mark.parametrize("customer_id", ["C-0000042", "#1001", "3f2a9c1e-0b7d-4c55-9e1a-2b9f0c6d7e81", "shop:7", "42"])
def test_unsubscribe_tokens_carry_text_ids(customer_id):
    assert verify_unsubscribe_token(unsubscribe_token(customer_id, "email")) == (customer_id, "email")
