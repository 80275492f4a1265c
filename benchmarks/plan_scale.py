"""Planning scales with the work, not the table: stage -> batch at two shop sizes.

    .venv/bin/python benchmarks/plan_scale.py [--sizes 20000 100000]

For each size: a fresh demo shop (anchor 2026-11-20 UTC) on one embedded PostgreSQL, then
win_back (daily) and cart_abandonment (hourly), each **cold** (its first interval, ending at the
anchor, on empty lifecycle tables) and **steady** (the next interval), stage, validate, enroll,
exits, plan and batch timed as lifecycle.replay.run_interval times them. No sends: this measures
planning, so the steady run also takes over (adopts) the cold run's still-open messages. The
lifecycle tables are left as the runs made them (no ANALYZE between runs), as in production
right after a big first day.

Prints seconds per stage per run, the load average, and the growth exponent of stage->batch
between the smallest and largest size (1.0 = linear in the shop); the last line is the largest
exponent over the runs.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
STAGES = ("stage", "validate", "enroll", "exits", "plan", "batch")
JOURNEYS = (("win_back", timedelta(days=1)), ("cart_abandonment", timedelta(hours=1)))
LIFECYCLE_TABLES = ("messages", "enrollments", "runs", "quarantine", "conversions", "suppressions", "coupons",
                    "audience_members")


def run_stages(engine, spec, end: datetime, every: timedelta, label: str) -> tuple[dict[str, float], int]:
    """One interval stage -> batch; returns seconds per stage and the messages batched."""
    from lifecycle import plan, run_audit, stage, validate
    from lifecycle.enroll import enroll
    from lifecycle.exits import evaluate_exits
    from lifecycle.run_context import RunContext

    run = RunContext(spec.journey, f"bench_{label}__{end.isoformat()}", "live", end - every, end)
    run_audit.start_run(engine, run)
    calls = (stage.stage_segment, partial(validate.validate_stage, approve_volume=True), enroll, evaluate_exits,
             plan.plan_due_steps, plan.assign_batches)
    timings: dict[str, float] = {}
    for name, call in zip(STAGES, calls, strict=True):
        t0 = time.perf_counter()
        batches = call(engine, spec, run)
        timings[name] = time.perf_counter() - t0
    run_audit.finish_run(engine, run, "ok", run_audit.message_counts(engine, run))
    stage.drop_stage(engine, run)
    return timings, sum(b["size"] for b in batches)


def measure_size(customers: int, tmp: Path) -> dict[tuple[str, str], tuple[dict[str, float], int]]:
    import sqlalchemy as sa

    from lifecycle import schema
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.spec import load_spec
    from lifecycle.warehouse import start_embedded, stop_embedded
    from lifecycle_demo import demo_shop

    pgdata = tmp / f"pgdata-{customers}"
    with warnings.catch_warnings(action="ignore"):  # pgserver: "XDG_RUNTIME_DIR is not set"
        url = start_embedded(pgdata).replace("postgresql://", "postgresql+psycopg2://", 1)
    engine = sa.create_engine(url)
    try:
        t0 = time.perf_counter()
        demo_shop.generate(engine, ANCHOR, customers=customers)
        schema.migrate(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")  # the shop settled, as a warehouse in service is
        print(f"{customers:,} customers generated in {time.perf_counter() - t0:.1f} s", flush=True)
        results = {}
        for name, every in JOURNEYS:
            spec = load_spec(SEGMENTS_DIR / f"{name}.sql")
            with engine.begin() as conn:
                conn.exec_driver_sql("TRUNCATE " + ", ".join(f"lifecycle.{t}" for t in LIFECYCLE_TABLES) + " CASCADE")
            for label, end in (("cold", ANCHOR), ("steady", ANCHOR + every)):
                results[(name, label)] = timings, n = run_stages(engine, spec, end, every, label)
                print(f"  {name:<17} {label:<6} {sum(timings.values()):7.2f} s  {n:>7,} messages batched  "
                      + "  ".join(f"{s} {timings[s]:.2f}" for s in STAGES), flush=True)
        return results
    finally:
        engine.dispose()
        with warnings.catch_warnings(action="ignore"):
            stop_embedded(pgdata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000], help="shop sizes (customers)")
    args = parser.parse_args(argv)
    import great_expectations  # noqa: F401  (a one-off import per process, kept out of the validate figure)

    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-plan-scale-"))
    try:
        by_size = {}
        for customers in args.sizes:
            print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            by_size[customers] = measure_size(customers, tmp)
        small, large = min(args.sizes), max(args.sizes)
        exponents = []
        print(f"\nstage->batch seconds, {small:,} -> {large:,} customers (growth exponent; 1.0 = linear):")
        for key in by_size[small]:
            a, b = sum(by_size[small][key][0].values()), sum(by_size[large][key][0].values())
            exponent = math.log(b / a) / math.log(large / small)
            exponents.append(exponent)
            print(f"  {key[0]:<17} {key[1]:<6} {a:7.2f} -> {b:7.2f} s  exponent {exponent:.2f}")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"largest growth exponent: {max(exponents):.2f}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
