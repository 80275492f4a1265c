"""A journey through Airflow's CeleryExecutor: a real scheduler, api-server and dag-processor,
two Celery workers (separate processes) on Redis, the result backend on the PostgreSQL service,
and a real SMTP server in this test process. One worker is killed (SIGKILL, its whole process
tree: what a lost machine looks like) in the middle of a send batch.

Proves: the run still finishes (Airflow notices the dead task by its missing heartbeats and
retries it on the other worker), no message reaches the SMTP server twice, none is lost (every
planned message ends `sent`, or `failed` with "outcome unknown" when the dead attempt had
claimed it, and such a message is never sent again), the sink received exactly what the audit
rows say, and the sends ran on both workers.

The journey is `birthday_ask` (one email step, no coupon) for one daily interval, on a shop of
generated customers who are all due that day: `LIFECYCLE_CELERY_MESSAGES` of them (default
1,000: two send batches of 500, one per worker; README "CeleryExecutor" has the figures). Redis: the service on 127.0.0.1:6379 (or a `redis-server` this test starts), in a
Redis database no one else uses, with keys and queue names unique to the run.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from conftest import _admin_url, _empty_shop, _fresh_database

from lifecycle_demo.airflow_procs import (
    LATENCY_SETTINGS,
    TERMINAL,
    TEST_SETTINGS,
    Airflow,
    free_port,
    private_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.service]

MESSAGES = int(os.environ.get("LIFECYCLE_CELERY_MESSAGES", "1000"))  # 500 a send batch
JOURNEY = "birthday_ask"  # one email step at once: one message per selected customer
DAY = datetime(2026, 11, 19, tzinfo=UTC)  # the replayed interval [DAY, DAY + 1d)
WORKERS = ("w1", "w2")
HEARTBEAT_TIMEOUT = 20  # s without a heartbeat before the scheduler fails a task (default 300)
RUN_TIMEOUT = 300 + MESSAGES // 10  # the backfill, from `backfill create` until its run finished


def max_unknown_per_kill() -> int:
    """send.py claims (and commits) a window of messages right before handing them to the SMTP
    server and records their outcomes right after: a worker killed mid-batch leaves at most one
    window's outcomes unknown (the workers get this process's LIFECYCLE_* environment)."""
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.send import window_size
    from lifecycle.spec import load_spec

    return window_size(load_spec(SEGMENTS_DIR / f"{JOURNEY}.sql"))


# ------------------------------------------------------------------------------------------- Redis
def _redis_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_server():
    """(host, port) of a Redis: the machine's service on 6379, else one started here (no disk)."""
    if _redis_up("127.0.0.1", 6379):
        yield "127.0.0.1", 6379
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Redis on 127.0.0.1:6379 and no redis-server to start")
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server to start; CeleryExecutor test skipped")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _redis_up("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on port {port} did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def broker(redis_server):
    """A broker URL in an empty Redis database, plus a key prefix and queue name of this run only;
    the run's keys are deleted afterwards (other users of that Redis keep theirs)."""
    import redis

    host, port = redis_server
    tag = f"lifecycle_celery_{secrets.token_hex(4)}"
    for db in random.sample(range(1, 16), 15):
        client = redis.Redis(host=host, port=port, db=db)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        pytest.fail(f"no empty Redis database on {host}:{port} (1-15 all hold keys)")
    try:
        yield {"url": f"redis://{host}:{port}/{db}", "prefix": f"{tag}:", "queue": tag}
    finally:
        for key in client.scan_iter(match=f"{tag}:*", count=1000):
            client.delete(key)
        client.close()


