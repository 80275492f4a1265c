"""What reading our own tracking costs lift_sunsets (lifecycle.suppression): the query as shipped
(orders, human clicks in lifecycle.engagement, provider clicks) against the same query without
the lifecycle.engagement branch (the one before issue 12's leftovers), on one planted warehouse.

    .venv/bin/python benchmarks/lift_sunsets.py [--customers N] [--runs N] [--url URL]

Plants, set-based in SQL (seeded: setseed), N customers, a sunset ('no_response') for 20% of them,
orders, provider clicks (shop.engagement_events: 3 per customer over 90 days) and our own
tracking (4 messages per customer, opens and clicks, 30% of them by MPP or scanners), on the
embedded PostgreSQL (or --url). Each call runs in a transaction that is rolled back (the same
sunsets every time). Two calls, as the engine makes them: one send batch's recipients (500
customers, lifecycle.send's send-time checks) and every active sunset (planning). Prints
min/median/max per call and query, whether the batch plan reads lifecycle.engagement through
its index (engagement_human_clicks), the load average, and last the ratios shipped / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

import sqlalchemy as sa  # noqa: E402

from lifecycle import schema, suppression  # noqa: E402
from lifecycle.schema import run_script  # noqa: E402

T0 = datetime(2026, 8, 1, tzinfo=UTC)
AS_OF = T0 + timedelta(days=90)
BATCH = 500

PLANT = """
SELECT setseed(0.42);
INSERT INTO shop.customers (customer_id, email, created_at)
SELECT g, 'c' || g || '@example.com', {t0} FROM generate_series(1, {n}) g;
INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency)
SELECT g, 1 + (random() * ({n} - 1))::bigint, {t0} + random() * interval '90 days', 'delivered', 20, 'EUR'
FROM generate_series(1, {n}) g;
INSERT INTO shop.engagement_events (customer_id, message_id, channel, event, occurred_at)
SELECT 1 + (random() * ({n} - 1))::bigint, NULL, CASE WHEN random() < 0.8 THEN 'email' ELSE 'sms' END,
       CASE WHEN random() < 0.3 THEN 'click' ELSE 'open' END, {t0} + random() * interval '90 days'
FROM generate_series(1, {n} * 3) g;
INSERT INTO lifecycle.enrollments (enrollment_id, journey, mode, enrollment_key, customer_id, entered_at,
                                   enrolled_at, enrolled_run_id, status)
SELECT g, 'bench', 'live', 'k' || g, g::text, {t0}, {t0}, 'bench', 'completed' FROM generate_series(1, {n}) g;
INSERT INTO lifecycle.messages (idempotency_key, journey, mode, enrollment_id, customer_id, step, channel, template,
                                status, due_at, planned_for, planned_run_id, sent_at, attempts)
SELECT 'bench:' || e.enrollment_id || ':' || s, 'bench', 'live', e.enrollment_id, e.customer_id, 'step_' || s,
       'email', 'bench/step_' || s, 'sent', {t0} + s * interval '20 days', {t0}, 'bench',
       {t0} + s * interval '20 days', 1
FROM lifecycle.enrollments e CROSS JOIN generate_series(0, 3) s;
INSERT INTO lifecycle.engagement (message_id, journey, mode, step, channel, customer_id, kind, agent_class, occurred_at)
SELECT m.message_id, m.journey, m.mode, m.step, m.channel, m.customer_id, k.kind,
       CASE WHEN m.r_agent < 0.7 THEN 'human' WHEN k.kind = 'open' THEN 'privacy_proxy' ELSE 'scanner' END,
       m.sent_at + m.r_delay * interval '10 days'
FROM (SELECT x.*, random() AS r_open, random() AS r_click, random() AS r_agent, random() AS r_delay
      FROM lifecycle.messages x) m
