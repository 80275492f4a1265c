"""The demo's commands, added to the engine's `lifecycle` command line (this module's `main`
is the `lifecycle` console script, so the engine never imports the demo):

    lifecycle demo [--days 3] [--customers 3000] [--workers 3]   every journey through Airflow
                                                      over past days on the embedded warehouse
    lifecycle env                                     shell exports to use `airflow` on the demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifecycle import cli as engine_cli
from lifecycle.cli import AIRFLOW_DB, DEMO_DB, default_warehouse_url
from lifecycle.config import PROJECT_DIR, settings

DEMO_SEED = 7  # demo_shop.generate's default seed
DEMO_OUT = PROJECT_DIR / "demo_output"
SIGNING_KEY_FILE = "signing_key"  # in the state dir, mode 0600: the demo's links stay valid across calls


def signing_key(state_dir: Path) -> str:
    """The state dir's signing key, made (32 random bytes) the first time and kept: a new key per
    `lifecycle env` would break every unsubscribe link already sent."""
    path = state_dir / SIGNING_KEY_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: two first calls at once cannot both write a key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # readable by others, it could forge unsubscribes
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise SystemExit(f"{path} is empty: delete it and `lifecycle env` makes a new signing key") from None
        return key
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key


def _demo_database(state_dir: Path) -> str:
    """A fresh database on the embedded PostgreSQL; returns its SQLAlchemy URL."""
    import sqlalchemy as sa

    from lifecycle.warehouse import start_embedded

    uri = start_embedded(state_dir / "pgdata").replace("postgresql://", "postgresql+psycopg2://", 1)
    admin = sa.create_engine(uri, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in (DEMO_DB, AIRFLOW_DB):  # the shop + audit tables, and Airflow's metadata
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return sa.make_url(uri).set(database=DEMO_DB).render_as_string(hide_password=False)


def airflow_env(state_dir: Path, warehouse_url: str, smtp_port: int) -> dict[str, str]:
    """Environment for an Airflow that runs this project's DAGs against the demo services."""
    import sqlalchemy as sa

    from lifecycle.warehouse import airflow_conn_json

    metadata_url = sa.make_url(warehouse_url).set(database=AIRFLOW_DB).render_as_string(hide_password=False)
    return {
        "AIRFLOW_HOME": str(state_dir / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LIFECYCLE_CLOCK": "as_of",  # a simulation of past days: each run sends as if on time
        "LIFECYCLE_SIGNING_KEY": settings().signing_key or signing_key(state_dir),
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": airflow_conn_json(warehouse_url),
        "AIRFLOW_CONN_LIFECYCLE_SMTP": json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
             "extra": {"disable_ssl": True, "disable_tls": True}}
        ),
    }


