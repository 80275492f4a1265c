"""Planning scales with the work, not the table: every stage of a run at 100k, 300k and 1M customers.

    .venv/bin/python benchmarks/plan_scale.py [--sizes 100000 300000 1000000] [--journeys win_back ...] [--repeats 3]

Per shop size, one demo shop (anchor 2026-11-20 UTC) in an embedded PostgreSQL kept under the
state dir (`<state>/bench/plan_scale/`): a shop is generated once per size, generator and schema
(its database name carries their hash) and reused by later runs, so the figures are not waiting
for the generator. The server is stopped at the end; its data stays for the next run.

For each journey: the lifecycle tables emptied and analysed empty (a fresh install), then
**cold** (its first interval, ending at the anchor) and **steady** (the next interval), each
stage timed as lifecycle.replay.run_interval times it: stage, validate, enroll, exits, plan,
batch. Between the two the cold run's batches are recorded as sent (one UPDATE, not timed), as its
send tasks would have done, so the steady run is a next day's work; with --unsent they stay open
and the steady run takes them over (adopts them: a day whose send tasks all died). No ANALYZE
between the runs, as in production right after a big first day. Journeys:

- win_back (daily; its first day enrolls every lapsed customer: 22% of the shop),
- cart_abandonment (hourly), product_recommendations (weekly),
- win_back_exits: win_back with an exit-heavy next day: before the steady run, a third of the
  customers the cold day enrolled place an order during that day (rows the benchmark adds to
  shop.orders and deletes afterwards), so its exits convert them and plan their thank-you mails.

Prints seconds per stage per run, wall clock and CPU (this process plus every process of the
embedded server, read from /proc: on a loaded machine the wall clock mostly measures the other
work), the load average, per journey and run the growth exponent of each stage and of the total
between consecutive sizes and from the smallest to the largest (1.0 = linear in the shop; the
work itself grows linearly with it), and the first-day total at the largest size against the
goal of 30 s. The last line is the worst exponent of a run's total, in CPU seconds (the wall
clock's in brackets).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import resource
import statistics
import time
import warnings
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from proc_cpu import loadavg, postgres_cpu

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
SEED = 7
STAGES = ("stage", "validate", "enroll", "exits", "plan", "batch")
# name: (segment file, interval)
JOURNEYS = {
    "win_back": ("win_back", timedelta(days=1)),
    "cart_abandonment": ("cart_abandonment", timedelta(hours=1)),
    "product_recommendations": ("product_recommendations", timedelta(days=7)),
    "win_back_exits": ("win_back", timedelta(days=1)),
}
EXIT_SHARE = 3  # win_back_exits: one customer in EXIT_SHARE of the cold day's enrollments orders the next day
PLANTED_ORDERS = 9_000_000_000  # their order ids start here (far above the generator's)
GOAL_FIRST_DAY = 30.0
NOISE = 0.05  # seconds: a stage below this at both sizes gets no exponent (timer noise)


class CpuClock:
    """CPU seconds of this process plus every process of the embedded server (its backends do the
    work): a figure the machine's load does not inflate, unlike the wall clock."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata

    def server(self) -> float:
        """CPU seconds of the server, its ended backends included (proc_cpu.postgres_cpu)."""
        return postgres_cpu(self.pgdata)

    @staticmethod
    def here() -> float:
        """CPU seconds of this process and of its ended children (the generator's worker processes)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def __call__(self) -> float:
        return self.server() + self.here()


CPU: CpuClock | None = None


class Statements:
    """--statements N: wall seconds per SQL statement (sqlalchemy cursor events), so a run's line
    is followed by its N slowest statements and the stage that ran them: where a stage's time goes."""

    def __init__(self, engine, top: int) -> None:
        self.top, self.stage, self.seen = top, "", []
        if top:
            sa_event = __import__("sqlalchemy").event
            sa_event.listen(engine, "before_cursor_execute", self.before)
            sa_event.listen(engine, "after_cursor_execute", self.after)

    def before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        took = time.perf_counter() - conn.info["bench_started"].pop()
        self.seen.append((took, self.stage, " ".join(statement.split())))

    def report(self) -> None:
        for took, stage, text in sorted(self.seen, reverse=True)[:self.top]:
            print(f"      {took:6.2f} s  {stage:<8} {text[:150]}")
        self.seen = []


STATEMENTS: Statements | None = None


