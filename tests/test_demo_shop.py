"""The synthetic shop: deterministic, internally consistent, and every planted case as described."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email

from lifecycle.schema import create_shop_schema
from lifecycle_demo.demo_shop import PLANTED_EMAIL_DOMAIN, ShopNotEmptyError, generate, planted_cases

# Not midnight and with microseconds, so planted times must be exact offsets of the anchor itself.
A = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)
WINDOW = (A - 5 * D, A)  # what the demo simulates
TABLES = ("products", "product_links", "customers", "consents", "push_subscriptions", "orders", "order_items",
          "carts", "cart_items", "page_views", "reviews", "referrals", "engagement_events")


def rows(conn, sql: str, **params) -> list:
    return conn.execute(sa.text(sql), params).all()


def scalar(conn, sql: str, **params):
    return conn.execute(sa.text(sql), params).scalar()


def rows_of(conn, sql: str, **params) -> list:
    return [row[0] for row in rows(conn, sql, **params)]


@pytest.fixture(scope="module")
def private_database(embedded_server_url):
    """Create databases on the embedded server for this module's read-only tests to share.

    Generating is the slow part, so each shop is generated once per module.
    """
    admin = sa.create_engine(embedded_server_url, isolation_level="AUTOCOMMIT")
    created = []

    def create(name: str) -> sa.Engine:
        name = f"{name}_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(sa.create_engine(sa.make_url(embedded_server_url).set(database=name)))
        return created[-1]

    yield create
    for engine in created:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{engine.url.database}" WITH (FORCE)')
    admin.dispose()


def table_digests(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {t: scalar(conn, f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM shop.{t} t")
                for t in TABLES}


def test_same_anchor_seed_and_size_give_identical_tables(scratch_engine):
    generate(scratch_engine, A, customers=600, seed=11)
    first = table_digests(scratch_engine)
    with scratch_engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA shop CASCADE")
    generate(scratch_engine, A, customers=600, seed=11)
    assert table_digests(scratch_engine) == first

    with scratch_engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA shop CASCADE")
    generate(scratch_engine, A, customers=600, seed=12)
    other = table_digests(scratch_engine)
    assert other["products"] == first["products"]  # the catalogue is fixed
    assert other["customers"] != first["customers"]


def test_generating_into_a_non_empty_shop_fails_clearly_and_changes_nothing(scratch_engine):
    generate(scratch_engine, A, customers=500)
    before = table_digests(scratch_engine)
    with pytest.raises(ShopNotEmptyError, match="already has data"):
        generate(scratch_engine, A, customers=500)
    assert table_digests(scratch_engine) == before


def all_rows(engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        return {t: rows_of(conn, f"SELECT t::text FROM shop.{t} t ORDER BY 1") for t in TABLES}


def keys_and_indexes(engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {tuple(r) for r in rows(conn, """
            SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
             WHERE connamespace = 'shop'::regnamespace AND contype IN ('p', 'f', 'u')
            UNION ALL SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'shop'""")}


def test_the_shop_is_the_same_whatever_the_number_of_workers(private_database):
    """Blocks of 250 customers (1,000 in 4 blocks): simulated in one process, or by two worker
    processes that COPY over connections of their own, row for row the same shop."""
    one, two = private_database("demo_shop_1_worker"), private_database("demo_shop_2_workers")
    assert generate(one, A, customers=1000, seed=5, workers=1, block_size=250) == generate(
        two, A, customers=1000, seed=5, workers=2, block_size=250)
    first, second = all_rows(one), all_rows(two)
    assert {t: len(r) for t, r in first.items()} == {t: len(r) for t, r in second.items()}
    assert len(first["customers"]) == 1000 and len(first["page_views"]) > 5000
    assert first == second

    # Each block numbers its rows from 1, then shifts them past the blocks before it: ids stay dense.
    with two.connect() as conn:
        for table, column in (("orders", "order_id"), ("carts", "cart_id"), ("page_views", "view_id"),
                              ("reviews", "review_id"), ("push_subscriptions", "subscription_id"),
                              ("customers", "customer_id")):
            assert rows(conn, f"SELECT min({column}), max({column}), count(*) FROM shop.{table}")[0][:2] == (
                1, scalar(conn, f"SELECT count(*) FROM shop.{table}") + (  # just_because skips customer ids
                    scalar(conn, "SELECT max(customer_id) - count(*) FROM shop.customers") if table == "customers" else 0)
            ), table
        # Keys and indexes dropped for the load are all back, as schema.sql made them, and analysed.
        assert scalar(conn, "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'shop' AND last_analyze IS NULL"
                      " AND relname <> 'engagement_events'") == 0
    empty = private_database("demo_shop_schema_only")
    create_shop_schema(empty)
    assert keys_and_indexes(two) == keys_and_indexes(one) == keys_and_indexes(empty)


def test_a_shop_within_one_block_is_what_the_sequential_generator_made(private_database):
    """Block 0 continues the planted cases' random stream: a shop that fits in it does not depend
    on the block size (the small shops the tests plant their cases on stay as they were)."""
    small, split = private_database("demo_shop_one_block"), private_database("demo_shop_split")
    generate(small, A, customers=400, seed=3)
    generate(split, A, customers=800, seed=3, block_size=400, workers=2)
    with small.connect() as conn:
        customers = rows_of(conn, "SELECT c::text FROM shop.customers c ORDER BY customer_id")
        orders = rows_of(conn, "SELECT o::text FROM shop.orders o ORDER BY order_id")
    with split.connect() as conn:
        assert rows_of(conn, "SELECT c::text FROM shop.customers c ORDER BY customer_id LIMIT 400") == customers
        assert rows_of(conn, "SELECT o::text FROM shop.orders o ORDER BY order_id LIMIT :n", n=len(orders)) == orders


def test_anchor_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        generate(None, datetime(2026, 3, 1))


# Each query counts rows that break a rule; all must be zero.
CONSISTENCY_VIOLATIONS = {
    "order dates out of sequence": """SELECT count(*) FROM shop.orders
        WHERE shipped_at < ordered_at OR delivered_at < shipped_at OR (delivered_at IS NOT NULL AND shipped_at IS NULL)""",
    "status disagrees with dates": """SELECT count(*) FROM shop.orders WHERE NOT CASE status
        WHEN 'delivered' THEN delivered_at IS NOT NULL
        WHEN 'shipped' THEN shipped_at IS NOT NULL AND delivered_at IS NULL
        WHEN 'placed' THEN shipped_at IS NULL AND delivered_at IS NULL
        WHEN 'cancelled' THEN shipped_at IS NULL AND delivered_at IS NULL ELSE false END""",
    "delivery outside 2-8 days": """SELECT count(*) FROM shop.orders
        WHERE delivered_at IS NOT NULL AND delivered_at - ordered_at NOT BETWEEN interval '2 days' AND interval '8 days'""",
    "total is not the sum of items": """SELECT count(*) FROM shop.orders o WHERE total <> (
        SELECT sum(quantity * unit_price) FROM shop.order_items i WHERE i.order_id = o.order_id)""",
    "order without items": """SELECT count(*) FROM shop.orders o
        WHERE NOT EXISTS (SELECT 1 FROM shop.order_items i WHERE i.order_id = o.order_id)""",
    "unit price is not the product price": """SELECT count(*) FROM (
        SELECT product_id, unit_price FROM shop.order_items UNION ALL SELECT product_id, unit_price FROM shop.cart_items
        ) i JOIN shop.products p USING (product_id) WHERE i.unit_price <> p.price""",
    "review before delivery or of an undelivered order": """SELECT count(*) FROM shop.reviews r
        JOIN shop.orders o USING (order_id) WHERE o.delivered_at IS NULL OR r.created_at <= o.delivered_at""",
    "review of a product not in the order or by someone else": """SELECT count(*) FROM shop.reviews r
        JOIN shop.orders o USING (order_id) WHERE r.customer_id <> o.customer_id OR NOT EXISTS (
        SELECT 1 FROM shop.order_items i WHERE i.order_id = r.order_id AND i.product_id = r.product_id)""",
    "event before the customer existed": """SELECT count(*) FROM shop.customers c WHERE
           EXISTS (SELECT 1 FROM shop.orders o WHERE o.customer_id = c.customer_id AND o.ordered_at < c.created_at)
        OR EXISTS (SELECT 1 FROM shop.carts k WHERE k.customer_id = c.customer_id AND k.created_at < c.created_at)
        OR EXISTS (SELECT 1 FROM shop.page_views v WHERE v.customer_id = c.customer_id AND v.viewed_at < c.created_at)
        OR EXISTS (SELECT 1 FROM shop.consents s WHERE s.customer_id = c.customer_id AND s.updated_at < c.created_at)""",
    "cart updated before created": "SELECT count(*) FROM shop.carts WHERE updated_at < created_at",
    "double opt-in after the consent changed to opted_in": """SELECT count(*) FROM shop.consents
        WHERE status = 'opted_in' AND double_opt_in_at > updated_at""",
    "unknown timezone": """SELECT count(*) FROM shop.customers
        WHERE timezone NOT IN (SELECT name FROM pg_timezone_names)""",
    "locale of another country": "SELECT count(*) FROM shop.customers WHERE locale NOT LIKE '%\\_' || country",
    "duplicate email": "SELECT count(*) - count(DISTINCT lower(email)) FROM shop.customers",
    "referral conversion not by the referred customer after the referral": """SELECT count(*) FROM shop.referrals r
        WHERE converted_order_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM shop.orders o
        JOIN shop.customers c USING (customer_id)
        WHERE o.order_id = r.converted_order_id AND c.email = r.referred_email AND o.ordered_at > r.created_at)""",
    "consumable without pack size, or other product with one": """SELECT count(*) FROM shop.products
        WHERE (product_type = 'consumable') <> (coalesce(pack_units, 0) > 0 AND coalesce(units_per_day, 0) > 0)
           OR (pack_units IS NULL) <> (units_per_day IS NULL)""",
    "image url not derived from the sku": """SELECT count(*) FROM shop.products
        WHERE image_url <> 'https://cdn.shop.example.com/img/' || sku || '.jpg'""",
    "upsell not to a higher tier of the same category": """SELECT count(*) FROM shop.product_links l
        JOIN shop.products p USING (product_id) JOIN shop.products q ON q.product_id = l.linked_product_id
        WHERE l.kind = 'upsell' AND (q.category <> p.category OR q.tier <= p.tier)""",
    "cross-sell within the same category": """SELECT count(*) FROM shop.product_links l
        JOIN shop.products p USING (product_id) JOIN shop.products q ON q.product_id = l.linked_product_id
        WHERE l.kind = 'cross_sell' AND q.category = p.category""",
}

# Each query must find at least one row: the situations the journeys need exist.
REQUIRED_SITUATIONS = {
    "lapsed customers (last order 90+ days old)": """SELECT count(*) FROM (SELECT customer_id FROM shop.orders
        GROUP BY 1 HAVING max(ordered_at) <= :a - interval '90 days') x""",
    "customers entering win-back in the window": """SELECT count(*) FROM (SELECT customer_id FROM shop.orders
        GROUP BY 1 HAVING max(ordered_at) + interval '90 days' BETWEEN :a - interval '5 days' AND :a) x""",
    "orders not yet delivered": "SELECT count(*) FROM shop.orders WHERE status IN ('placed', 'shipped')",
    "cancelled orders": "SELECT count(*) FROM shop.orders WHERE status = 'cancelled'",
    "orders with a coupon": "SELECT count(*) FROM shop.orders WHERE coupon_code IS NOT NULL",
    "empty carts": """SELECT count(*) FROM shop.carts c
        WHERE NOT EXISTS (SELECT 1 FROM shop.cart_items i WHERE i.cart_id = c.cart_id)""",
    "carts bought within 3 hours": """SELECT count(*) FROM shop.carts c WHERE EXISTS (SELECT 1 FROM shop.orders o
        WHERE o.customer_id = c.customer_id AND o.ordered_at BETWEEN c.updated_at AND c.updated_at + interval '3 hours')""",
    "abandoned carts in the window": """SELECT count(*) FROM shop.carts c WHERE c.updated_at >= :a - interval '5 days'
        AND EXISTS (SELECT 1 FROM shop.cart_items i WHERE i.cart_id = c.cart_id) AND NOT EXISTS (
        SELECT 1 FROM shop.orders o WHERE o.customer_id = c.customer_id AND o.ordered_at > c.updated_at)""",
    "anonymous page views": "SELECT count(*) FROM shop.page_views WHERE customer_id IS NULL AND anonymous_id IS NOT NULL",
    "1-, 3- and 5-star reviews": "SELECT (count(DISTINCT rating) = 3)::int FROM shop.reviews WHERE rating IN (1, 3, 5)",
    "opted-out email consents": "SELECT count(*) FROM shop.consents WHERE channel = 'email' AND status = 'opted_out'",
    "consents on every channel": "SELECT (count(DISTINCT channel) = 4)::int FROM shop.consents",
    "revoked push subscriptions": "SELECT count(*) FROM shop.push_subscriptions WHERE revoked_at IS NOT NULL",
    "a 29 February birthday": "SELECT count(*) FROM shop.customers WHERE to_char(birthday, 'MM-DD') = '02-29'",
    "converted referrals": "SELECT count(*) FROM shop.referrals WHERE converted_order_id IS NOT NULL",
    "replenishment buyers (same consumable 3+ times)": """SELECT count(*) FROM (SELECT o.customer_id
        FROM shop.order_items i JOIN shop.orders o USING (order_id) JOIN shop.products p USING (product_id)
        WHERE p.product_type = 'consumable' GROUP BY o.customer_id, i.product_id HAVING count(*) >= 3) x""",
}


@pytest.fixture(scope="module")
def shop_3000(private_database):
    engine = private_database("demo_shop_3000")
    planted = generate(engine, A, customers=3000)
    with engine.connect() as conn:
        yield conn, planted


def test_shop_is_internally_consistent(shop_3000):
    conn, _ = shop_3000
    violations = {rule: n for rule, sql in CONSISTENCY_VIOLATIONS.items() if (n := scalar(conn, sql))}
    assert violations == {}


def test_shop_has_the_situations_the_journeys_need(shop_3000):
    conn, _ = shop_3000
    missing = [name for name, sql in REQUIRED_SITUATIONS.items() if scalar(conn, sql, a=A) < 1]
    assert missing == []


def test_every_time_is_before_the_anchor_and_within_its_window(shop_3000):
    conn, _ = shop_3000
    columns = rows(conn, """SELECT table_name, column_name FROM information_schema.columns
                            WHERE table_schema = 'shop' AND data_type LIKE 'timestamp%'""")
    latest = {f"{t}.{c}": scalar(conn, f"SELECT max({c}) FROM shop.{t}") for t, c in columns}
    assert {column: at for column, at in latest.items() if at is not None and at >= A} == {}
    assert scalar(conn, "SELECT max(birthday) FROM shop.customers") < A.date()
    assert scalar(conn, "SELECT min(created_at) FROM shop.customers") >= A - 401 * D
    assert scalar(conn, "SELECT min(ordered_at) FROM shop.orders") >= A - 241 * D
    assert scalar(conn, "SELECT min(viewed_at) FROM shop.page_views") >= A - 61 * D
    assert scalar(conn, "SELECT min(updated_at) FROM shop.carts") >= A - 61 * D


def test_customers_catalogue_and_volumes_look_like_a_shop(shop_3000):
    conn, _ = shop_3000
    count = {t: scalar(conn, f"SELECT count(*) FROM shop.{t}") for t in TABLES}
    assert count["customers"] == 3000
    assert 40 <= count["products"] <= 80
    assert count["orders"] > 3000 and count["page_views"] > 10 * 3000 / 2 and count["reviews"] > 300
    assert count["engagement_events"] == 0
    assert set(rows_of(conn, "SELECT DISTINCT country FROM shop.customers")) == {
        "DE", "FR", "GB", "US", "BR", "NL", "ES", "JP", "AU"}
    assert set(rows_of(conn, "SELECT DISTINCT product_type FROM shop.products")) == {"soft", "hard", "consumable"}
    assert set(rows_of(conn, "SELECT DISTINCT tier FROM shop.products")) == {1, 2, 3}
    assert 0.75 < scalar(conn, "SELECT count(*) FROM shop.consents WHERE channel = 'email'") / 3000 < 0.95
    assert scalar(conn, "SELECT avg(rating) FROM shop.reviews") > 3.8


def test_addresses_are_valid_and_reserved(shop_3000):
    conn, _ = shop_3000
    emails = rows_of(conn, "SELECT email FROM shop.customers WHERE email <> 'not-an-email'")
    invalid = []
    for email in emails:
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError:
            invalid.append(email)
    assert invalid == []
    assert {e.rsplit("@", 1)[1] for e in emails} == {"example.com", "example.org", "example.net"}

    phones = rows_of(conn, "SELECT phone FROM shop.customers WHERE phone IS NOT NULL")
    assert 0.7 < len(phones) / 3000 < 0.95
    assert all(re.fullmatch(r"\+\d{1,3} ?\d{6,12}", p) for p in phones)
    assert sum(bool(re.fullmatch(r"\+[1-9]\d{7,14}", p)) for p in phones) / len(phones) > 0.9


def test_push_subscriptions_carry_real_p256_keys(shop_3000):
    conn, _ = shop_3000
    for p256dh, auth in rows(conn, "SELECT p256dh, auth FROM shop.push_subscriptions LIMIT 50"):
        key = base64.urlsafe_b64decode(p256dh + "==")
        assert len(key) == 65 and key[0] == 4  # uncompressed EC point
        assert len(base64.urlsafe_b64decode(auth + "==")) == 16


# ----------------------------------------------------------------------------- planted cases

CASES = {
    "cart_recent", "cart_bought_after_first_reminder", "cart_full_sequence", "cart_consent_withdrawn",
    "cart_no_consent_row", "cart_empty", "cart_invalid_email", "cart_ordered_before", "cart_updated_after_reminder",
    "winback_enters",
    "winback_converts", "winback_full_sequence", "winback_recent_buyer", "review_soft", "review_hard",
    "review_positive", "review_negative", "review_neutral", "review_reminder", "review_before_request",
    "review_undelivered",
}


def cart_facts(conn, cart_id: int) -> dict:
    return rows(conn, """
        SELECT c.updated_at,
               (SELECT count(*) FROM shop.cart_items i WHERE i.cart_id = c.cart_id) AS items,
               (SELECT min(o.ordered_at) FROM shop.orders o
                 WHERE o.customer_id = c.customer_id AND o.ordered_at > c.updated_at) AS next_order_at,
               (SELECT count(*) FROM shop.orders o
                 WHERE o.customer_id = c.customer_id AND o.ordered_at > c.updated_at) AS later_orders
        FROM shop.carts c WHERE c.cart_id = :cart_id""", cart_id=cart_id)[0]._asdict()


def email_consent(conn, customer_id: int):
    return rows(conn, """SELECT status, double_opt_in_at, updated_at FROM shop.consents
                         WHERE customer_id = :c AND channel = 'email'""", c=customer_id)


def order_facts(conn, order_id: int) -> dict:
    return rows(conn, """
        SELECT o.status, o.ordered_at, o.shipped_at, o.delivered_at,
               array(SELECT DISTINCT p.product_type FROM shop.order_items i JOIN shop.products p USING (product_id)
                     WHERE i.order_id = o.order_id ORDER BY 1) AS types
        FROM shop.orders o WHERE o.order_id = :o""", o=order_id)[0]._asdict()


@pytest.fixture(scope="module")
def planted_shop(private_database):
    engine = private_database("demo_shop_500")
    planted = generate(engine, A, customers=500)  # the smallest size that must hold every case
    with engine.connect() as conn:
        yield conn, planted


def test_planted_cases_are_listed_with_their_ids(planted_shop):
    _, planted = planted_shop
    assert CASES <= set(planted)
    assert all(case.description and case.customer_id for case in planted.values())
    assert len(planted.customer_ids) == len(planted)  # one customer per case
    assert planted_cases() == planted  # readers of a shop generated elsewhere get the same ids


def test_planted_customers_are_untouched_by_random_data(planted_shop):
    conn, planted = planted_shop
    # The built-in cases (the journeys' own modules in lifecycle_demo/cases/ plant richer customers and
    # are checked by their journey tests).
    for name, case in planted.items():
        if name not in CASES:
            continue
        c = case.customer_id
        email = scalar(conn, "SELECT email FROM shop.customers WHERE customer_id = :c", c=c)
        assert email == case.email == (
            "not-an-email" if name == "cart_invalid_email" else f"planted.{name}@{PLANTED_EMAIL_DOMAIN}")
        assert rows_of(conn, "SELECT cart_id FROM shop.carts WHERE customer_id = :c", c=c) == (
            [case.cart_id] if case.cart_id else []), name
        assert rows_of(conn, "SELECT order_id FROM shop.orders WHERE customer_id = :c ORDER BY ordered_at", c=c) == list(
            case.order_ids), name
        assert rows_of(conn, "SELECT channel FROM shop.consents WHERE customer_id = :c", c=c) in ([], ["email"]), name
        for table, column in (("page_views", "customer_id"), ("push_subscriptions", "customer_id"),
                              ("referrals", "referrer_customer_id")):
            assert scalar(conn, f"SELECT count(*) FROM shop.{table} WHERE {column} = :c", c=c) == 0, (name, table)
        if name not in ("cart_consent_withdrawn", "cart_no_consent_row"):
            [(status, double_opt_in_at, _)] = email_consent(conn, c)
            assert status == "opted_in" and double_opt_in_at is not None, name


def test_planted_cart_cases(planted_shop):
    conn, planted = planted_shop
    facts = {name: cart_facts(conn, planted[name].cart_id) for name in CASES if name.startswith("cart_")}

    assert facts["cart_recent"] == {"updated_at": A - 2 * H, "items": 2, "next_order_at": None, "later_orders": 0}

    bought = facts["cart_bought_after_first_reminder"]
    assert bought["updated_at"] == A - 3 * D and bought["items"] >= 1
    assert bought["next_order_at"] == A - 3 * D + 5 * H and bought["later_orders"] == 1
    case = planted["cart_bought_after_first_reminder"]
    cart_products = rows(conn, "SELECT product_id, quantity FROM shop.cart_items WHERE cart_id = :k ORDER BY 1",
                         k=case.cart_id)
    assert rows(conn, "SELECT product_id, quantity FROM shop.order_items WHERE order_id = :o ORDER BY 1",
                o=case.order_ids[0]) == cart_products

    for name in ("cart_full_sequence", "cart_consent_withdrawn"):
        updated = facts[name]["updated_at"]
        assert all(WINDOW[0] <= updated + step < WINDOW[1] for step in (H, 24 * H, 48 * H)), name
        assert facts[name]["items"] >= 1 and facts[name]["later_orders"] == 0, name
    assert facts["cart_consent_withdrawn"]["updated_at"] == facts["cart_full_sequence"]["updated_at"]
    [(status, _, withdrawn_at)] = email_consent(conn, planted["cart_consent_withdrawn"].customer_id)
    assert status == "opted_out" and withdrawn_at == A - D

    assert facts["cart_no_consent_row"] == {"updated_at": A - 30 * H, "items": 1, "next_order_at": None, "later_orders": 0}
    assert scalar(conn, "SELECT count(*) FROM shop.consents WHERE customer_id = :c",
                  c=planted["cart_no_consent_row"].customer_id) == 0

    assert facts["cart_empty"]["updated_at"] == A - 3 * H and facts["cart_empty"]["items"] == 0

    assert facts["cart_invalid_email"]["updated_at"] == A - 20 * H
    assert facts["cart_invalid_email"]["items"] >= 1 and facts["cart_invalid_email"]["later_orders"] == 0

    assert facts["cart_ordered_before"]["updated_at"] == A - 10 * H
    assert facts["cart_ordered_before"]["later_orders"] == 0
    assert order_facts(conn, planted["cart_ordered_before"].order_ids[0])["ordered_at"] == A - 11 * H


def test_planted_winback_cases(planted_shop):
    conn, planted = planted_shop

    def order_times(name: str) -> list[datetime]:
        return [order_facts(conn, o)["ordered_at"] for o in planted[name].order_ids]

    assert order_times("winback_enters") == [A - 92 * D]
    assert order_times("winback_converts") == [A - 94 * D, A - D]
    assert order_times("winback_full_sequence") == [A - 115 * D]
    assert order_times("winback_recent_buyer") == [A - 30 * D]
    # The sequence of the full case plays out within 26 days: entry, +7d, +14d, suppression +21d.
    entered = A - 115 * D + 90 * D
    assert all(A - 26 * D <= entered + step < A for step in (0 * D, 7 * D, 14 * D, 21 * D))


@pytest.mark.parametrize(("name", "delivered_days_ago", "hard", "review"), [
    ("review_soft", 13, False, None),
    ("review_hard", 24, True, None),
    ("review_positive", 14, False, (5, 2)),
    ("review_negative", 14, False, (1, 2)),
    ("review_neutral", 14, False, (3, 2)),
    ("review_reminder", 18, False, None),
    ("review_before_request", 12, False, (5, 5)),
])
def test_planted_review_cases(planted_shop, name, delivered_days_ago, hard, review):
    conn, planted = planted_shop
    facts = order_facts(conn, planted[name].order_ids[0])
    assert facts["status"] == "delivered" and facts["delivered_at"] == A - delivered_days_ago * D
    assert ("hard" in facts["types"]) is hard
    reviews = rows(conn, "SELECT rating, created_at FROM shop.reviews WHERE order_id = :o", o=planted[name].order_ids[0])
    if review is None:
        assert reviews == [] and planted[name].review_id is None
    else:
        rating, days_ago = review
        assert [tuple(r) for r in reviews] == [(rating, A - days_ago * D)] and planted[name].review_id
    due = facts["delivered_at"] + (21 * D if hard else 10 * D)
    if name == "review_before_request":
        assert A - review[1] * D < due  # reviewed before anyone would have asked
    else:
        assert WINDOW[0] - 5 * D <= due < WINDOW[1]  # the request (or its reminder) falls in the window


def test_planted_undelivered_order_and_leap_day_birthday(planted_shop):
    conn, planted = planted_shop
    facts = order_facts(conn, planted["review_undelivered"].order_ids[0])
    assert facts["status"] == "shipped" and facts["shipped_at"] is not None and facts["delivered_at"] is None
    birthday = scalar(conn, "SELECT birthday FROM shop.customers WHERE customer_id = :c",
                      c=planted["birthday_leap_day"].customer_id)
    assert birthday == date(1992, 2, 29)