@contextlib.contextmanager
def channel_sinks(engine, out: Path, seed: int):
    """Local servers for the other channels (Twilio-shaped SMS API, a web push service, the
    Meta Graph API), each writing what it receives to a JSON-lines file in `out`; yields the
    AIRFLOW_CONN_* values that point the channels at them."""
    import sqlalchemy as sa
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from lifecycle_demo.sinks.meta_server import MetaAudienceServer
    from lifecycle_demo.sinks.push_server import PushServer, demo_key_lookup
    from lifecycle_demo.sinks.twilio_server import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, TwilioServer

    sms = TwilioServer(jsonl_path=out / "sms.jsonl")
    push = PushServer(key_lookup=demo_key_lookup(engine, seed), jsonl_path=out / "push.jsonl")
    meta = MetaAudienceServer(access_token="demo-token", jsonl_path=out / "meta_audiences.jsonl")
    with sms, push, meta:
        with engine.begin() as conn:  # the demo shop's browsers subscribed to the local push service
            conn.execute(sa.text("UPDATE shop.push_subscriptions SET "
                                 "endpoint = :origin || '/push/' || regexp_replace(endpoint, '^.*/', '')"),
                         {"origin": push.origin})
        vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(  # a fresh demo key, never stored
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        yield {
            "AIRFLOW_CONN_LIFECYCLE_SMS": json.dumps({"conn_type": "http", "host": sms.base_url, "login": DEMO_ACCOUNT_SID,
                                                      "password": DEMO_AUTH_TOKEN, "extra": {"from": "+15005550006"}}),
            "AIRFLOW_CONN_LIFECYCLE_PUSH": json.dumps({"conn_type": "generic", "login": "mailto:ops@shop.example.com",
                                                       "password": vapid,
                                                       # the demo's push service is local (127.0.0.1)
                                                       "extra": {"allow_private": True}}),
            "AIRFLOW_CONN_LIFECYCLE_META": json.dumps({"conn_type": "http", "host": meta.base_url,
                                                       "password": "demo-token"}),
        }


def prepare_airflow(env: dict[str, str], quiet: bool = True) -> None:
    """Point this process at the demo Airflow home, migrate its metadata DB, create the pool."""
    os.environ.update(env)
    if quiet:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    from airflow.models.pool import Pool

    from lifecycle.dag_factory import POOLS

    for name, slots in POOLS.items():
        Pool.create_or_update_pool(name, slots=slots, description="lifecycle sends", include_deferred=False)
    # Write every DAG to the metadata DB once, before parallel workers each sync their DagBag.
    subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)


def interval_ends(cron: str, start: datetime, end: datetime) -> list[datetime]:
    """The schedule's interval ends in (start, end]; a schedule with none there (a weekly
    journey in a 3-day window) gets its latest one before `end`, so every journey runs."""
    from croniter import croniter

    ticks, it = [], croniter(cron, start)
    while (t := it.get_next(datetime)) <= end:
        ticks.append(t)
    return ticks or [croniter(cron, end + timedelta(seconds=1)).get_prev(datetime).replace(fold=0)]


def plan_workers(specs: dict, start: datetime, end: datetime, workers: int) -> list[list[str]]:
    """Split the journeys over `workers` groups with about the same number of runs each
    (longest first, each to the lightest group): hourly journeys dominate."""
    runs = {j: len(interval_ends(s.cron, start, end)) for j, s in specs.items()}
    groups: list[list[str]] = [[] for _ in range(max(1, min(workers, len(runs))))]
    load = [0] * len(groups)
    for journey in sorted(runs, key=lambda j: (-runs[j], j)):
        i = load.index(min(load))
        groups[i].append(journey)
        load[i] += runs[journey]
    return [g for g in groups if g]


def run_window(specs: dict, start: datetime, end: datetime, workers: int) -> list[str]:
    """Run every journey's DAG through Airflow (dag.test) for each interval in [start, end),
    in `workers` parallel processes (each a group of journeys, run one after another)."""
    import threading

    failures: list[str] = []

    def relay(proc: subprocess.Popen, group: list[str]) -> None:
        for line in proc.stdout:  # progress lines, one per finished journey, and FAILED lines
            if line.startswith("FAILED "):
                failures.append(line[len("FAILED "):].strip())
            elif line.strip():
                print(line.rstrip(), flush=True)
        if proc.wait() != 0:
            failures.append(f"demo worker for {' '.join(group)} exited with {proc.returncode}")

    relays = []
    for group in plan_workers(specs, start, end, workers):
        cmd = [sys.executable, "-m", "lifecycle_demo.cli", "demo-worker", "--start", start.isoformat(),
               "--end", end.isoformat(), *group]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        relays.append(threading.Thread(target=relay, args=(proc, group)))
        relays[-1].start()
    for thread in relays:
        thread.join()
    return failures


def _test_with_retry(dag, logical_date: datetime, attempts: int = 3):
    """dag.test, retried when the workers' DAG syncs collide in the metadata DB (before any
    task of the run has started: the collision is in the bookkeeping, not in a send)."""
    from sqlalchemy.exc import DBAPIError, InvalidRequestError

    for attempt in range(1, attempts + 1):
        try:
            return dag.test(logical_date=logical_date)
        except (DBAPIError, InvalidRequestError):
            if attempt == attempts:
                raise
            time.sleep(attempt)