# ------------------------------------------------------------------------------------ the shop
def plant_due_customers(engine, n: int) -> None:
    """n customers with email consent and no birthday, each with a first order 3 days before a
    moment of DAY: `birthday_ask` selects all of them for the interval [DAY, DAY + 1d)."""
    first_orders = DAY - timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO shop.customers (customer_id, email, first_name, last_name, country, timezone, locale,
                                        created_at)
            SELECT i, 'customer' || i || '@example.com', 'Ann' || i, 'Lee', 'GB', 'Europe/London', 'en_GB',
                   CAST(:t AS timestamptz) - interval '30 days'
            FROM generate_series(1, :n) AS i"""), {"n": n, "t": first_orders})
        conn.execute(sa.text("""
            INSERT INTO shop.consents (customer_id, channel, status, double_opt_in_at, source, updated_at)
            SELECT i, 'email', 'opted_in', CAST(:t AS timestamptz) - interval '30 days', 'signup',
                   CAST(:t AS timestamptz) - interval '30 days'
            FROM generate_series(1, :n) AS i"""), {"n": n, "t": first_orders})
        # spread over the day, never on its first instant (the interval is (start, as_of])
        conn.execute(sa.text("""
            INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, currency)
            SELECT i, i, CAST(:t AS timestamptz) + (i * 80000.0 / :n + 1) * interval '1 second',
                   'delivered', 20 + i % 50, 'EUR'
            FROM generate_series(1, :n) AS i"""), {"n": n, "t": first_orders})
        conn.exec_driver_sql("ANALYZE shop.customers, shop.consents, shop.orders")


@pytest.fixture(scope="module")
def warehouse(request):
    """An empty shop (migrated lifecycle schema) on the PostgreSQL service, with MESSAGES due customers."""
    engine, drop = _empty_shop(_admin_url(request, "service"))
    try:
        plant_due_customers(engine, MESSAGES)
        yield engine
    finally:
        drop()


@pytest.fixture(scope="module")
def metadata_db(request):
    """Airflow's metadata database (and Celery's result backend) on the PostgreSQL service."""
    url, drop = _fresh_database(_admin_url(request, "service"))
    yield url
    drop()


# ------------------------------------------------------------------------------------ Airflow
class CeleryAirflow(Airflow):
    """lifecycle_demo.airflow_procs' Airflow (api-server, scheduler, dag-processor) plus Celery workers."""

    def start_worker(self, name: str) -> None:
        # its own process group (airflow_procs.spawn): its pool and task processes die with it
        self.spawn(f"worker-{name}", ["celery", "worker", "--concurrency", "1", "--celery-hostname",
                                      self.worker_name(name), "--queues", self.env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"],
                                      "--skip-serve-logs", "--without-mingle", "--without-gossip"])

    def worker_name(self, name: str) -> str:
        return f"{name}@{self.env['AIRFLOW__OPERATORS__DEFAULT_QUEUE']}"

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker and every process under it, as if its machine died."""
        proc = self.procs.pop(f"worker-{name}")
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:  # a task process that left the group, too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
        self.killed = proc

    def running_tasks(self, name: str) -> set[str]:
        """Task instance ids whose task process runs under this worker (`airflow worker -- <id>`)."""
        ids = set()
        try:
            for child in psutil.Process(self.procs[f"worker-{name}"].pid).children(recursive=True):
                try:
                    title = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if title.startswith("airflow worker -- "):
                    ids.add(title.split()[-1])
        except psutil.NoSuchProcess:
            pass
        return ids

    def task_instances(self, run_id: str) -> list[dict]:
        return self.get(f"dags/{JOURNEY}/dagRuns/{run_id}/taskInstances", limit=1000)["task_instances"]


@pytest.fixture(scope="module")
def airflow(warehouse, metadata_db, broker):
    from lifecycle.dag_factory import POOLS
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    state_dir = Path(tempfile.mkdtemp(prefix="lifecycle-celery-"))
    smtp = RecordingSMTPServer().start()
    backend = sa.make_url(metadata_db).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    # README's recommended loop timings (a Celery slot is held by the task's supervisor too);
    # LIFECYCLE_CELERY_DEFAULTS=1 runs with Airflow's own, for an A/B of the pick-up gap
    latency = {} if os.environ.get("LIFECYCLE_CELERY_DEFAULTS") else LATENCY_SETTINGS
    celery = {
        # a dead worker's task is failed (and retried) after this long without a heartbeat
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        "AIRFLOW__CELERY__BROKER_URL": broker["url"],
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": broker["prefix"],
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": broker["queue"],
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{backend}",
        # Celery records which worker ran each task (celery_taskmeta.worker)
        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({"result_extended": True}),
    }
    env = private_env(state_dir, warehouse.url.render_as_string(hide_password=False), smtp.port, metadata_db,
                      executor="CeleryExecutor", **TEST_SETTINGS, **latency, **celery)
    af = CeleryAirflow(env, run_timeout=RUN_TIMEOUT)
    af.killed = None
    try:
        t0 = time.monotonic()
        af.start()
        t1 = time.monotonic()
        for name in WORKERS:
            af.start_worker(name)
        af.wait_until_ready([JOURNEY])
        af.create_pools(POOLS)
        print(f"\nairflow: db migrate and services started {t1 - t0:.1f}s, workers up and DAGs served "
              f"{time.monotonic() - t1:.1f}s")
        yield af, smtp, sa.create_engine(metadata_db)
    finally:
        af.stop()
        if af.killed is not None and af.killed.poll() is None:
            af.killed.kill()
        smtp.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------ the test
def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def batch_progress(engine) -> dict[int, tuple[int, int]]:
    """batch_no -> (messages sent, messages still planned)."""
    return {r.batch_no: (r.done, r.open) for r in rows(engine, """
        SELECT batch_no, count(*) FILTER (WHERE status = 'sent') AS done,
               count(*) FILTER (WHERE status = 'planned') AS open
        FROM lifecycle.messages WHERE journey = :j GROUP BY batch_no""", j=JOURNEY)}


def kill_a_worker_mid_batch(af: CeleryAirflow, engine, metadata, run_id: str, timeout: float) -> dict:
    """Wait until a worker runs a send batch that is partly sent, then SIGKILL that worker.
    Returns the killed task instance, its batch number and when it died. Polls the metadata
    database, not the REST API: the api-server also serves the tasks' heartbeats."""
    deadline = time.monotonic() + timeout
    batches, window = None, max_unknown_per_kill()
    while time.monotonic() < deadline:
        af.check_alive()
        running = {name: af.running_tasks(name) for name in WORKERS}
        ids = [i for found in running.values() for i in found]
        tis = {str(r.id): r._asdict() for r in rows(
            metadata, "SELECT id, task_id, map_index, try_number FROM task_instance "
                      "WHERE id = ANY(CAST(:ids AS uuid[])) AND task_id = 'send_email'", ids=ids)} if ids else {}
        if tis and batches is None:  # the descriptors send_email is mapped over
            batches = af.get(f"dags/{JOURNEY}/dagRuns/{run_id}/taskInstances/batches_email/xcomEntries/"
                             "return_value", map_index=-1)["value"]
        progress = batch_progress(engine) if tis else {}
        for name, found in running.items():
            for ti in (tis[i] for i in found if i in tis):
                batch_no = batches[ti["map_index"]]["batch"]
                done, open_ = progress.get(batch_no, (0, 0))
                if done >= 1 and open_ >= 2 * window:  # well inside the batch: sent some, windows to go
                    died_at = datetime.now(UTC)
                    af.kill_worker(name)
                    return {"worker": name, "ti": ti, "batch": batch_no, "died_at": died_at, "done_before": done}
        time.sleep(0.3)
    pytest.fail(f"no send batch ran within {timeout}s\n{af.logs()}")


