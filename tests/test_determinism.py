"""Ties (README "Ties"): of two events at the same instant, the one with the smaller id came first,
so every choice a SELECT makes comes out the same whatever plan PostgreSQL picks.

(a) the lint rule (lifecycle.determinism) on small SQL texts and through the spec checks;
(b) every shipped segment and condition file passes it;
(c) on the demo shop with planted ties (two orders of one customer at the same instant, two cart
    lines added at the same instant with same-named products, two views and two reviews at the same
    instant), every journey's SELECT and every condition gives the same rows under different
    planner settings and physical row orders;
(d) the engine: win_back's key is the later of two tied last orders (the larger id), and
    evaluate_exits credits the smaller order id of two tied conversions, every time.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle.conditions import with_enrollments_cte
from lifecycle.config import CONDITIONS_DIR, SEGMENTS_DIR
from lifecycle.determinism import check_sql, mask_comments_and_strings
from lifecycle.exits import evaluate_exits
from lifecycle.ids import typed_enrollments
from lifecycle.run_context import RunContext
from lifecycle.spec import SpecError, load_all, load_spec
from lifecycle.sql import condition_sql, execute_file_sql
from lifecycle.stage import drop_stage, stage_segment, stage_table

OLD_WIN_BACK = """
WITH last_orders AS (
    SELECT DISTINCT ON (o.customer_id)
           o.customer_id, o.order_id AS last_order_id, o.ordered_at AS last_order_at
    FROM shop.orders o
    WHERE o.ordered_at < :as_of
    ORDER BY o.customer_id, o.ordered_at DESC
)
SELECT * FROM last_orders
"""
FIXED_WIN_BACK = OLD_WIN_BACK.replace("o.ordered_at DESC\n", "o.ordered_at DESC, o.order_id DESC\n")


def constructs(sql: str, **kw) -> list[tuple[int, str]]:
    return [(f.line, f.construct) for f in check_sql(sql, **kw)]


# ---------------------------------------------------------------------------- (a) the scanner
def test_flags_the_old_win_back_pick_and_accepts_the_fixed_one():
    findings = check_sql(OLD_WIN_BACK)
    assert [(f.line, f.construct) for f in findings] == [(7, "DISTINCT ON")]
    assert "o.ordered_at DESC" in findings[0].problem and "can tie" in findings[0].problem
    assert check_sql(FIXED_WIN_BACK) == []


def test_comments_and_strings_are_not_sql():
    sql = """
    -- SELECT DISTINCT ON (a) a FROM t ORDER BY a LIMIT 1
    /* outer /* nested: ORDER BY x LIMIT 1 */ still a comment: row_number() OVER () */
    SELECT 'DISTINCT ON (a) ORDER BY b LIMIT 1', E'it\\'s ORDER BY c LIMIT 2', $$ORDER BY d LIMIT 3$$,
           $tag$ row_number() OVER () $tag$
    FROM t
    """
    assert check_sql(sql) == []
    masked = mask_comments_and_strings(sql)
    assert len(masked) == len(sql) and masked.count("\n") == sql.count("\n")
    # an apostrophe in a comment does not open a string that would hide the real pick below it
    assert constructs("-- the customer's last order\nSELECT * FROM t ORDER BY t.at LIMIT 1") == [(2, "ORDER BY ... LIMIT")]


def test_nested_parentheses_and_modifiers():
    ok = """SELECT DISTINCT ON (o.customer_id) *
            FROM shop.orders o
            ORDER BY o.customer_id, coalesce(o.shipped_at, greatest(o.ordered_at, (o.delivered_at))) DESC NULLS LAST,
                     o.order_id::text COLLATE "C" DESC"""
    assert check_sql(ok) == []
    expression_last = "SELECT * FROM t ORDER BY t.order_id, coalesce(t.a, (t.b)) DESC LIMIT 5"
    assert constructs(expression_last) == [(1, "ORDER BY ... LIMIT")]
    assert "an expression" in check_sql(expression_last)[0].problem


def test_window_functions_distinct_on_and_limits():
    sql = """SELECT row_number() OVER (PARTITION BY o.customer_id ORDER BY o.ordered_at) AS a,
       rank() OVER (PARTITION BY o.customer_id ORDER BY o.ordered_at, o.order_id) AS b,
       lag(o.total) OVER w AS c,
       first_value(o.total) OVER (PARTITION BY o.customer_id ORDER BY o.customer_id) AS d,
       row_number() OVER () AS e