PROGRESS_EVERY = 15.0  # seconds between a journey's progress lines in the demo


def demo_progress(journey: str, done: int, total: int, t0: float, last: float, now=time.perf_counter) -> float:
    """Print `journey  done/total runs, elapsed` when PROGRESS_EVERY seconds passed since the
    last line (the demo takes minutes: say it is moving); return when a line was last printed."""
    moment = now()
    if done >= total or moment - last < PROGRESS_EVERY:
        return last  # the journey's final line says the rest
    print(f"  {journey:<22} {done:>3}/{total} runs  ({moment - t0:.0f}s)", flush=True)
    return moment


def demo_worker(journeys: list[str], start: datetime, end: datetime) -> int:
    """One demo worker: dag.test each journey's DAG for every interval in [start, end)."""
    from airflow.dag_processing.dagbag import DagBag

    from lifecycle.spec import load_all

    specs = {s.journey: s for s in load_all()[0]}
    dags = DagBag(dag_folder=str(PROJECT_DIR / "dags")).dags
    for journey in journeys:
        ends = interval_ends(specs[journey].cron, start, end)
        t0, failed = time.perf_counter(), 0
        last = t0
        for done, interval_end in enumerate(ends, 1):
            run = _test_with_retry(dags[journey], interval_end)
            if run.state != "success":
                failed += 1
                print(f"FAILED {journey} {interval_end:%Y-%m-%d %H:%M}: {run.state}", flush=True)
            last = demo_progress(journey, done, len(ends), t0, last)
        print(f"  {journey:<22} {len(ends):>3} runs  ({time.perf_counter() - t0:.0f}s)"
              + (f"  {failed} failed" if failed else ""), flush=True)
    return 0


# The demo shop's orders are generated before any journey runs, so its customers ignore every
# message: treated and held-out customers convert alike. Said under the lift, so nobody reads a
# demo's lift (or its absence) as a verdict on the journeys.
DEMO_LIFT_NOTE = ("\n  (The demo's customers ignore every message: its orders are generated before any journey "
                  "runs, so the true lift\n  is 0 and the differences above are chance, inside their intervals. "
                  "On real data the same figures measure\n  what the messages add.)")