CROSS JOIN LATERAL (VALUES ('open', m.r_open < 0.4), ('click', m.r_click < 0.15)) k(kind, hit)
WHERE k.hit;
INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source, since)
SELECT g::text, 'email', 'no_response', 'bench', {t0} + random() * interval '80 days'
FROM generate_series(1, {n}) g WHERE random() < 0.2;
"""


def baseline_sql() -> str:
    """lift_sunsets.sql without its lifecycle.engagement branch: the query before our own tracking
    counted."""
    shipped = suppression.LIFT_SQL
    branches = shipped.split("    UNION ALL\n")
    without = "    UNION ALL\n".join(b for b in branches if "JOIN LATERAL" not in b or "lifecycle.engagement" not in b)
    assert len(branches) == 3 and "lifecycle.engagement" not in without.split("WITH", 1)[1]
    return without


def lift(conn, sql_text: str, customer_ids) -> int:
    """lift_sunsets with `sql_text` as its query, rolled back."""
    saved = suppression.LIFT_SQL
    suppression.LIFT_SQL = sql_text
    try:
        with conn.begin() as tx:
            lifted = suppression.lift_sunsets(conn, AS_OF, customer_ids)
            tx.rollback()
        return lifted
    finally:
        suppression.LIFT_SQL = saved


def timed(runs: int, fn) -> tuple[list[float], object]:
    out, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t0)
    return out, result


def show(name: str, times: list[float], lifted) -> None:
    print(f"{name:<34} min {min(times) * 1000:8.1f} ms  median {statistics.median(times) * 1000:8.1f} ms  "
          f"max {max(times) * 1000:8.1f} ms  lifted {lifted:,}")


def engagement_access(conn, customer_ids) -> str:
    """How the batch call's plan reads lifecycle.engagement."""
    from lifecycle.ids import as_type, column_type

    sql = suppression.LIFT_SQL.format(
        order_customer=as_type("su.customer_id", column_type(conn, "lifecycle.orders")),
        event_customer=as_type("su.customer_id", column_type(conn, "shop.engagement_events")))
    plan = conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + sql),  # (not run: EXPLAIN without ANALYZE)
                        {"as_of": AS_OF, "liftable": list(suppression.LIFTABLE),
                         "customer_ids": [str(c) for c in customer_ids]}).scalar_one()
    conn.rollback()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    found = []

    def walk(node, parent=None):
        if node.get("Relation Name") == "engagement":
            index = node.get("Index Name") or next((c.get("Index Name") for c in node.get("Plans", [])), "")
            joined = f" (inner side of a {parent['Node Type']})" if parent else ""
            found.append(f"{node['Node Type']} {index or ''}{joined}".strip())
        for child in node.get("Plans", []):
            walk(child, node if "Join" in node["Node Type"] or node["Node Type"] == "Nested Loop" else parent)

    walk(plan[0]["Plan"])
    return ", ".join(found) or "not read"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--url", help="an empty database (default: one on a temporary embedded PostgreSQL)")
    args = parser.parse_args()
    data_dir = None
    if args.url:
        url = args.url
    else:
        from lifecycle.warehouse import start_embedded

        data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-sunsets-"))
        url = start_embedded(data_dir).replace("postgresql://", "postgresql+psycopg2://", 1)
    engine = sa.create_engine(url)
    try:
        measure(engine, args)
    finally:
        engine.dispose()
        if data_dir is not None:
            from lifecycle.warehouse import stop_embedded

            stop_embedded(data_dir)


def measure(engine: sa.Engine, args) -> None:
    schema.create_shop_schema(engine)
    schema.migrate(engine)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        run_script(conn, PLANT.format(n=args.customers, t0=f"'{T0.isoformat()}'::timestamptz"))
        conn.exec_driver_sql("ANALYZE")
        counts = conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM lifecycle.suppressions), (SELECT count(*) FROM shop.engagement_events), "
            "(SELECT count(*) FROM lifecycle.engagement), "
            "(SELECT count(*) FROM lifecycle.engagement WHERE kind = 'click' AND is_human)")).one()
        sunset = [c for (c,) in conn.execute(sa.text(
            "SELECT customer_id FROM lifecycle.suppressions ORDER BY suppression_id"))]
    print(f"planted {args.customers:,} customers, {counts[0]:,} sunsets, {counts[1]:,} provider events, "
          f"{counts[2]:,} tracked rows ({counts[3]:,} human clicks) in {time.perf_counter() - t0:.1f} s")
    # a send batch: 500 recipients, a fifth of them sunset (as in the warehouse)
    batch = sunset[: BATCH // 5] + [str(c) for c in range(args.customers + 1, args.customers + 1 + BATCH * 4 // 5)]
    shipped, baseline = suppression.LIFT_SQL, baseline_sql()
    results = {}
    with engine.connect() as conn:
        for call, ids in (("send batch (500)", batch), ("planning (all)", None)):
            for name, sql_text in (("baseline", baseline), ("shipped", shipped)):
                lift(conn, sql_text, ids)  # warm
                times, lifted = timed(args.runs, lambda s=sql_text, i=ids: lift(conn, s, i))
                show(f"{call}, {name}", times, lifted)
                results[(call, name)] = statistics.median(times)
        print(f"send batch plan reads lifecycle.engagement by: {engagement_access(conn, batch)}")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for call in ("send batch (500)", "planning (all)"):
        s, b = results[(call, "shipped")], results[(call, "baseline")]
        print(f"{call}: shipped / baseline: {s / b:.2f} (shipped {s * 1000:.1f} ms, baseline {b * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