FROM shop.orders o
WHERE EXISTS (SELECT 1 FROM shop.reviews r WHERE r.order_id = o.order_id LIMIT 1)
  AND o.total > (SELECT x.total FROM shop.orders x LIMIT 1)
WINDOW w AS (PARTITION BY o.customer_id ORDER BY o.ordered_at ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)"""
    found = check_sql(sql)
    assert [(f.line, f.construct) for f in found] == [
        (1, "row_number()"), (4, "first_value()"), (5, "row_number()"), (8, "LIMIT"),
        (9, "lag()"),  # the line to fix: the named window's ORDER BY
    ]
    assert "group itself" in found[1].problem  # ordering by the partition column breaks no tie
    assert constructs("SELECT DISTINCT ON (c.id) c.* FROM c") == [(1, "DISTINCT ON")]


def test_lists_shown_to_customers_and_row_number_ranks():
    by_name = "SELECT jsonb_agg(p.name ORDER BY p.name) FROM shop.products p"
    assert constructs(by_name) == [(1, "jsonb_agg(... ORDER BY ...)")]
    assert check_sql(by_name.replace("ORDER BY p.name", "ORDER BY p.name, p.product_id")) == []
    assert constructs("SELECT array_agg(p.name) FROM shop.products p") == [(1, "array_agg()")]
    assert check_sql("SELECT array_agg(DISTINCT p.name) FROM shop.products p") == []
    # a rank numbered by a row_number() that itself passes is unique within its group
    ranked = """WITH r AS (SELECT s.*, row_number() OVER (PARTITION BY s.order_id ORDER BY s.score DESC,
                                                     s.product_id) AS rank FROM s)
                SELECT jsonb_agg(r.product_id ORDER BY r.rank) FROM r GROUP BY r.order_id"""
    assert check_sql(ranked) == []
    assert check_sql(ranked.replace("s.product_id)", "s.score)")) != []
    assert check_sql(by_name, unique_columns=["name"]) == []


# ---------------------------------------------------------------------------- the hooks
def test_spec_reports_the_file_and_line_and_honours_unique_columns(tmp_path):
    old = (SEGMENTS_DIR / "win_back.sql").read_text().replace("o.ordered_at DESC, o.order_id DESC", "o.ordered_at DESC")
    path = tmp_path / "win_back.sql"
    path.write_text(old)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    line = next(i for i, text in enumerate(old.splitlines(), 1) if "ORDER BY o.customer_id" in text)
    assert info.value.problems == [info.value.problems[0]] and info.value.problems[0].startswith(
        f"SQL line {line}: DISTINCT ON: ORDER BY ends in 'o.ordered_at DESC'")
    assert str(info.value).startswith("win_back.sql: ")
    path.write_text(old.replace("entry_key: lapse_key", "unique_columns: [ordered_at]\nentry_key: lapse_key"))
    assert load_spec(path).journey == "win_back"
    path.write_text(old.replace("entry_key: lapse_key", "unique_columns: ordered_at\nentry_key: lapse_key"))
    with pytest.raises(SpecError, match="unique_columns: must be a list"):
        load_spec(path)


def test_a_condition_with_a_tie_breaks_the_journeys_that_use_it(tmp_path, capsys):
    conditions = tmp_path / "conditions"
    shutil.copytree(CONDITIONS_DIR, conditions)
    (conditions / "purchased_since_entry.sql").write_text(
        "-- the first order\nSELECT DISTINCT ON (e.enrollment_id) e.enrollment_id, o.order_id\n"
        "FROM enrollments e JOIN shop.orders o ON o.customer_id = e.customer_id\n"
        "ORDER BY e.enrollment_id, o.ordered_at\n")
    with pytest.raises(SpecError) as info:
        load_spec(SEGMENTS_DIR / "win_back.sql", conditions_dir=conditions)
    assert info.value.problems == [
        "exit[0].when: condition purchased_since_entry.sql line 4: DISTINCT ON: ORDER BY ends in 'o.ordered_at', "
        + info.value.problems[0].split("ORDER BY ends in 'o.ordered_at', ", 1)[1]
    ]
    from lifecycle import cli

    monkey = pytest.MonkeyPatch()
    monkey.setattr(cli, "CONDITIONS_DIR", conditions)
    try:
        assert cli.lint([], None) == 1
    finally:
        monkey.undo()
    out = capsys.readouterr().out
    assert "FAIL " + str(conditions / "purchased_since_entry.sql") in out
    n_ok = len(list(CONDITIONS_DIR.glob("*.sql"))) - 1
    assert f"conditions: {n_ok} ok, 1 broken" in out


# ---------------------------------------------------------------------------- (b) the shipped files
def test_every_shipped_segment_and_condition_file_passes():
    specs, errors = load_all()
    assert errors == []
    files = sorted(SEGMENTS_DIR.glob("*.sql")) + sorted(CONDITIONS_DIR.glob("*.sql"))
    assert len(files) >= 37  # 16 segments, 21 conditions
    assert {p.name: [str(f) for f in check_sql(p.read_text())] for p in files} == {p.name: [] for p in files}


# ---------------------------------------------------------------------------- (c) the database
PERIODS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}
ID = 10_000_000  # planted rows' ids start here, above the demo shop's
# Planner settings: hash aggregation and hash joins against sorts, index scans against sequential
# scans, with little and plenty of memory.
SETTINGS = {
    "default": {},
    "sorts": {"work_mem": "64kB", "enable_hashagg": "off", "enable_hashjoin": "off", "enable_indexscan": "off",
              "enable_bitmapscan": "off", "enable_indexonlyscan": "off", "max_parallel_workers_per_gather": "0"},
    "indexes": {"work_mem": "32MB", "enable_seqscan": "off", "enable_sort": "off", "enable_mergejoin": "off",
                "enable_material": "off", "jit": "off"},
}
# Rows planted with the larger id first; the "sorts" variant rewrites them (a no-op UPDATE moves a
# row to the end of its table), so the smaller id comes first on disk there.
MOVED = {"orders": "order_id", "cart_items": "product_id", "page_views": "view_id", "reviews": "review_id",
         "order_items": "product_id"}


@pytest.fixture(scope="module")
def tied_shop(shop_db):
    engine, _planted, anchor = shop_db
    ids = plant_ties(engine, anchor)
    return engine, anchor, ids


def plant_ties(engine, anchor) -> dict:
    """Tied moments in the demo shop; returns the planted ids."""
    a = anchor
    c = {"win_back": ID + 1, "cart": ID + 2, "review": ID + 3, "views": ID + 4, "orders": ID + 5,
         "win_back_2": ID + 6}
    mug, mug2, up, up2, viewed = ID + 1, ID + 2, ID + 3, ID + 4, ID + 5
    rows = {
        "customers": [dict(customer_id=i, email=f"tie{i}@example.com", first_name="Tie", country="DE",
                           timezone="Europe/Berlin", created_at=a - timedelta(days=400)) for i in c.values()],
        "consents": [dict(customer_id=i, channel="email", status="opted_in", double_opt_in_at=a - timedelta(days=399),
                          updated_at=a - timedelta(days=399)) for i in c.values()],
        # two products with the same name (lists order them by name, then id), each with an upgrade
        "products": [dict(product_id=p, sku=f"TIE-{p}", name=name, category="kitchen", price=price,
                          product_type="soft", tier=tier)
                     for p, name, price, tier in ((mug2, "Tied Mug", 12, 1), (mug, "Tied Mug", 12, 1),
                                                  (up, "Tied Mug XL", 20, 2), (up2, "Tied Mug XL", 20, 2),
                                                  (viewed, "Tied Lamp", 40, 1))],
        "product_links": [dict(product_id=mug, linked_product_id=up, kind="upsell"),
                          dict(product_id=mug2, linked_product_id=up2, kind="upsell"),
                          dict(product_id=mug, linked_product_id=viewed, kind="cross_sell"),
                          dict(product_id=mug2, linked_product_id=viewed, kind="cross_sell")],
        "orders": [
            # win_back: the two last orders, 100 days ago, at the same instant (larger id inserted first)
            *[dict(order_id=o, customer_id=c["win_back"], ordered_at=a - timedelta(days=100, hours=-5),
                   status="delivered", total=t, delivered_at=a - timedelta(days=97)) for o, t in
              ((ID + 2, 70), (ID + 1, 50))],
            # the same for a second customer, the smaller id inserted first this time
            *[dict(order_id=o, customer_id=c["win_back_2"], ordered_at=a - timedelta(days=120),
                   status="delivered", total=t, delivered_at=a - timedelta(days=117)) for o, t in
              ((ID + 8, 15), (ID + 9, 25))],
            # ... then two orders at the same instant after the win_back run: the conversion
            *[dict(order_id=o, customer_id=c["win_back"], ordered_at=a + timedelta(days=1, hours=2),
                   status="placed", total=t) for o, t in ((ID + 4, 30), (ID + 3, 20))],
            # review_request: delivered 10.5 days ago, two same-named products
            dict(order_id=ID + 5, customer_id=c["review"], ordered_at=a - timedelta(days=14),
                 status="delivered", total=24, delivered_at=a - timedelta(days=10, hours=12)),
            # two orders of one customer at the same instant two hours ago (notifications, cross-sell)
            *[dict(order_id=o, customer_id=c["orders"], ordered_at=a - timedelta(hours=2), status="placed",
                   total=12) for o in (ID + 7, ID + 6)],
        ],
        "order_items": [
            *[dict(order_id=o, product_id=viewed, quantity=1, unit_price=t) for o, t in
              ((ID + 2, 70), (ID + 1, 50), (ID + 4, 30), (ID + 3, 20))],
            *[dict(order_id=ID + 5, product_id=p, quantity=1, unit_price=12) for p in (mug2, mug)],
            dict(order_id=ID + 7, product_id=mug2, quantity=1, unit_price=12),
            dict(order_id=ID + 6, product_id=mug, quantity=1, unit_price=12),
        ],
        # two reviews of the delivered order at the same instant, after the review_request run
        "reviews": [dict(review_id=r, order_id=ID + 5, product_id=p, customer_id=c["review"], rating=s,
                         created_at=a + timedelta(days=1)) for r, p, s in ((ID + 2, mug2, 5), (ID + 1, mug, 1))],
        # a cart with two lines added in the same second (same-named products, same price)
        "carts": [dict(cart_id=ID + 1, customer_id=c["cart"], created_at=a - timedelta(hours=4),
                       updated_at=a - timedelta(hours=3))],
        "cart_items": [dict(cart_id=ID + 1, product_id=p, quantity=1, unit_price=12, added_at=a - timedelta(hours=3))
                       for p in (mug2, mug)],
        # five views of one product: the 4th and 5th at the same instant (both make it 4 within 7 days)
        "page_views": [dict(view_id=v, customer_id=c["views"], session_id=f"tie-{v}", product_id=viewed,
                            viewed_at=at, seconds_on_page=30)
                       for v, at in ((ID + 1, a - timedelta(days=3)), (ID + 2, a - timedelta(days=2)),
                                     (ID + 3, a - timedelta(days=1)), (ID + 5, a - timedelta(hours=5)),
                                     (ID + 4, a - timedelta(hours=5)))],
    }
    with engine.begin() as conn:
        for table, table_rows in rows.items():
            for row in table_rows:
                cols = ", ".join(row)
                conn.execute(sa.text(f"INSERT INTO shop.{table} ({cols}) VALUES ({', '.join(':' + k for k in row)})"),
                             row)
        for table in rows:
            conn.exec_driver_sql(f"ANALYZE shop.{table}")
    return {**{f"customer_{k}": v for k, v in c.items()}, "mug": mug, "mug2": mug2}


def canonical(rows) -> list[str]:
    """Rows as sorted JSON lines: the same rows in any order compare equal, lists inside keep their order."""
    return sorted(json.dumps(dict(r._mapping), default=str, sort_keys=True) for r in rows)


def run_under(engine, variant: str, query):
    """query(conn) in a transaction with the variant's planner settings; everything is rolled back."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            for name, value in SETTINGS[variant].items():
                conn.exec_driver_sql(f"SET LOCAL {name} = '{value}'")
            if variant == "sorts":  # the planted ties' larger ids move behind the smaller ones on disk
                for table, column in MOVED.items():
                    conn.exec_driver_sql(f"UPDATE shop.{table} SET {column} = {column} WHERE {column} > {ID} "
                                         f"AND mod({column}, 2) = 0")
            return query(conn)
        finally:
            trans.rollback()


