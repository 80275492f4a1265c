"""Backfills through a real Airflow, not `dag.test()`: an api-server, a scheduler
(LocalExecutor) and a dag-processor run as subprocesses, and `airflow backfill create` on the
command line replays past intervals of a journey against the demo shop (real PostgreSQL)
and a real SMTP server running in this test process.

Proves: a backfill replays one journey run per data interval and delivers each intended
message once; the same backfill again (`--reprocess-behavior completed`) re-runs every
interval and sends nothing new; a backfill with `--dag-run-conf '{"dry_run": true}'`
records dry_run messages and delivers nothing.

Backfills use `--max-active-runs 1`: a journey's intervals build on each other (a run plans
the steps of enrollments that earlier intervals made), so they must replay in order, as the
scheduler ran them. Airflow's default (10 at once) lets a later interval plan before an
earlier one has enrolled; the messages it misses go out on a later run instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

# Starting a whole Airflow is slow: this module runs on the embedded warehouse only (the
# engine's SQL runs on both servers in test_dags.py and the other modules).
pytestmark = [pytest.mark.parametrize("shop_db", ["embedded"], indirect=True), pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
START_TIMEOUT = 120  # api-server up and the DAGs parsed
RUN_TIMEOUT = 300  # one backfill, from `backfill create` until its runs finished
TERMINAL = {"success", "failed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not found)"


class Airflow:
    """An Airflow made of subprocesses sharing one AIRFLOW_HOME, and a small client for it."""

    SERVICES = ("api-server", "scheduler", "dag-processor")

    def __init__(self, home: Path, env: dict[str, str], api_port: int) -> None:
        self.home, self.env, self.api = home, env, f"http://127.0.0.1:{api_port}"
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ processes
    def cli(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-5000:]}")
        return done

    def start(self) -> None:
        for name in self.SERVICES:
            with open(self.home / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(
                    [AIRFLOW, name], env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: stop() reaches its task processes too
                )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the group (task processes, uvicorn workers)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"----- {name}.log (tail)\n{_tail(self.home / f'{name}.log')}" for name in self.procs)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"airflow {name} exited with {proc.returncode}\n{self.logs()}")

    # ------------------------------------------------------------------ REST API (all admins, no login)
    def get(self, path: str, **params) -> dict:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        url = f"{self.api}/api/v2/{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)

    def wait_until_ready(self, dag_ids: list[str]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive()
            try:
                for dag_id in dag_ids:
                    self.get(f"dags/{dag_id}")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # api-server not listening yet (URLError), or DAG not parsed yet (HTTPError 404)
            if time.monotonic() > deadline:
                pytest.fail(f"DAGs {dag_ids} not parsed and served within {START_TIMEOUT}s\n{self.logs()}")
            time.sleep(1)

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", order_by="logical_date", limit=100)["dag_runs"]

    def _wait(self, done, what: str, dag_id: str) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not done():
            self.check_alive()
            if time.monotonic() > deadline:
                states = {r["dag_run_id"]: r["state"] for r in self.dag_runs(dag_id)}
                pytest.fail(f"timed out after {RUN_TIMEOUT}s waiting for {what}; runs: {states}\n{self.logs()}")
            time.sleep(1)

    def backfill(self, dag_id: str, *args: str) -> dict:
        """`airflow backfill create --dag-id DAG ARGS`, then wait until all its runs finished."""
        earlier = self.get("backfills", dag_id=dag_id)["backfills"]
        for b in earlier:  # Airflow allows one unfinished backfill per DAG; the scheduler marks
            # a backfill complete up to 30 s after its last run finished
            self._wait(lambda b=b: self.get(f"backfills/{b['id']}")["completed_at"] is not None,
                       f"backfill {b['id']} of {dag_id} to be marked complete", dag_id)
        self.cli("backfill", "create", "--dag-id", dag_id, *args)
        (backfill,) = [b for b in self.get("backfills", dag_id=dag_id)["backfills"]
                       if b["id"] not in {e["id"] for e in earlier}]
        # Its runs were created (or cleared) queued in the same transaction as the backfill:
        # from now on, a run of the DAG in a terminal state is one this backfill ran.
        self._wait(lambda: all(r["state"] in TERMINAL for r in self.dag_runs(dag_id)),
                   f"the runs of backfill {backfill['id']} of {dag_id} to finish", dag_id)
        return backfill

    def explain_failures(self, dag_id: str, runs: list[dict]) -> str:
        """The task instances of these runs that did not succeed, with the tail of their logs."""
        out = []
        for run in runs:
            if run["state"] == "success":
                continue
            tis = self.get(f"dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
            for ti in tis:
                if ti["state"] not in ("success", "skipped", "removed"):
                    out.append(f"{run['dag_run_id']} {ti['task_id']}[{ti['map_index']}]: {ti['state']}")
                    for log in sorted((self.home / "logs").glob(
                            f"dag_id={dag_id}/run_id={run['dag_run_id']}/task_id={ti['task_id']}/**/*.log")):
                        out.append(_tail(log, 30))
        return "\n".join(out) or "(no failed task instances)"


@pytest.fixture(scope="module")
def metadata_db(embedded_server_url):
    """Airflow's metadata DB: a fresh database on the embedded PostgreSQL. On SQLite, the
    scheduler runs these DAGs too, but `airflow backfill create` failed with "database is
    locked" while the scheduler was writing (SQLite allows one writer at a time)."""
    name = f"lifecycle_airflow_{secrets.token_hex(4)}"
    admin = sa.create_engine(embedded_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield sa.make_url(embedded_server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="module")
def airflow(shop_db, metadata_db):
    """A running Airflow whose tasks use this module's demo shop and SMTP server."""
    from lifecycle.dag_factory import POOLS
    from lifecycle_demo.cli import airflow_env
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    engine, planted, anchor = shop_db
    state_dir = Path(tempfile.mkdtemp(prefix="lifecycle-backfill-"))
    smtp = RecordingSMTPServer().start()
    api_port = _free_port()
    # Nothing of this test session's own Airflow config (conftest's AIRFLOW_HOME) leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(airflow_env(state_dir, engine.url.render_as_string(hide_password=False), smtp.port))
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Airflow's children run `airflow`
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",  # this machine has 2 cores
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # No scheduled runs, only the backfills under test (unpausing a DAG would otherwise
        # schedule its latest interval, which would send as of today).
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # Tasks talk to the Execution API on the api-server. Every port is private to this
        # test: the scheduler's log server (default 8793) and the api-server must not collide.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # the test reads the REST API without login
    })
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True)
    af = Airflow(home, env, api_port)
    try:
        af.cli("db", "migrate")
        af.start()
        pools = home / "pools.json"  # the pools the send tasks run in
        pools.write_text(json.dumps({name: {"slots": slots, "description": "lifecycle sends"}
                                     for name, slots in POOLS.items()}))
        af.cli("pools", "import", str(pools))
        af.wait_until_ready(["review_request", "win_back"])
        yield af, engine, smtp
    finally:
        af.stop()
        smtp.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def day(d: int) -> datetime:
    return datetime(2026, 11, d, tzinfo=UTC)


