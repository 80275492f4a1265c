"""The demo shop at 100k and 1M customers: parallel blocks and COPY, against the old sequential path.

    .venv/bin/python benchmarks/generate_shop.py [--sizes 100000 1000000] [--workers N] [--no-baseline]

One embedded PostgreSQL, a fresh database per shop (anchor 2026-11-20 UTC, seed 7). First,
side by side at the smallest size, the old path (demo_shop.py as of commit BASELINE_REF, read
from git: one process simulating, a COPY thread, foreign keys dropped for the load, indexes
maintained row by row) and the new one (`generate(..., workers=N)`: blocks of 10,000 customers
simulated by worker processes that COPY over connections of their own, then keys, indexes and
statistics built over parallel connections). Then the new path at each size.

For each shop: seconds, rows (exact counts), rows/s, the CPU seconds of the generator (this
process and its workers) and of the PostgreSQL server (postmaster and all its processes, from
/proc), and the new path's split (simulate + COPY / keys, indexes, ANALYZE). CPU seconds do not
depend on the machine's load; seconds do (the load average is printed around each shop): on a
quiet 2-core machine the seconds approach (generator CPU + server CPU) / 2.

The last line is the seconds for the largest size (goal: 1M customers in under 180 s).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from datetime import UTC, datetime
from pathlib import Path

from proc_cpu import loadavg, postgres_cpu

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
BASELINE_REF = "8c8c75c"  # the last commit with the sequential generator
TABLES = ("products", "product_links", "customers", "consents", "push_subscriptions", "orders", "order_items",
          "carts", "cart_items", "page_views", "reviews", "referrals")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def baseline_module(ref: str) -> types.ModuleType | None:
    """demo_shop.py as it was at `ref`, imported under another name (None without git history)."""
    done = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:plugins/lifecycle_demo/demo_shop.py"],
                          capture_output=True, text=True)
    if done.returncode:
        print(f"no baseline: git show {ref} failed: {done.stderr.strip()}")
        return None
    module = types.ModuleType("lifecycle_demo.demo_shop_before")
    sys.modules[module.__name__] = module
    exec(compile(done.stdout, f"{ref}:plugins/lifecycle_demo/demo_shop.py", "exec"), module.__dict__)
    return module


def measure(label: str, generate, admin, url: str, pgdata: Path, customers: int) -> float:
    import sqlalchemy as sa

    name = f"shop_{customers}_{int(time.time() * 1000) % 10**8}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = sa.create_engine(sa.make_url(url).set(database=name))
    try:
        print(f"{label}: {customers:,} customers (load average {loadavg()}) ...", flush=True)
        cpu, server = own_cpu(), postgres_cpu(pgdata)
        t0 = time.perf_counter()
        generate(engine, ANCHOR, customers=customers)
        seconds = time.perf_counter() - t0
        cpu, server = own_cpu() - cpu, postgres_cpu(pgdata) - server
        with engine.connect() as conn:
            rows = sum(conn.exec_driver_sql(f"SELECT count(*) FROM shop.{t}").scalar() for t in TABLES)
        print(f"  {seconds:7.1f} s  {rows:>12,} rows  {rows / seconds:>9,.0f} rows/s  CPU s: generator {cpu:.1f}, "
              f"PostgreSQL {server:.1f} (on 2 idle cores >= {(cpu + server) / 2:.0f} s)  load average {loadavg()}",
              flush=True)
        return seconds
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="shop sizes (customers)")
    parser.add_argument("--workers", type=int, default=None, help="generator processes (default: one per CPU)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the old path")
    args = parser.parse_args(argv)

    import sqlalchemy as sa

    from lifecycle.warehouse import start_embedded, stop_embedded
    from lifecycle_demo import demo_shop

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    demo_shop.log.addHandler(handler)
    demo_shop.log.setLevel(logging.INFO)
    workers = args.workers or os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-shop-"))
    pgdata = tmp / "pgdata"
    try:
        with warnings.catch_warnings(action="ignore"):  # pgserver: "XDG_RUNTIME_DIR is not set"
            url = start_embedded(pgdata).replace("postgresql://", "postgresql+psycopg2://", 1)
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        print(f"{os.cpu_count()} CPUs; new path: {workers} workers, blocks of {demo_shop.BLOCK_SIZE:,} customers")

        def new(engine, anchor, customers):
            return demo_shop.generate(engine, anchor, customers=customers, workers=workers)

        sizes = sorted(args.sizes)
        before = None if args.no_baseline else baseline_module(BASELINE_REF)
        seconds = {}
        if before is not None:
            old = measure(f"old path ({BASELINE_REF}, one process)", before.generate, admin, url, pgdata, sizes[0])
            seconds[sizes[0]] = measure("new path", new, admin, url, pgdata, sizes[0])
            print(f"{sizes[0]:,} customers, side by side: new path {old / seconds[sizes[0]]:.1f}x faster "
                  f"({old:.1f} s -> {seconds[sizes[0]]:.1f} s)")
        for customers in sizes:
            if customers not in seconds:
                seconds[customers] = measure("new path", new, admin, url, pgdata, customers)
        admin.dispose()
        print(f"load average {loadavg()}")
        largest = sizes[-1]
        print(f"{largest:,} customers generated in {seconds[largest]:.1f} s")
        return 0
    finally:
        with warnings.catch_warnings(action="ignore"):
            stop_embedded(pgdata)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