def run_for(spec, as_of) -> RunContext:
    return RunContext(spec.journey, f"ties-{as_of:%Y%m%dT%H}", "live", as_of - PERIODS[spec.schedule], as_of)


def segment_rows(engine, spec, run, variant):
    return run_under(engine, variant, lambda conn: canonical(
        execute_file_sql(conn, spec.path, spec.sql, run.binds(spec)).all()))


def test_every_journey_selects_the_same_rows_under_any_plan(tied_shop):
    engine, anchor, ids = tied_shop
    specs, errors = load_all()
    assert errors == []
    outputs = {}
    for spec in specs:
        run = run_for(spec, anchor)
        outputs[spec.journey] = {v: segment_rows(engine, spec, run, v) for v in SETTINGS}
    for journey, by_variant in outputs.items():
        for variant, rows in by_variant.items():
            assert rows == by_variant["default"], f"{journey}: rows differ under {variant!r} planner settings"
    # the planted ties are in the outputs, decided by the rule: the last order is the larger id
    for variant, lines in outputs["win_back"].items():
        keys = {r["lapse_key"] for r in map(json.loads, lines)
                if r["customer_id"] in (ids["customer_win_back"], ids["customer_win_back_2"])}
        assert keys == {f"{ids['customer_win_back']}:{ID + 2}", f"{ids['customer_win_back_2']}:{ID + 9}"}, variant
    rows = {j: [json.loads(r) for r in v["default"]] for j, v in outputs.items()}
    cart = [r for r in rows["cart_abandonment"] if r["cart_id"] == ID + 1]
    assert [i["product_id"] for i in cart[0]["items"]] == [ids["mug"], ids["mug2"]]  # same name: by id
    review = [r for r in rows["review_request"] if r["order_id"] == ID + 5]
    assert [i["product_id"] for i in review[0]["items"]] == [ids["mug"], ids["mug2"]]
    upsell = [r for r in rows["upsell"] if r["cart_id"] == ID + 1]
    assert [r["product_id"] for r in upsell] == [ids["mug"]]  # added at once, same price: the smaller id
    views = [r for r in rows["behaviour_discount"] if r["customer_id"] == ids["customer_views"]]
    assert len(views) == 1 and views[0]["view_count"] == 5
    notices = {r["notice_key"] for r in rows["order_notifications"] if r["customer_id"] == ids["customer_orders"]}
    assert notices == {f"{ID + 6}:confirmation", f"{ID + 7}:confirmation"}


