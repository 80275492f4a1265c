"""How long the Journeys page's queries take (lifecycle.analytics: funnel, lift, ab_test) on a
planted warehouse, against `lifecycle report`'s summary query on the same rows as the baseline.

    .venv/bin/python benchmarks/analytics_queries.py [--enrollments N] [--runs N] [--url URL]

Plants, set-based in SQL (seeded: setseed), N enrollments of one journey over 30 days (10% held
out), two email messages each (the first with variants a/b), human and machine opens and clicks,
conversions (12% treated, 8% held out) and unsubscribes/complaints, on the embedded PostgreSQL
(or --url), then runs each query `--runs` times and prints min/median/max, the load average, and
last `funnel / report: R (funnel S s, report T s)` (medians). The report query reads the same
tables once without attribution, so the ratio is what attribution and the per-step split cost.
"""

from __future__ import annotations

import argparse
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

from lifecycle import analytics, schema  # noqa: E402
from lifecycle.report import SUMMARY_SQL  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=UTC)

PLANT = """
SELECT setseed(0.42);
INSERT INTO lifecycle.enrollments (enrollment_id, journey, mode, enrollment_key, customer_id, entered_at, enrolled_at,
                                   enrolled_run_id, holdout, status)
SELECT g, 'bench', 'live', 'k' || g, (g % {customers})::text, {t0} + (random() * interval '30 days'),
       {t0} + interval '30 days', 'bench', (g % {customers}) % 10 = 0, 'completed'
FROM generate_series(1, {n}) g;
INSERT INTO lifecycle.messages (message_id, idempotency_key, journey, mode, enrollment_id, customer_id, step, channel,
                                template, status, due_at, planned_for, planned_run_id, sent_at, attempts, variant)
SELECT e.enrollment_id * 2 - 2 + s.n, 'bench:' || e.enrollment_id || ':' || s.n, 'bench', 'live', e.enrollment_id,
       e.customer_id, 'step_' || s.n, 'email', 'bench/step_' || s.n,
       CASE WHEN e.holdout THEN 'skipped' WHEN random() < 0.9 THEN 'sent' ELSE 'suppressed' END,
       e.entered_at + s.n * interval '1 hour', e.entered_at, 'bench', e.entered_at + s.n * interval '1 hour', 1,
       CASE WHEN s.n = 1 THEN CASE WHEN random() < 0.5 THEN 'a' ELSE 'b' END END
FROM lifecycle.enrollments e CROSS JOIN (VALUES (1), (2)) s(n);
UPDATE lifecycle.messages SET sent_at = NULL, attempts = 0 WHERE status <> 'sent';
INSERT INTO lifecycle.engagement (message_id, journey, mode, step, channel, customer_id, kind, agent_class, occurred_at)
SELECT m.message_id, m.journey, m.mode, m.step, m.channel, m.customer_id, k.kind,
       CASE WHEN m.r_agent < 0.8 THEN 'human' ELSE 'privacy_proxy' END, m.sent_at + m.r_delay * interval '2 days'
FROM (SELECT x.*, random() AS r_open, random() AS r_click, random() AS r_agent, random() AS r_delay
      FROM lifecycle.messages x WHERE x.status = 'sent') m
CROSS JOIN LATERAL (VALUES ('open', m.r_open < 0.4), ('click', m.r_click < 0.12)) k(kind, hit)
WHERE k.hit;
INSERT INTO lifecycle.conversions (enrollment_id, journey, mode, customer_id, condition, order_id, revenue,
                                   converted_at, holdout)
SELECT e.enrollment_id, e.journey, e.mode, e.customer_id, 'purchased', 'o' || e.enrollment_id,
       round((20 + random() * 180)::numeric, 2), e.entered_at + random() * interval '5 days', e.holdout
FROM lifecycle.enrollments e WHERE random() < CASE WHEN e.holdout THEN 0.08 ELSE 0.12 END;
INSERT INTO lifecycle.runs (journey, run_id, interval_start, interval_end, status)
VALUES ('bench', 'bench', {t0}, {t0} + interval '30 days', 'ok');
INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source, since)
SELECT c::text, 'email', CASE WHEN random() < 0.8 THEN 'unsubscribe' ELSE 'complaint' END, 'bench',
       {t0} + random() * interval '32 days'
FROM generate_series(0, {customers} - 1) c WHERE random() < 0.02;
"""


def timed(runs: int, fn) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def show(name: str, times: list[float]) -> None:
    print(f"{name:<28} min {min(times):7.3f} s  median {statistics.median(times):7.3f} s  max {max(times):7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="an empty database (default: one on a temporary embedded PostgreSQL)")
    args = parser.parse_args()
    data_dir = None
    if args.url:
        url = args.url
    else:
        from lifecycle.warehouse import start_embedded

        data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-analytics-"))
        url = start_embedded(data_dir).replace("postgresql://", "postgresql+psycopg2://", 1)
    engine = sa.create_engine(url)
    try:
        schema.create_shop_schema(engine)
        schema.migrate(engine)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            from lifecycle.schema import run_script

            sql = PLANT.format(customers=max(1, args.enrollments * 7 // 10), n=args.enrollments,
                               t0=f"'{T0.isoformat()}'::timestamptz")
            run_script(conn, sql)
            conn.exec_driver_sql("ANALYZE")
            counts = conn.execute(sa.text(
                "SELECT (SELECT count(*) FROM lifecycle.messages), (SELECT count(*) FROM lifecycle.engagement), "
                "(SELECT count(*) FROM lifecycle.conversions)")).one()
        print(f"planted {args.enrollments:,} enrollments, {counts[0]:,} messages, {counts[1]:,} engagement rows, "
              f"{counts[2]:,} conversions in {time.perf_counter() - t0:.1f} s")
        period = {"since": T0, "until": T0 + timedelta(days=30)}
        with engine.connect() as conn:
            runs = {
                "report (baseline)": timed(args.runs, lambda: conn.execute(sa.text(SUMMARY_SQL), {"mode": "live"}).all()),
                "funnel (all journeys)": timed(args.runs, lambda: analytics.funnel(conn, **period)),
                "lift": timed(args.runs, lambda: analytics.lift(conn, journey="bench", **period)),
                "ab_test": timed(args.runs, lambda: analytics.ab_test(conn, journey="bench", step="step_1", **period)),
            }
            rows = analytics.funnel(conn, **period)
        for name, times in runs.items():
            show(name, times)
        print(f"funnel rows: {len(rows)}; load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        funnel_s, report_s = statistics.median(runs["funnel (all journeys)"]), statistics.median(runs["report (baseline)"])
        print(f"funnel / report: {funnel_s / report_s:.2f} (funnel {funnel_s:.2f} s, report {report_s:.2f} s)")
    finally:
        engine.dispose()
        if data_dir is not None:
            from lifecycle.warehouse import stop_embedded

            stop_embedded(data_dir)


if __name__ == "__main__":
    main()