def shop_fingerprint(customers: int) -> str:
    """What a generated shop depends on: the generator, its planted cases, the shop schema."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{customers}:{SEED}:{ANCHOR.isoformat()}".encode())
    files = [root / "plugins/lifecycle_demo/demo_shop.py", root / "include/sql/shop/schema.sql",
             *sorted((root / "plugins/lifecycle_demo/cases").glob("*.py"))]
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def shop_database(admin, url: str, customers: int):
    """An engine on the cached shop of this size, generated (and vacuumed) when missing."""
    import sqlalchemy as sa

    from lifecycle import schema
    from lifecycle_demo import demo_shop

    name = f"shop_{customers}_{shop_fingerprint(customers)}"
    with admin.connect() as conn:
        # (starts_with, not LIKE 'shop_100000_%': its `_` matches any character, and the 1M shop with it)
        have = set(conn.execute(sa.text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"),
                                {"p": f"shop_{customers}_"}).scalars())
        for stale in have - {name}:  # another generator's shop of this size
            conn.exec_driver_sql(f"DROP DATABASE {stale}")
        building = f"{name}_building"
        if name not in have:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {building}")
            conn.exec_driver_sql(f"CREATE DATABASE {building}")
    engine_url = sa.engine.make_url(url)
    if name not in have:  # generated under a temporary name, renamed when complete
        t0, here0, server0 = time.perf_counter(), CPU.here(), CPU.server()
        engine = sa.create_engine(engine_url.set(database=building))
        demo_shop.generate(engine, ANCHOR, customers=customers, seed=SEED)
        wall, here, server = time.perf_counter() - t0, CPU.here() - here0, CPU.server() - server0
        print(f"{customers:,} customers: generator {wall:.1f} s wall, {here:.1f} CPU s (its processes) + "
              f"{server:.1f} CPU s (PostgreSQL), load average {loadavg()}", flush=True)
        schema.migrate(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")  # the shop settled, as a warehouse in service is
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {building} RENAME TO {name}")
        print(f"{customers:,} customers generated, migrated and vacuumed in {time.perf_counter() - t0:.1f} s "
              f"(kept as {name})", flush=True)
    else:
        print(f"{customers:,} customers: reusing {name}", flush=True)
    engine = sa.create_engine(engine_url.set(database=name))
    schema.migrate(engine)  # a shop generated before a new migration
    return engine


def reset_lifecycle(engine) -> None:
    """Empty every lifecycle table and analyse it empty: a fresh install's statistics."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        tables = conn.execute(sa.text(
            "SELECT 'lifecycle.' || tablename FROM pg_tables WHERE schemaname = 'lifecycle' "
            "AND tablename <> 'schema_migrations' ORDER BY tablename")).scalars().all()
        conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} CASCADE")
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS lifecycle_stage CASCADE")
        # The planted orders have no items, reviews or referrals: nothing references them, so their
        # foreign-key triggers are skipped (each would scan shop.reviews and shop.referrals, which have
        # no index on the order: minutes for the 75k planted at 1M customers).
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        planted = conn.execute(sa.text("DELETE FROM shop.orders WHERE order_id >= :o"), {"o": PLANTED_ORDERS}).rowcount
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE {table}")
        if planted:  # the deleted orders' index entries would slow the next run's exits (their lookups
            # step over dead entries: the exit-heavy day's exits took 4.8 s, then 6.6-7.1 s after a few repeats)
            conn.exec_driver_sql("VACUUM (ANALYZE) shop.orders")


