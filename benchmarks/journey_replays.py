"""Time budgets that used to be asserts in the journey tests, and DAG parsing time.

    .venv/bin/python benchmarks/journey_replays.py [--journey NAME ...]

Wall-clock limits fail at random on a loaded machine, so the tests no longer assert them; this
script measures the same things on demand (see benchmarks/README.md):

1. starts a fresh embedded PostgreSQL and a real SMTP server, generates the demo shop the tests
   use (600 customers, seed 11, anchor 2026-11-20 UTC) and migrates the lifecycle schema;
2. per journey, replays the runs its end-to-end test replays (the same interval ends, on a copy
   of that shop: a CREATE DATABASE ... TEMPLATE, as the tests do) through
   `lifecycle.replay.run_interval`, email to the SMTP server (a journey that also uses SMS or push
   runs as a dry run: every stage but delivery), and compares the seconds with the
   budget the test used to assert;
3. parses the dags/ folder with Airflow's DagBag, budget 5 s (was in tests/test_dags.py).

Prints one line per journey (runs, seconds, seconds per run, budget, OK/OVER) and exits 1 when
anything is over its budget. The test windows' planted extra rows are not added, so the figures
measure the engine over the same runs on the shared shop. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

A = datetime(2026, 11, 20, tzinfo=UTC)  # the tests' anchor
HOUR, DAY, WEEK = timedelta(hours=1), timedelta(days=1), timedelta(weeks=1)
DAG_PARSE_BUDGET = 5.0


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def consecutive(first_end: datetime, last_end: datetime, every: timedelta) -> list[datetime]:
    ends, end = [], first_end
    while end <= last_end:
        ends.append(end)
        end += every
    return ends


# journey -> (interval length, run ends, budget in seconds): the runs each journey test replays
# and the limit its test asserted (tests/journeys/test_<journey>.py).
BUDGETS = {
    "welcome": (HOUR, consecutive(A - 3 * DAY + HOUR, A, HOUR), 90),
    "browse_abandonment": (HOUR, consecutive(A - 4 * DAY + HOUR, A, HOUR), 90),
    "upsell": (HOUR, consecutive(A - 32 * HOUR, A, HOUR), 90),
    "order_notifications": (HOUR, consecutive(A - 41 * HOUR, A, HOUR), 60),
    "birthday": (DAY, consecutive(utc(2027, 2, 18), utc(2027, 3, 10), DAY), 60),
    "cross_sell": (DAY, consecutive(A - 6 * DAY, A + 3 * DAY, DAY), 45),
    "just_because": (DAY, [A - 2 * DAY, A - DAY, A, A + DAY, utc(2028, 12, 30), utc(2028, 12, 31),
                           utc(2029, 1, 1), utc(2029, 1, 2)], 60),
    "product_recommendations": (WEEK, [A - 11 * DAY, A - 4 * DAY, A - 2 * DAY, A + 3 * DAY], 45),
    "referral": (DAY, [A - 182 * DAY, A - 100 * DAY] + [A + i * DAY for i in range(-2, 7)], 45),
    "replenishment": (DAY, consecutive(A - 4 * DAY, A, DAY), 45),
    "seasonal_offer": (DAY, consecutive(utc(2026, 11, 30), utc(2026, 12, 5), DAY) + [utc(2026, 12, 27)]
                       + consecutive(utc(2027, 11, 17), utc(2027, 11, 22), DAY) + [utc(2027, 11, 27)], 60),
}


def replay(engine, journey: str, every: timedelta, ends: list[datetime], smtp_port: int) -> tuple[float, str]:
    from lifecycle.channels.email import EmailChannel
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.replay import run_interval
    from lifecycle.spec import load_spec

    spec = load_spec(SEGMENTS_DIR / f"{journey}.sql")
    # Email goes to the SMTP server; a journey that also uses SMS/push runs as a dry run (every
    # stage but delivery: the tests' provider servers are not started here).
    mode = "live" if spec.channels <= {"email"} else "dry"
    started = time.perf_counter()
    for end in ends:
        run_interval(engine, spec, end - every, end, lambda _name: EmailChannel("127.0.0.1", smtp_port), mode=mode)
    return time.perf_counter() - started, mode


def dag_parse_seconds() -> float:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="lifecycle-bench-airflow-"))
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    seconds = time.perf_counter() - started
    if bag.import_errors or not bag.dags:
        raise SystemExit(f"DAG folder did not parse: {bag.import_errors or 'no DAGs found'}")
    print(f"DagBag: {len(bag.dags)} DAGs")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--journey", action="append", choices=sorted(BUDGETS), help="only these (repeatable)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("LIFECYCLE_SIGNING_KEY", "benchmark-signing-key-" + secrets.token_hex(8))

    import sqlalchemy as sa

    from lifecycle import demo_shop, schema
    from lifecycle.smtp_sink import RecordingSMTPServer
    from lifecycle.warehouse import start_embedded, stop_embedded

    data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-pgdata-"))
    admin_url = start_embedded(data_dir).replace("postgresql://", "postgresql+psycopg2://", 1)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    over = []
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql('CREATE DATABASE "shop_template"')
        template = sa.create_engine(sa.make_url(admin_url).set(database="shop_template"))
        demo_shop.generate(template, A, customers=600, seed=11)
        schema.migrate(template)
        template.dispose()
        print(f"{'journey':<26}{'runs':>5}{'seconds':>9}{'s/run':>7}{'budget':>8}")
        with RecordingSMTPServer() as smtp:
            for journey in args.journey or BUDGETS:
                every, ends, budget = BUDGETS[journey]
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{journey}" TEMPLATE "shop_template"')
                engine = sa.create_engine(sa.make_url(admin_url).set(database=journey))
                seconds, mode = replay(engine, journey, every, ends, smtp.port)
                engine.dispose()
                verdict = "OK" if seconds < budget else "OVER"
                over += [journey] if verdict == "OVER" else []
                print(f"{journey:<26}{len(ends):>5}{seconds:>9.1f}{seconds / len(ends):>7.2f}{budget:>8}  {verdict}"
                      + ("  (dry run: uses SMS/push)" if mode == "dry" else ""))
        parse = dag_parse_seconds()
        print(f"{'DAG parsing (DagBag)':<26}{'':>5}{parse:>9.1f}{'':>7}{DAG_PARSE_BUDGET:>8.0f}  "
              f"{'OK' if parse < DAG_PARSE_BUDGET else 'OVER'}")
        over += ["dag parsing"] if parse >= DAG_PARSE_BUDGET else []
    finally:
        admin.dispose()
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    if over:
        print("over budget: " + ", ".join(over))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