def enroll_everyone(engine, spec, run) -> None:
    """The segment's rows as active enrollments (one per key), for the conditions to read."""
    stage_segment(engine, spec, run)
    with engine.begin() as conn:
        conn.execute(sa.text(f"""
            INSERT INTO lifecycle.enrollments (journey, mode, enrollment_key, customer_id, entered_at, enrolled_at,
                                               enrolled_run_id, context, context_as_of)
            SELECT DISTINCT ON (s.{spec.entry_key}::text)
                   :journey, 'live', s.{spec.entry_key}::text, s.{spec.customer_id}::bigint,
                   s.{spec.entered_at}::timestamptz, :as_of, 'ties', to_jsonb(s) - '_row', :as_of
            FROM {stage_table(run)} s
            WHERE s.{spec.entry_key} IS NOT NULL AND s.{spec.customer_id} IS NOT NULL
            ORDER BY s.{spec.entry_key}::text, s._row
            ON CONFLICT DO NOTHING"""), {"journey": spec.journey, "as_of": run.as_of})
    drop_stage(engine, run)


def test_every_condition_returns_the_same_rows_under_any_plan(tied_shop):
    engine, anchor, ids = tied_shop
    reset_lifecycle(engine)
    specs, _ = load_all()
    for spec in specs:
        enroll_everyone(engine, spec, run_for(spec, anchor))
    later = anchor + timedelta(days=2)  # after the planted conversions and reviews
    users = {}
    for spec in specs:
        for name in spec.conditions:
            users.setdefault(name, []).append(spec)
    hits = {}
    for path in sorted(CONDITIONS_DIR.glob("*.sql")):
        journeys = users.get(path.stem, [])
        binds = run_for(journeys[0], later).binds(journeys[0]) if journeys else run_for(specs[0], later).binds()
        chosen = "FROM lifecycle.enrollments e WHERE e.status = 'active'" + (
            " AND e.journey IN (" + ", ".join(f"'{s.journey}'" for s in journeys) + ")" if journeys else "")

        def condition_hits(conn, chosen=chosen, binds=binds, path=path):
            # as the engine does: the CTE's customer_id in the shop's type; ")" on its own line
            # because a condition file may end in a "-- comment"
            cte = with_enrollments_cte(condition_sql(path.stem)[1], typed_enrollments(conn, chosen))
            return canonical(execute_file_sql(conn, path, f"SELECT * FROM ({cte}\n) AS hits", binds).all())

        by_variant = {v: run_under(engine, v, condition_hits) for v in SETTINGS}
        for variant, rows in by_variant.items():
            assert rows == by_variant["default"], f"{path.name}: rows differ under {variant!r} planner settings"
        hits[path.stem] = [json.loads(r) for r in by_variant["default"]]
    # the planted ties reach the conditions: two orders at one instant, two reviews at one instant
    assert {h["order_id"] for h in hits["purchased_since_entry"]} >= {ID + 3, ID + 4}
    assert any(h["occurred_at"] for h in hits["left_negative_review"])
    assert any(h["occurred_at"] for h in hits["left_positive_review"])