def plant_orders(engine, journey: str, start: datetime) -> int:
    """win_back_exits: one in EXIT_SHARE of the journey's active enrollments orders during the day
    from `start` (spread over it); returns how many orders."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        return conn.execute(sa.text(
            """
            INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency)
            SELECT :base + e.enrollment_id, CAST(e.customer_id AS bigint),
                   :start + make_interval(secs => (e.enrollment_id % 86000)), 'delivered', 42.00, 'EUR'
            FROM lifecycle.enrollments e
            WHERE e.journey = :journey AND e.status = 'active' AND e.enrollment_id % :share = 0
            """), {"base": PLANTED_ORDERS, "start": start, "journey": journey, "share": EXIT_SHARE}).rowcount


def run_stages(engine, spec, end: datetime, every: timedelta, label: str) -> tuple[dict[str, float], dict]:
    """One interval stage -> batch; returns seconds per stage and what the run did."""
    from lifecycle import plan, run_audit, stage, validate
    from lifecycle.enroll import enroll
    from lifecycle.exits import evaluate_exits
    from lifecycle.run_context import RunContext

    run = RunContext(spec.journey, f"bench_{label}__{end.isoformat()}", "live", end - every, end)
    run_audit.start_run(engine, run)
    calls = (stage.stage_segment, partial(validate.validate_stage, approve_volume=True), enroll, evaluate_exits,
             plan.plan_due_steps, plan.assign_batches)
    timings: dict[str, float] = {}
    results = {}
    for name, call in zip(STAGES, calls, strict=True):
        STATEMENTS.stage = name
        t0, c0 = time.perf_counter(), CPU()
        results[name] = call(engine, spec, run)
        timings[name] = time.perf_counter() - t0
        timings[f"{name} cpu"] = CPU() - c0
    run_audit.finish_run(engine, run, "ok", run_audit.message_counts(engine, run))
    stage.drop_stage(engine, run)
    did = {"rows": results["stage"], "entered": results["enroll"]["entered"],
           "refreshed": results["enroll"]["refreshed"], "exited": sum(results["exits"].values()),
           "planned": sum(sum(s.values()) for s in results["plan"].values()),
           "batched": sum(b["size"] for b in results["batch"])}
    return timings, did


def send_everything(engine, journey: str, at: datetime) -> int:
    """What the cold run's send tasks would have done: its planned messages recorded as sent."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        return conn.execute(sa.text(
            "UPDATE lifecycle.messages SET status = 'sent', sent_at = :at, attempts = 1, updated_at = :at "
            "WHERE journey = :journey AND status = 'planned'"), {"journey": journey, "at": at}).rowcount


def measure_size(engine, customers: int, journeys: list[str], statements: int, unsent: bool = False,
                 repeats: int = 1) -> dict:
    """Each journey's cold and steady runs, `repeats` times from a fresh start; per run and stage the
    median of the repeats (with two shop sizes, one noisy run moves an exponent by 0.1-0.2)."""
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.spec import load_spec

    global STATEMENTS
    STATEMENTS = Statements(engine, statements)
    results = {}
    for name in journeys:
        segment, every = JOURNEYS[name]
        spec = load_spec(SEGMENTS_DIR / f"{segment}.sql")
        runs: dict[str, list[dict[str, float]]] = {"cold": [], "steady": []}
        for attempt in range(repeats):
            reset_lifecycle(engine)
            for label, end in (("cold", ANCHOR), ("steady", ANCHOR + every)):
                note = f"  [repeat {attempt + 1} of {repeats}]" if repeats > 1 else ""
                STATEMENTS.stage = "(untimed)"  # what the benchmark does between the runs
                if label == "steady" and not unsent:
                    note += f"  ({send_everything(engine, spec.journey, ANCHOR + timedelta(minutes=5)):,} sent before)"
                if name == "win_back_exits" and label == "steady":
                    note += f"  ({plant_orders(engine, spec.journey, ANCHOR):,} planted orders)"
                timings, did = run_stages(engine, spec, end, every, label)
                runs[label].append(timings)
                print(f"  {name:<24} {label:<6} {timings_line(timings)}  | "
                      + ", ".join(f"{k} {v:,}" for k, v in did.items()) + note, flush=True)
                STATEMENTS.report()
        for label, measured in runs.items():
            results[(name, label)] = {key: statistics.median(t[key] for t in measured) for key in measured[0]}
            if repeats > 1:
                print(f"  {name:<24} {label:<6} {timings_line(results[(name, label)])}  | median of {repeats}",
                      flush=True)
    reset_lifecycle(engine)
    return results


def timings_line(timings: dict[str, float]) -> str:
    return (f"{total(timings):7.2f} s ({total(timings, ' cpu'):6.2f} cpu)  "
            + "  ".join(f"{s} {timings[s]:.2f} ({timings[s + ' cpu']:.2f})" for s in STAGES))


def total(timings: dict[str, float], kind: str = "") -> float:
    return sum(timings[s + kind] for s in STAGES)


def exponent(a: float, b: float, small: int, large: int) -> float | None:
    if max(a, b) < NOISE:
        return None
    return math.log(max(b, 1e-3) / max(a, 1e-3)) / math.log(large / small)