def test_backfill_replays_each_interval_and_the_same_backfill_again_sends_nothing_new(airflow):
    af, engine, smtp = airflow
    from lifecycle.channels.email import message_id_for

    af.cli("dags", "unpause", "review_request")  # the scheduler runs no task of a paused DAG
    # An interval timetable: --from-date/--to-date select *logical dates* (= interval starts),
    # both inclusive. 16..19 are the daily intervals [16, 17) .. [19, 20); the last one ends
    # at the demo shop's anchor.
    window = ["--from-date", "2026-11-16", "--to-date", "2026-11-19", "--max-active-runs", "1"]
    intervals = [(day(d), day(d + 1)) for d in range(16, 20)]

    first = af.backfill("review_request", *window)
    runs = af.dag_runs("review_request")
    assert [r["state"] for r in runs] == ["success"] * 4, af.explain_failures("review_request", runs)
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert [(datetime.fromisoformat(r["data_interval_start"]), datetime.fromisoformat(r["data_interval_end"]))
            for r in runs] == intervals
    run_ids = [r["dag_run_id"] for r in runs]

    audit = rows(engine, "SELECT run_id, interval_start, interval_end, status, mode, finished_at "
                         "FROM lifecycle.runs WHERE journey = 'review_request' ORDER BY interval_start")
    assert [(a.run_id, a.interval_start, a.interval_end, a.status, a.mode) for a in audit] == [
        (run_id, start, end, "ok", "live") for run_id, (start, end) in zip(run_ids, intervals, strict=True)]

    sent = rows(engine, """
        SELECT m.idempotency_key, m.step, m.run_id, c.email FROM lifecycle.messages m
        JOIN shop.customers c ON c.customer_id::text = m.customer_id
        WHERE m.journey = 'review_request' AND m.status = 'sent'""")
    assert len(sent) > 0, "the window has review requests due"
    assert {m.run_id for m in sent} <= set(run_ids)
    assert scalar(engine, "SELECT count(*) FROM lifecycle.messages WHERE status IN ('planned', 'claimed')") == 0
    received = list(smtp.messages)
    # Every intended message arrived exactly once: the Message-ID derives from the idempotency
    # key (journey, enrollment, step, channel). The entry key is the order, so a customer with
    # two orders due gets two requests: (recipient, step) pairs match the audit, not unique.
    got_ids = Counter(m.message()["Message-ID"] for m in received)
    assert got_ids == Counter(message_id_for(m.idempotency_key) for m in sent)
    assert max(got_ids.values()) == 1
    got_pairs = Counter((rcpt.lower(), m.message()["X-Lifecycle-Step"]) for m in received for rcpt in m.rcpt_tos)
    assert got_pairs == Counter((m.email.lower(), m.step) for m in sent)

    # The same backfill again: Airflow clears and re-runs every interval (same run ids) ...
    second = af.backfill("review_request", *window, "--reprocess-behavior", "completed")
    assert second["id"] != first["id"]
    rerun = af.dag_runs("review_request")
    assert [r["dag_run_id"] for r in rerun] == run_ids
    assert [r["state"] for r in rerun] == ["success"] * 4, af.explain_failures("review_request", rerun)
    created = datetime.fromisoformat(second["created_at"])
    assert all(datetime.fromisoformat(r["start_date"]) > created for r in rerun)
    audit_again = rows(engine, "SELECT run_id, status, finished_at FROM lifecycle.runs "
                               "WHERE journey = 'review_request' ORDER BY interval_start")
    assert [(a.run_id, a.status) for a in audit_again] == [(run_id, "ok") for run_id in run_ids]
    assert all(new.finished_at > old.finished_at for new, old in zip(audit_again, audit, strict=True))
    # ... and nothing new goes out.
    new = rows(engine, "SELECT idempotency_key, status, planned_run_id, run_id FROM lifecycle.messages "
                       "WHERE created_at > :t OR sent_at > :t", t=second["created_at"])
    assert len(smtp.messages) == len(received), new
    assert scalar(engine, "SELECT count(*) FROM lifecycle.messages "
                          "WHERE journey = 'review_request' AND status = 'sent'") == len(sent), new