# ---------------------------------------------------------------------------- (d) the engine
def tuned_engine(engine, variant: str):
    """An engine whose every connection uses the variant's planner settings."""
    options = " ".join(f"-c {k}={v}" for k, v in SETTINGS[variant].items())
    return sa.create_engine(engine.url, connect_args={"options": options} if options else {})


def credited(engine, variant: str, spec, run) -> tuple[str, Decimal]:
    """Run evaluate_exits with the variant's settings; return what the win_back customer's conversion credits."""
    tuned = tuned_engine(engine, variant)
    try:
        if variant == "sorts":  # the smaller of the two tied conversion orders now lies after the larger one
            with tuned.begin() as conn:
                conn.exec_driver_sql(f"UPDATE shop.orders SET order_id = order_id WHERE order_id = {ID + 3}")
        evaluate_exits(tuned, spec, run)
        with tuned.connect() as conn:
            return conn.execute(sa.text(
                "SELECT c.order_id, c.revenue FROM lifecycle.conversions c "
                "JOIN lifecycle.enrollments e USING (enrollment_id) "
                "WHERE e.journey = 'win_back' AND e.enrollment_key = :key"),
                {"key": f"{ID + 1}:{ID + 2}"}).one()
    finally:
        tuned.dispose()


def test_win_back_keys_the_later_order_and_exits_credit_the_smaller_tied_order(tied_shop):
    engine, anchor, ids = tied_shop
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    entry = run_for(spec, anchor)
    results = []
    for variant in ("default", "sorts", "indexes", "default"):
        reset_lifecycle(engine)
        enroll_everyone(engine, spec, entry)
        with engine.connect() as conn:
            keys = conn.execute(sa.text("SELECT enrollment_key FROM lifecycle.enrollments WHERE customer_id = :c"),
                                {"c": str(ids["customer_win_back"])}).scalars().all()
        assert keys == [f"{ids['customer_win_back']}:{ID + 2}"]  # the latest (ordered_at, order_id)
        later = RunContext("win_back", f"ties-exit-{variant}", "live", anchor + timedelta(days=1),
                           anchor + timedelta(days=2))
        results.append(credited(engine, variant, spec, later))
    # two orders placed at the same instant after entry: the smaller id came first and is credited
    assert results == [(str(ID + 3), Decimal("20.00"))] * 4
    reset_lifecycle(engine)