def results_tables(engine, specs: list, since: datetime, until: datetime) -> str:
    """What the demo's journeys earned (lifecycle.analytics, as the Journeys page shows it): the
    funnel per step and variant, the holdout lift of each journey with a holdout and each step's
    A/B test, for the enrollments that entered in [since, until), as short text tables."""
    from lifecycle import analytics

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def ci(pair, fmt: str = "+.1%") -> str:
        return "" if pair is None else f" [{pair[0]:{fmt}}, {pair[1]:{fmt}}]"

    lines = [f"Funnels (live; enrollments that entered {since:%Y-%m-%d} .. {until:%Y-%m-%d}; step '-': the "
             "journey's cohort and its unattributed conversions):",
             f"  {'journey':<24}{'step':<15}{'var':<4}{'entered':>8}{'sent':>6}{'deliv':>6}{'opened':>7}"
             f"{'clicked':>8}{'conv':>5}{'revenue':>10}"]
    with engine.connect() as conn:
        for r in analytics.funnel(conn, since=since, until=until, mode="live"):
            lines.append(f"  {r['journey']:<24}{r['step'] or '-':<15}{r['variant'] or '':<4}{r['entered']:>8}"
                         f"{r['sent']:>6}{r['delivered']:>6}{r['opened']:>7}{r['clicked']:>8}{r['converted']:>5}"
                         f"{r['revenue']:>10.2f}")
        for spec in (s for s in specs if s.holdout_percent):
            lift = analytics.lift(conn, journey=spec.journey, since=since, until=until, mode="live")
            lines += [f"\nHoldout lift: {spec.journey} ({spec.holdout_percent:g}% of customers held out; "
                      "95% intervals):",
                      f"  {'':<10}{'customers':>10}{'converted':>10}{'rate':>8}{'revenue/customer':>18}"]
            for group, key in (("treated", "treated"), ("held out", "holdout")):
                lines.append(f"  {group:<10}{lift[key + '_n']:>10}{lift[key + '_conversions']:>10}"
                             f"{num(lift[key + '_rate'], '.1%'):>8}"
                             f"{num(lift[key + '_revenue_per_customer'], '.2f'):>18}")
            lines += [f"  absolute lift {num(lift['abs_lift'], '+.1%')}{ci(lift['abs_lift_ci'])} (Newcombe), "
                      f"relative {num(lift['rel_lift'], '+.1%')}{ci(lift['rel_lift_ci'])} (Katz)",
                      f"  revenue per customer {num(lift['revenue_lift'], '+.2f')}"
                      f"{ci(lift['revenue_lift_ci'], '+.2f')} (bootstrap); held-out customers still needed "
                      f"for the interval to exclude 0: {num(lift['holdout_needed'], 'd')}"]
        if any(s.holdout_percent for s in specs):
            lines.append(DEMO_LIFT_NOTE)
        for spec in specs:
            for step in (s for s in spec.steps if s.variants):
                ab = analytics.ab_test(conn, journey=spec.journey, step=step.name, since=since, until=until,
                                       mode="live", spec=spec)
                lines += [f"\nA/B test: {spec.journey} {step.name} (metric {ab['metric']}; "
                          f"{ab['required_n_per_variant']} sends per variant, fixed up front):",
                          f"  {'variant':<9}{'sent':>6}{'clicked':>8}{'converted':>10}{'rate':>8}{'revenue':>10}"]
                for v in ab["variants"]:
                    lines.append(f"  {v['variant']:<9}{v['sent']:>6}{v['clicked']:>8}{v['converted']:>10}"
                                 f"{num(v['rate'], '.1%'):>8}{v['revenue']:>10.2f}")
                if ab["difference"] is not None:
                    lines.append(f"  {ab['compared']}: {ab['difference']:+.1%}{ci(ab['difference_ci'])} (Newcombe)")
                lines.append(f"  decision: {ab['decision']}")
    return "\n".join(lines)