def test_dry_run_backfill_records_messages_and_delivers_nothing(airflow):
    af, engine, smtp = airflow
    delivered_before = len(smtp.messages)
    af.cli("dags", "unpause", "win_back")
    af.backfill("win_back", "--from-date", "2026-11-18", "--to-date", "2026-11-19", "--max-active-runs", "1",
                "--dag-run-conf", '{"dry_run": true}')
    runs = af.dag_runs("win_back")
    assert [r["state"] for r in runs] == ["success"] * 2, af.explain_failures("win_back", runs)
    assert all(r["conf"] == {"dry_run": True} for r in runs)

    audit = rows(engine, "SELECT interval_start, mode, status FROM lifecycle.runs "
                         "WHERE journey = 'win_back' ORDER BY interval_start")
    assert [tuple(a) for a in audit] == [(day(18), "dry", "ok"), (day(19), "dry", "ok")]
    by_status = dict(rows(engine, "SELECT mode || ':' || status, count(*) FROM lifecycle.messages "
                                  "WHERE journey = 'win_back' GROUP BY 1"))
    assert by_status.get("dry:dry_run", 0) > 0, by_status
    assert not [k for k in by_status if not k.startswith("dry:")], by_status  # no live message at all
    assert "dry:sent" not in by_status, by_status
    assert len(smtp.messages) == delivered_before

    # The validate task's log (a real worker's file) says what it checked, without GX's noise.
    # Backfill run ids (backfill__<date>) repeat across DAGs: an earlier test of the module backfilled
    # another journey over the same dates, so the row is picked by journey as well.
    selected = scalar(engine, "SELECT rows_selected FROM lifecycle.runs "
                              "WHERE journey = 'win_back' AND run_id = :r AND mode = 'dry'", r=runs[0]["dag_run_id"])
    line = f"selected {selected}, valid {selected}, quarantined 0, held no"
    log = task_log(af, "win_back", runs[0]["dag_run_id"], "validate", wait_for=line)
    assert f"selected {selected}, valid {selected}, quarantined 0, held no" in log, log
    assert "great_expectations" not in log, log