def report(by_size: dict[int, dict]) -> tuple[float, float]:
    """Print the growth exponents and the first-day goal; return the worst exponents of a run's
    total (CPU seconds, wall clock)."""
    sizes = sorted(by_size)
    pairs = list(zip(sizes, sizes[1:], strict=False)) + ([(sizes[0], sizes[-1])] if len(sizes) > 2 else [])
    worst = {"": math.nan, " cpu": math.nan}  # one size: no exponent
    for kind, title in ((" cpu", "CPU seconds (this process + the server's)"), ("", "wall clock")):
        if not pairs:
            break
        print(f"\ngrowth exponents of {title} (1.0 = linear in the shop; '-' = under {NOISE} s at both sizes):")
        print(f"  {'journey':<24} {'run':<6} {'sizes':<12} " + " ".join(f"{s:>8}" for s in STAGES) + "    total")
        for key in by_size[sizes[0]]:
            for small, large in pairs:
                a, b = by_size[small][key], by_size[large][key]
                cells = [exponent(a[s + kind], b[s + kind], small, large) for s in STAGES]
                whole = exponent(total(a, kind), total(b, kind), small, large)
                worst[kind] = whole if math.isnan(worst[kind]) else max(worst[kind], whole)
                print(f"  {key[0]:<24} {key[1]:<6} {f'{small // 1000}k->{large // 1000}k':<12} "
                      + " ".join(f"{c:8.2f}" if c is not None else f"{'-':>8}" for c in cells) + f" {whole:8.2f}")
    largest = sizes[-1]
    print(f"\nfirst day (cold) at {largest:,} customers (goal < {GOAL_FIRST_DAY:.0f} s):")
    for (name, label), timings in by_size[largest].items():
        if label == "cold":
            wall = total(timings)
            print(f"  {name:<24} {wall:7.2f} s wall, {total(timings, ' cpu'):7.2f} s CPU  "
                  f"{'OK' if wall < GOAL_FIRST_DAY else 'OVER'}")
    return worst[" cpu"], worst[""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000],
                        help="shop sizes (customers)")
    parser.add_argument("--journeys", nargs="+", default=list(JOURNEYS), choices=list(JOURNEYS))
    parser.add_argument("--statements", type=int, default=0, metavar="N",
                        help="after each run, its N slowest SQL statements (wall seconds, stage)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N",
                        help="each journey's cold and steady runs N times from a fresh start; the exponents "
                             "and goals use each stage's median")
    parser.add_argument("--unsent", action="store_true",
                        help="leave the cold run's messages open: the steady run adopts them (its send tasks died)")
    parser.add_argument("--shared-buffers", default="1GB", metavar="SIZE",
                        help="the server's buffer cache (default 1GB, a warehouse's share of memory; PostgreSQL's "
                             "own default, 128MB, is smaller than the 1M shop's indexes)")
    args = parser.parse_args(argv)
    import great_expectations  # noqa: F401  (a one-off import per process, kept out of the validate figure)
    import sqlalchemy as sa

    from lifecycle.config import settings
    from lifecycle.warehouse import start_embedded, stop_embedded

    pgdata = settings().state_dir / "bench" / "plan_scale"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(action="ignore"):  # pgserver: "XDG_RUNTIME_DIR is not set"
        url = start_embedded(pgdata).replace("postgresql://", "postgresql+psycopg2://", 1)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # the buffer cache: set in the data dir, taken on a restart
        conn.exec_driver_sql(f"ALTER SYSTEM SET shared_buffers = '{args.shared_buffers}'")
        restart = conn.execute(sa.text("SELECT pg_size_bytes(current_setting('shared_buffers')) <> pg_size_bytes(:s)"),
                               {"s": args.shared_buffers}).scalar()
    if restart:
        admin.dispose()
        with warnings.catch_warnings(action="ignore"):
            stop_embedded(pgdata)
            url = start_embedded(pgdata).replace("postgresql://", "postgresql+psycopg2://", 1)
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        print(f"shared_buffers {conn.execute(sa.text('SHOW shared_buffers')).scalar()}", flush=True)
    global CPU
    CPU = CpuClock(pgdata)
    try:
        by_size = {}
        for customers in sorted(args.sizes):
            print(f"load average {loadavg()}", flush=True)
            engine = shop_database(admin, url, customers)
            try:
                by_size[customers] = measure_size(engine, customers, args.journeys, args.statements, args.unsent,
                                                  args.repeats)
            finally:
                engine.dispose()
        print(f"load average {loadavg()}")
        cpu, wall = report(by_size)
        print(f"load average {loadavg()}")
        if math.isnan(cpu):
            print("worst growth exponent of a run's total: none (one shop size; give --sizes two or more)")
        else:
            print(f"worst growth exponent of a run's total: {cpu:.2f} in CPU seconds ({wall:.2f} wall clock)")
        return 0
    finally:
        admin.dispose()
        with warnings.catch_warnings(action="ignore"):
            stop_embedded(pgdata)


if __name__ == "__main__":
    raise SystemExit(main())