def test_send_time_picks_the_same_coupon_and_push_subscription_whatever_was_inserted_first(tied_shop):
    """Two codes of one enrollment issued in one transaction (same created_at) and two push
    subscriptions created at the same instant: every batch shows the same ones, whichever row
    was written first (two customers, the two insertion orders)."""
    from lifecycle.send import load_batch

    engine, anchor, ids = tied_shop
    reset_lifecycle(engine)
    customers = (ids["customer_cart"], ids["customer_review"])
    with engine.begin() as conn:
        for n, customer in enumerate(customers):
            enrollment = conn.execute(sa.text(
                "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
                "enrolled_run_id) VALUES ('ties', :key, :c, :at, :at, 'ties') RETURNING enrollment_id"),
                {"key": f"k{n}", "c": customer, "at": anchor}).scalar_one()
            codes = ("TIEAAA", "TIEZZZ") if n == 0 else ("TIEZZZ", "TIEAAA")
            for code in codes:  # one statement each, same created_at: as issued within one transaction
                conn.execute(sa.text(
                    "INSERT INTO lifecycle.coupons (code, journey, enrollment_id, step, customer_id, percent_off, "
                    "valid_from, valid_until, created_at) VALUES (:code, 'ties', :e, :step, :c, 10, :at, :until, :at)"),
                    {"code": f"{code}{n}", "e": enrollment, "step": code, "c": customer, "at": anchor,
                     "until": anchor + timedelta(days=14)})
            subscriptions = (ID + 10 * n + 1, ID + 10 * n + 2)
            for sub in (subscriptions if n == 0 else subscriptions[::-1]):
                conn.execute(sa.text(
                    "INSERT INTO shop.push_subscriptions (subscription_id, customer_id, endpoint, p256dh, auth, "
                    "created_at) VALUES (:s, :c, :endpoint, 'k', 'a', :at)"),
                    {"s": sub, "c": customer, "endpoint": f"https://push.example/{sub}", "at": anchor})
            conn.execute(sa.text(
                "INSERT INTO lifecycle.messages (idempotency_key, journey, enrollment_id, customer_id, step, channel, "
                "status, due_at, planned_for, planned_run_id, run_id, batch_no) "
                "VALUES (:key, 'ties', :e, :c, 'offer', 'push', 'planned', :at, :at, 'ties', 'ties', 0)"),
                {"key": f"ties:k{n}:offer:push", "e": enrollment, "c": customer, "at": anchor})
    batch = {"journey": "ties", "run_id": "ties", "batch": 0, "channel": "push"}
    try:
        for variant in SETTINGS:
            rows = run_under(engine, variant, lambda conn: load_batch(conn, batch))
            shown = {int(r.customer_id): (r.coupon_code, r.endpoint) for r in rows}
            # the same instant: the smaller code; the newest subscription: the larger id
            assert shown == {c: (f"TIEAAA{n}", f"https://push.example/{ID + 10 * n + 2}")
                             for n, c in enumerate(customers)}, variant
    finally:
        reset_lifecycle(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM shop.push_subscriptions WHERE subscription_id > {ID}")


def test_report_counts_an_order_converting_two_enrollments_at_once_the_same_way(tied_shop):
    """One order converts two enrollments of a journey at the same instant (two abandoned carts):
    the report counts it once, with the revenue of the smaller enrollment id, whichever row came first."""
    from lifecycle.report import SUMMARY_SQL

    engine, anchor, ids = tied_shop
    reset_lifecycle(engine)
    with engine.begin() as conn:
        for journey, order in (("ties_a", (0, 1)), ("ties_b", (1, 0))):
            conn.execute(sa.text("INSERT INTO lifecycle.runs (journey, run_id, interval_start, interval_end, status) "
                                 "VALUES (:j, 'r', :at, :at, 'ok')"), {"j": journey, "at": anchor})
            enrollments = [conn.execute(sa.text(
                "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
                "enrolled_run_id, status) VALUES (:j, :k, :c, :at, :at, 'r', 'converted') RETURNING enrollment_id"),
                {"j": journey, "k": f"cart{n}", "c": ids["customer_cart"], "at": anchor}).scalar_one() for n in (0, 1)]
            for n in order:  # revenue 10 for the first enrollment, 20 for the second
                conn.execute(sa.text(
                    "INSERT INTO lifecycle.conversions (enrollment_id, journey, customer_id, condition, order_id, "
                    "revenue, converted_at) VALUES (:e, :j, :c, 'purchased_since_entry', 'o1', :rev, :at)"),
                    {"e": enrollments[n], "j": journey, "c": ids["customer_cart"], "rev": 10 * (n + 1), "at": anchor})
    try:
        for variant in SETTINGS:
            rows = run_under(engine, variant, lambda conn: conn.execute(sa.text(SUMMARY_SQL), {"mode": "live"}).all())
            assert {r.journey: r.revenue for r in rows} == {"ties_a": Decimal("10.00"), "ties_b": Decimal("10.00")}
    finally:
        reset_lifecycle(engine)


def test_an_audience_reads_the_same_contact_row_when_the_contacts_view_has_two(tied_shop):
    """lifecycle.contacts is the user's view: with two rows for a customer, the audience sync hashes
    the same one every time (by email, phone, country), whichever the view returns first."""
    from lifecycle.audiences import _PEOPLE, fill_people_sql

    engine, anchor, ids = tied_shop
    reset_lifecycle(engine)
    customers = (ids["customer_cart"], ids["customer_review"])
    with engine.begin() as conn:
        for customer in customers:
            conn.execute(sa.text(
                "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
                "enrolled_run_id) VALUES ('ties', :k, :c, :at, :at, 'r')"), {"k": str(customer), "c": customer,
                                                                              "at": anchor})

    def people(conn):
        # two rows per planted customer, in opposite orders for the two of them
        conn.exec_driver_sql(f"""
            CREATE OR REPLACE VIEW lifecycle.contacts AS
            SELECT customer_id, email, phone, first_name, last_name, country, timezone, locale
            FROM (SELECT c.*, 0 AS copy FROM shop.customers c
                  UNION ALL
                  SELECT c.customer_id, 'zz-' || c.email, c.phone, c.first_name, c.last_name, c.country, c.timezone,
                         c.locale, c.birthday, c.created_at, 1 FROM shop.customers c
                  WHERE c.customer_id IN ({customers[0]}, {customers[1]})) x
            ORDER BY customer_id, CASE WHEN customer_id = {customers[0]} THEN copy ELSE -copy END""")
        conn.exec_driver_sql(_PEOPLE)
        conn.execute(sa.text(fill_people_sql(conn)), {"journey": "ties", "mode": "live", "statuses": ["active"]})
        return dict(conn.execute(sa.text("SELECT customer_id, email FROM pg_temp.aud_people")).all())

    try:
        for variant in SETTINGS:
            chosen = run_under(engine, variant, people)
            assert chosen == {str(c): f"tie{c}@example.com" for c in customers}, variant
    finally:
        reset_lifecycle(engine)


def test_the_volume_guard_reads_the_same_history_when_two_runs_end_at_once(tied_shop):
    """Two successful runs of one interval (a scheduled run and a backfill) at the edge of the history
    window: the guard's median counts the same one (the larger run_id is the later), whichever was first."""
    import dataclasses

    from lifecycle.spec import VolumeGuard
    from lifecycle.validate import volume_limit

    engine, anchor, _ids = tied_shop
    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    history = [(10, "a", 100), (9, "b", 200), (8, "c", 300)]
    limits = {}
    with engine.begin() as conn:
        for journey, tied in (("ties_a", [(7, "d1", 1), (7, "d2", 1000)]), ("ties_b", [(7, "d2", 1000), (7, "d1", 1)])):
            for day, run_id, rows in history + tied:
                conn.execute(sa.text(
                    "INSERT INTO lifecycle.runs (journey, run_id, interval_start, interval_end, status, rows_selected, rows_new) "
                    "VALUES (:j, :r, :end - interval '1 day', :end, 'ok', :rows, :rows)"),
                    {"j": journey, "r": run_id, "end": anchor - timedelta(days=20 - day), "rows": rows})
    try:
        for variant in SETTINGS:
            for journey in ("ties_a", "ties_b"):
                guarded = dataclasses.replace(spec, journey=journey,
                                              volume_guard=VolumeGuard(factor=5, min_rows=0, history=4))
                run = RunContext(journey, "now", "live", anchor - timedelta(days=1), anchor)
                tuned = tuned_engine(engine, variant)
                try:
                    limits[journey, variant] = volume_limit(tuned, guarded, run)
                finally:
                    tuned.dispose()
        # the four latest: 100, 200, 300 and run d2's 1000 (median 250, times 5)
        assert set(limits.values()) == {1250}, limits
    finally:
        reset_lifecycle(engine)


@pytest.mark.parametrize("id_type", ["bigint", "text"])
def test_the_exit_pick_compares_digit_ids_as_numbers_in_any_column_type(tied_shop, id_type):
    """Two orders at the same instant with ids 9 and 10: the 9 is credited, whether the condition
    returns the ids as numbers or as text (where '10' < '9' as strings); other text ids by their text."""
    from lifecycle.exits import exit_pick_order

    engine, anchor, _ids = tied_shop
    hits = [(1, "10", 20), (1, "9", 10), (2, "B-7", 5), (2, "A-8", 6), (3, "12", 1), (3, "X1", 2)]
    if id_type == "bigint":
        hits = [h for h in hits if h[1].isdigit()]
    values = ", ".join(f"({e}, CAST(:at AS timestamptz), CAST('{o}' AS {id_type}), {r})" for e, o, r in hits)
    sql = (f"SELECT DISTINCT ON (enrollment_id) enrollment_id, order_id::text FROM (VALUES {values}) "
           f"AS h(enrollment_id, occurred_at, order_id, revenue) "
           f"ORDER BY enrollment_id, {exit_pick_order({'occurred_at', 'order_id', 'revenue'})}")
    for variant in SETTINGS:
        picked = dict(run_under(engine, variant, lambda conn: conn.execute(sa.text(sql), {"at": anchor}).all()))
        assert picked == ({1: "9", 2: "A-8", 3: "12"} if id_type == "text" else {1: "9", 3: "12"}), variant