def task_log(af: Airflow, dag_id: str, run_id: str, task_id: str, wait_for: str = "", timeout: float = 60) -> str:
    """The task's log files as the worker wrote them; with `wait_for`, read again until that text is
    there (the log is written out by the task's supervisor, which may finish after the run's state)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = sorted((af.home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/**/*.log"))
        text = "\n".join(log.read_text(errors="replace") for log in logs)
        if wait_for in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def start_run_log(af: Airflow, dag_id: str, run_id: str) -> str:
    return task_log(af, dag_id, run_id, "start_run")


def follow(af: Airflow, dag_id: str, command: str) -> None:
    """Run the `airflow ...` command an error message advises, then wait for its runs."""
    args = shlex.split(command)
    assert args[0] == "airflow", command
    if args[1] == "backfill":  # one unfinished backfill per DAG: let earlier ones be marked complete
        for b in af.get("backfills", dag_id=dag_id)["backfills"]:
            af._wait(lambda b=b: af.get(f"backfills/{b['id']}")["completed_at"] is not None,
                     f"backfill {b['id']} of {dag_id} to be marked complete", dag_id)
    af.cli(*args[1:])
    af._wait(lambda: all(r["state"] in TERMINAL for r in af.dag_runs(dag_id)), f"the runs of `{command}`", dag_id)


def test_the_advice_for_replaying_an_interval_replays_exactly_that_interval(airflow):
    """Issue 10 item 7: in Airflow 3.3 `airflow dags trigger --logical-date X` runs the latest
    finished interval, not X's. The engine's errors must advise a command that replays X."""
    af, engine, smtp = airflow
    dag_id = "birthday_ask"
    af.cli("dags", "unpause", dag_id)

    # A manual trigger without a logical date has no data interval: the run fails and says how to replay one.
    af.cli("dags", "trigger", dag_id)
    af._wait(lambda: all(r["state"] in TERMINAL for r in af.dag_runs(dag_id)), "the triggered run", dag_id)
    (failed,) = af.dag_runs(dag_id)
    assert failed["state"] == "failed" and failed["data_interval_start"] is None
    message = start_run_log(af, dag_id, failed["dag_run_id"])
    assert "this run has no data interval" in message, message[-3000:]
    advice = re.search(r"`(airflow [^`]*<interval start>[^`]*)`", message)
    assert advice, message[-3000:]

    follow(af, dag_id, advice[1].replace("<interval start>", "2026-11-17"))
    replayed = [r for r in af.dag_runs(dag_id) if r["dag_run_id"] != failed["dag_run_id"]]
    assert [(r["state"], r["data_interval_start"][:10], r["data_interval_end"][:10]) for r in replayed] == [
        ("success", "2026-11-17", "2026-11-18")], af.explain_failures(dag_id, replayed)
    assert rows(engine, "SELECT interval_start, interval_end, status FROM lifecycle.runs WHERE journey = :j",
                j=dag_id) == [(day(17), day(18), "ok")]

    # The old advice, `dags trigger --logical-date`: Airflow gives the run the latest interval, so
    # the engine refuses it (nothing done) and names the command that replays the date asked for.
    af.cli("dags", "trigger", dag_id, "--logical-date", "2026-11-18T00:00:00+00:00")
    af._wait(lambda: all(r["state"] in TERMINAL for r in af.dag_runs(dag_id)), "the triggered run", dag_id)
    (wrong,) = [r for r in af.dag_runs(dag_id) if (r["logical_date"] or "").startswith("2026-11-18")]
    assert wrong["state"] == "failed" and not wrong["data_interval_start"].startswith("2026-11-18")
    message = start_run_log(af, dag_id, wrong["dag_run_id"])
    assert "was given the logical date 2026-11-18T00:00:00+00:00, but Airflow gave it the interval" in message
    assert len(rows(engine, "SELECT 1 FROM lifecycle.runs WHERE journey = :j", j=dag_id)) == 1  # nothing done
    advice = re.search(r"`(airflow backfill create [^`]*--from-date 2026-11-18 [^`]*)`", message)
    assert advice, message[-3000:]
    assert f"DELETE /api/v2/dags/{dag_id}/dagRuns/{wrong['dag_run_id']}" in message
    delete = urllib.request.Request(f"{af.api}/api/v2/dags/{dag_id}/dagRuns/{wrong['dag_run_id']}", method="DELETE")
    urllib.request.urlopen(delete, timeout=30).close()
    follow(af, dag_id, advice[1])
    assert rows(engine, "SELECT interval_start, interval_end, status FROM lifecycle.runs WHERE journey = :j "
                        "ORDER BY interval_start", j=dag_id) == [(day(17), day(18), "ok"), (day(18), day(19), "ok")]