def demo(days: int, customers: int, verbose: bool, workers: int = 3) -> int:
    import logging

    import sqlalchemy as sa

    from lifecycle import schema
    from lifecycle.report import format_summary, journey_summary
    from lifecycle.spec import load_all
    from lifecycle_demo import demo_shop, engagement
    from lifecycle_demo.sinks.smtp_server import EmlSink

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd would log addresses
    anchor = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = anchor - timedelta(days=days)
    print(f"lifecycle demo: simulating {start:%Y-%m-%d} .. {anchor:%Y-%m-%d} (UTC) on an embedded PostgreSQL")
    state_dir = settings().state_dir
    url = _demo_database(state_dir)
    engine = sa.create_engine(url)
    demo_shop.generate(engine, anchor, customers=customers, seed=DEMO_SEED)
    schema.migrate(engine)
    print(f"  demo shop: {customers} customers generated (seeded, planted cases included)")
    outbox = DEMO_OUT / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir(parents=True)
    specs, errors = load_all()
    for error in errors:
        print(f"  BROKEN {error}")
    for old in DEMO_OUT.glob("*.jsonl"):
        old.unlink()
    with EmlSink(outbox) as sink, channel_sinks(engine, DEMO_OUT, DEMO_SEED) as channel_conns:
        prepare_airflow({**airflow_env(state_dir, url, sink.port), **channel_conns}, quiet=not verbose)
        from airflow.dag_processing.dagbag import DagBag

        from lifecycle.dag_factory import DISPATCH_DAG_ID

        dags = DagBag(dag_folder=str(PROJECT_DIR / "dags")).dags
        t0 = time.perf_counter()
        print(f"  running {len(specs)} journeys in {workers} Airflow worker processes ...")
        failures = run_window({s.journey: s for s in specs}, start, anchor, workers)
        print(f"  all journeys ran in {time.perf_counter() - t0:.0f}s")
        # The next morning: the dispatcher sends what waited for the recipient's daytime (SMS).
        morning = anchor + timedelta(hours=9)
        print(f"  {DISPATCH_DAG_ID:<22} sends what waited for {morning:%Y-%m-%d %H:%M} UTC (SMS hours)")
        if dags[DISPATCH_DAG_ID].test(logical_date=morning).state != "success":
            failures.append(f"{DISPATCH_DAG_ID}: failed")
    summary = format_summary(journey_summary(engine))
    # Readers open and click what was sent: real requests to the real web service.
    print("  readers open and click (seeded): requests to the web service's /o/ and /c/ ...")
    with engagement.web_service(url, os.environ.copy(), DEMO_OUT / "web_service.log") as port:
        made = engagement.simulate(port, outbox, DEMO_OUT / "sms.jsonl", DEMO_OUT / "push.jsonl", DEMO_SEED)
    print("  " + ", ".join(f"{n} {what}" for what, n in sorted(made.items())))
    tracked = engagement.engagement_table(engine)
    summary += "\n\nTracked engagement (people only; lifecycle.engagement):\n" + tracked
    summary += "\n\n" + results_tables(engine, specs, start - timedelta(days=365), anchor + timedelta(days=1))
    (DEMO_OUT / "summary.txt").write_text(summary + "\n")
    print(f"\n{summary}\n\nWhat each channel delivered, on disk:")
    print(f"  email            {len(list(outbox.glob('*.eml'))):>5}  {outbox.relative_to(PROJECT_DIR)}/*.eml "
          "(open any in a mail client)")
    for name, file in (("SMS", "sms.jsonl"), ("web push", "push.jsonl"), ("Meta audiences", "meta_audiences.jsonl")):
        path = DEMO_OUT / file
        lines = len(path.read_text().splitlines()) if path.exists() else 0
        print(f"  {name:<16} {lines:>5}  {path.relative_to(PROJECT_DIR)} (one JSON object per request)")
    print(f"audit tables: schema lifecycle in {url}")
    print("Journeys page (funnels, lift, A/B tests): .venv/bin/python -m lifecycle.ui.app, then "
          "http://127.0.0.1:8091/journeys/ (in Airflow: the Journeys menu, /journeys/)")
    for failure in failures:
        print(f"  FAILED RUN {failure}")
    engine.dispose()
    return 1 if failures or errors else 0


def env() -> int:
    for key, value in airflow_env(settings().state_dir, default_warehouse_url(), int(os.environ.get("LIFECYCLE_SMTP_PORT", 1025))).items():
        print(f"export {key}={json.dumps(value) if not value.startswith('{') else repr(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`lifecycle`: the engine's commands and the demo's."""
    parser, sub = engine_cli.parser(description=f"{engine_cli.__doc__}\n{__doc__}")
    p_demo = sub.add_parser("demo", help="run all journeys over past days on the embedded warehouse")
    p_demo.add_argument("--days", type=int, default=3)
    p_demo.add_argument("--customers", type=int, default=3000)
    p_demo.add_argument("--verbose", action="store_true")
    p_demo.add_argument("--workers", type=int, default=3, help="parallel Airflow processes running the journeys")
    p_demo.set_defaults(run=lambda a: demo(a.days, a.customers, a.verbose, a.workers))
    p_worker = sub.add_parser("demo-worker", help=argparse.SUPPRESS)  # internal: one process of `demo`
    p_worker.add_argument("--start", type=datetime.fromisoformat, required=True)
    p_worker.add_argument("--end", type=datetime.fromisoformat, required=True)
    p_worker.add_argument("journeys", nargs="+")
    p_worker.set_defaults(run=lambda a: demo_worker(a.journeys, a.start, a.end))
    sub.add_parser("env", help="print exports for running `airflow` against the demo").set_defaults(run=lambda a: env())
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