@pytest.mark.timeout(600 + 2 * RUN_TIMEOUT)  # Airflow's start, then RUN_TIMEOUT to the kill and after it
def test_a_worker_killed_mid_batch_loses_and_doubles_nothing(airflow, warehouse):
    from lifecycle.channels.email import message_id_for

    af, smtp, metadata = airflow
    started = time.monotonic()
    af.unpause(JOURNEY)
    af.create_backfill(JOURNEY, DAY.date().isoformat(), DAY.date().isoformat(), max_active_runs=1)
    (run,) = af.dag_runs(JOURNEY)
    killed = kill_a_worker_mid_batch(af, warehouse, metadata, run["dag_run_id"], timeout=RUN_TIMEOUT)
    killed_at = time.monotonic()

    deadline = time.monotonic() + RUN_TIMEOUT
    while (run := af.dag_runs(JOURNEY)[0])["state"] not in TERMINAL:
        af.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"run not finished {RUN_TIMEOUT}s after the kill: {run['state']}\n{af.logs()}")
        time.sleep(af.poll)
    finished = time.monotonic()
    print(f"\ncelery run of {MESSAGES} messages: kill after {killed_at - started:.0f}s, "
          f"finished after {finished - started:.0f}s; load average {os.getloadavg()}")
    print(af.timeline(JOURNEY, run))
    assert run["state"] == "success", af.explain_failures(JOURNEY, [run])

    # Airflow: the killed try failed for its missing heartbeat, the retry ran on the other worker.
    (retried,) = [ti for ti in af.task_instances(run["dag_run_id"])
                  if ti["task_id"] == "send_email" and ti["map_index"] == killed["ti"]["map_index"]]
    assert retried["state"] == "success" and retried["try_number"] == killed["ti"]["try_number"] + 1
    # Celery's own record of where each send ran (result_extended: worker, args = the workload)
    ran_on: dict[tuple[int, int], str] = {}
    for worker, args in rows(metadata, "SELECT worker, args FROM celery_taskmeta WHERE worker IS NOT NULL"):
        (workload,) = json.loads(bytes(args))  # execute_workload(workload.model_dump_json())
        ti = json.loads(workload)["ti"]
        if ti["task_id"] == "send_email":
            ran_on[(ti["map_index"], ti["try_number"])] = worker.split("@")[0]
    survivor = next(w for w in WORKERS if w != killed["worker"])
    key = killed["ti"]["map_index"]
    assert ran_on[(key, killed["ti"]["try_number"])] == killed["worker"]
    assert ran_on[(key, retried["try_number"])] == survivor
    assert set(ran_on.values()) == set(WORKERS), ran_on  # the sends were spread over both workers

    # The audit rows: every planned message has a final status; none waits, none is claimed.
    messages = rows(warehouse, """
        SELECT m.message_id, m.idempotency_key, m.status, m.reason, m.batch_no, m.claim_token, m.claimed_at,
               c.email
        FROM lifecycle.messages m JOIN shop.customers c ON c.customer_id::text = m.customer_id
        WHERE m.journey = :j""", j=JOURNEY)
    assert len(messages) == MESSAGES  # one per planted customer
    by_status = Counter(m.status for m in messages)
    unknown = [m for m in messages if m.status == "failed" and m.reason.startswith("outcome unknown")]
    assert by_status == {"sent": MESSAGES - len(unknown), **({"failed": len(unknown)} if unknown else {})}, by_status
    assert len(unknown) <= max_unknown_per_kill() and {m.batch_no for m in unknown} <= {killed["batch"]}

    # The sink: nothing twice, and exactly the sent messages (plus, possibly, the unknown one,
    # if the worker died after the server accepted it and before the outcome was recorded).
    received = Counter(m.message()["Message-ID"] for m in smtp.messages)
    assert max(received.values()) == 1, [k for k, n in received.items() if n > 1]
    sent = {message_id_for(m.idempotency_key) for m in messages if m.status == "sent"}
    maybe = {message_id_for(m.idempotency_key) for m in unknown}
    assert sent <= set(received) <= sent | maybe
    recipients = Counter(r.lower() for m in smtp.messages for r in m.rcpt_tos)
    assert set(recipients.values()) == {1}
    assert {m.email for m in messages if m.status == "sent"} <= set(recipients)

    # The kill was mid-batch: the killed batch was sent by two attempts (two claim tokens), the
    # dead one before the kill and the retry after it.
    in_batch = [m for m in messages if m.batch_no == killed["batch"] and m.status == "sent"]
    before = {m.claim_token for m in in_batch if m.claimed_at < killed["died_at"]}
    after = {m.claim_token for m in in_batch if m.claimed_at > killed["died_at"]}
    assert len(before) == 1 and len(after) == 1 and before != after, (before, after)
    assert sum(1 for m in in_batch if m.claim_token in before) >= killed["done_before"]

    audit = rows(warehouse, "SELECT status, mode FROM lifecycle.runs WHERE journey = :j", j=JOURNEY)
    assert [tuple(a) for a in audit] == [("ok", "live")]
