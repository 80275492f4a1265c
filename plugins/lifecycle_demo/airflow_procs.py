"""A whole Airflow as subprocesses, for the tests and benchmarks that need a real scheduler: an
api-server, a scheduler and a dag-processor sharing one AIRFLOW_HOME (with the executor the
environment names), and a small client for their REST API and command line.

Used by tests/test_backfill.py, tests/test_celery_executor.py and benchmarks/naive_peer.py; the
engine never imports it. Every Airflow made here is private: its own metadata database, its own
ports, none of the caller's AIRFLOW_* settings, so several can share a machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from lifecycle_demo.ports import free_port

VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")
SERVICES = ("api-server", "scheduler", "dag-processor")
TERMINAL = frozenset({"success", "failed"})

# Settings for the tests' Airflows (Airflow's defaults in brackets); production keeps the defaults.
TEST_SETTINGS = {
    # The DAG files do not change while Airflow runs: parse them once, not every 30 s [30 s, in 2
    # processes]. (No measurable difference in test_backfill's time, A/B at load 6-8; nor did a
    # scheduler idle sleep of 0.2 s [1 s] make one: the tasks started 0.5 s sooner each, but the
    # idle scheduler and its database used 12% of a core instead of 4%.)
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
    # a task's calls to the Execution API on the api-server [5 s]: on a loaded 2-core machine a
    # task failed before it started, with ReadTimeout
    "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
}


# Task-to-task latency: what README (Operations) recommends for production, and what
# benchmarks/naive_peer.py runs both of its sides with (Airflow's defaults in brackets).
LATENCY_SETTINGS = {
    # A task's supervisor (airflow.sdk.execution_time.supervisor, the LocalExecutor worker or Celery
    # slot that runs it) waits in select() for at most this long per loop. When the task process
    # has closed its sockets but is not yet reaped as it exits, nothing is left to wake that
    # select: the supervisor, and so the executor slot, stays taken up to this long after the task
    # finished (win_back's start_run: 0.3 s of work, 5.4 s of slot). [5 s]
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    # ... which is also the heartbeat period: keep the tolerance of an unreachable api-server at
    # about 15 s of failed heartbeats (3 x 5 s before). [3]
    "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS": "15",
    # An idle scheduler loop sleeps this long, so a task whose upstream just finished waits for
    # up to it before it is scheduled: about 0.6 s of every step of a run at the default. An idle
    # deployment (scheduler, api-server, dag-processor, its database) used 8-11% of a core at 0.2 s,
    # 16-18% at 0.1 s, 3-5% at 1 s (naive_peer's idle figure, 2 cores). [1 s]
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
}


def _utc(day: str) -> str:
    """A date or an ISO time as the REST API takes it: midnight UTC for a day alone."""
    moment = datetime.fromisoformat(day)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


class AirflowError(RuntimeError):
    """Airflow did not do what was asked; the message carries the tail of its logs."""


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not found)"


def private_env(state_dir: Path, warehouse_url: str, smtp_port: int, metadata_url: str, *,
                executor: str = "LocalExecutor", **settings: str) -> dict[str, str]:
    """The environment of an Airflow of its own that runs this project's DAGs against the given
    warehouse and SMTP server: the demo's settings (lifecycle_demo.cli.airflow_env), the
    metadata database `metadata_url`, free ports for the api-server and the scheduler's log
    server (default 8793, shared by every Airflow on the machine otherwise), all DAGs paused and
    none scheduled (only the backfills and triggers asked for run), and the REST API open to
    every caller as an admin. `settings` (AIRFLOW__...=value) go last."""
    from lifecycle_demo.cli import airflow_env

    api_port = free_port()
    # Without PYTHONDONTWRITEBYTECODE (set in some shells and CI images): the first task process
    # writes the engine's .pyc files and every later one reads them instead of compiling the engine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(airflow_env(state_dir, warehouse_url, smtp_port))
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Airflow's children run `airflow`
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": "4",  # 2 cores
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # No scheduled runs (unpausing a DAG would otherwise schedule its latest interval, which
        # would send as of today).
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # Tasks talk to the Execution API on the api-server.
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    })
    env.update(settings)
    return env


class Airflow:
    """Airflow's services as subprocesses of one environment (`private_env`), and a client for them.

    Waits raise AirflowError with the services' log tails when Airflow takes longer than
    `start_timeout` to serve the DAGs or `run_timeout` to finish what was asked."""

    def __init__(self, env: Mapping[str, str], *, start_timeout: float = 120, run_timeout: float = 300,
                 poll: float = 0.5) -> None:
        self.env = dict(env)
        self.home = Path(self.env["AIRFLOW_HOME"])
        self.api = f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}"
        self.start_timeout, self.run_timeout, self.poll = start_timeout, run_timeout, poll
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ processes
    def cli(self, *args: str, timeout: float = 600) -> str:
        """`airflow ARGS`; its standard output."""
        done = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AirflowError(f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n"
                               f"{done.stderr[-5000:]}")
        return done.stdout

    def spawn(self, name: str, args: list[str]) -> None:
        """A long-running `airflow ARGS` named `name`, logging to HOME/NAME.log, in its own process
        group: stop() reaches its task processes (and uvicorn's workers) too."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        """`airflow db migrate`, then the api-server, the scheduler and the dag-processor."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("db", "migrate")
        for name in SERVICES:
            self.spawn(name, [name])

    def stop(self, grace: float = 5) -> None:
        """SIGTERM to each service's process group, `grace` seconds to finish, then SIGKILL to what
        is left (the api-server alone took 8 s to shut down gracefully, at load 10)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"----- {name}.log (tail)\n{tail(self.home / f'{name}.log')}" for name in self.procs)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AirflowError(f"airflow {name} exited with {proc.returncode}\n{self.logs()}")

    # ------------------------------------------------------------------ REST API (all admins, no login)
    def request(self, method: str, path: str, body: dict | None = None, **params) -> dict | None:
        """One call to /api/v2/PATH. A GET that times out is asked again (twice): on a loaded machine
        the api-server is slow, as it also serves every task's Execution API calls."""
        url = f"{self.api}/api/v2/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(3 if method == "GET" else 1):
            req = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    payload = resp.read()
                return json.loads(payload) if payload else None
            except (TimeoutError, urllib.error.URLError) as exc:
                timed_out = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
                if not timed_out or attempt == 2 or method != "GET":
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, **params)

    def wait_until_ready(self, dag_ids: list[str]) -> None:
        """Until the api-server answers and serves each DAG (the dag-processor has parsed them)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            self.check_alive()
            try:
                for dag_id in dag_ids:
                    self.get(f"dags/{dag_id}")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # api-server not listening yet (URLError), or DAG not parsed yet (HTTPError 404)
            if time.monotonic() > deadline:
                raise AirflowError(f"DAGs {dag_ids} not parsed and served within {self.start_timeout}s\n{self.logs()}")
            time.sleep(self.poll)

    def create_pools(self, pools: Mapping[str, int], description: str = "lifecycle sends") -> None:
        for name, slots in pools.items():
            self.request("POST", "pools", {"name": name, "slots": slots, "description": description})

    def unpause(self, dag_id: str) -> None:
        """The scheduler runs no task of a paused DAG."""
        self.request("PATCH", f"dags/{dag_id}", {"is_paused": False})

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", order_by="logical_date", limit=100)["dag_runs"]

    def wait(self, done: Callable[[], bool], what: str, dag_id: str, timeout: float | None = None) -> None:
        """Until done() (polled), failing with the DAG's run states and the log tails after the timeout."""
        timeout = self.run_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not done():
            self.check_alive()
            if time.monotonic() > deadline:
                states = {r["dag_run_id"]: r["state"] for r in self.dag_runs(dag_id)}
                raise AirflowError(f"timed out after {timeout}s waiting for {what}; runs: {states}\n{self.logs()}")
            time.sleep(self.poll)

    def runs_finished(self, dag_id: str) -> bool:
        runs = self.dag_runs(dag_id)
        return bool(runs) and all(r["state"] in TERMINAL for r in runs)

    def wait_for_runs(self, dag_id: str, what: str = "its runs") -> list[dict]:
        """Until the DAG has runs and all of them finished; returns them (oldest logical date first)."""
        self.wait(lambda: self.runs_finished(dag_id), f"{what} of {dag_id} to finish", dag_id)
        return self.dag_runs(dag_id)

    def close_finished_backfills(self, dag_id: str) -> None:
        """Airflow allows one unfinished backfill per DAG, and its scheduler marks a backfill
        complete only every 30 s. A backfill whose runs all finished is closed here at once,
        through the REST API's cancel (which fails queued runs, of which it has none)."""
        for b in self.get("backfills", dag_id=dag_id)["backfills"]:
            if b["completed_at"] is not None:
                continue
            self.wait(lambda: self.runs_finished(dag_id), f"the runs of backfill {b['id']} to finish", dag_id)
            try:
                self.request("PUT", f"backfills/{b['id']}/cancel")
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # 409: the scheduler marked it complete in the meantime
                    raise

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, *, max_active_runs: int = 1,
                        reprocess: str | None = None, conf: dict | None = None) -> dict:
        """What `airflow backfill create --dag-id DAG --from-date FROM --to-date TO --max-active-runs N
        [--reprocess-behavior R] [--dag-run-conf CONF]` does (the same function of Airflow's), through
        the REST API: an `airflow` CLI process costs 3-10 s. Dates are logical dates (interval
        starts), both inclusive, UTC. Returns the backfill; its runs are created queued (or cleared)."""
        body = {"dag_id": dag_id, "from_date": _utc(from_date), "to_date": _utc(to_date),
                "max_active_runs": max_active_runs, "dag_run_conf": conf,
                **({"reprocess_behavior": reprocess} if reprocess else {})}
        return self.request("POST", "backfills", body)

    def backfill(self, dag_id: str, from_date: str, to_date: str, **options) -> dict:
        """create_backfill, then wait until all its runs finished; returns the backfill."""
        self.close_finished_backfills(dag_id)
        backfill = self.create_backfill(dag_id, from_date, to_date, **options)
        # Its runs were created (or cleared) queued in the same transaction as the backfill:
        # from now on, a run of the DAG in a terminal state is one this backfill ran.
        self.wait_for_runs(dag_id, f"the runs of backfill {backfill['id']}")
        return backfill

    def explain_failures(self, dag_id: str, runs: list[dict]) -> str:
        """The task instances of these runs that did not succeed, with the tail of their logs."""
        out = []
        for run in runs:
            if run["state"] == "success":
                continue
            tis = self.get(f"dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances", limit=1000)["task_instances"]
            for ti in tis:
                if ti["state"] not in ("success", "skipped", "removed"):
                    out.append(f"{run['dag_run_id']} {ti['task_id']}[{ti['map_index']}]: {ti['state']}")
                    out.extend(tail(log, 30) for log in self.task_log_files(dag_id, run["dag_run_id"], ti["task_id"]))
        return "\n".join(out) or "(no failed task instances)"

    def timeline(self, dag_id: str, run: dict) -> str:
        """Where a run's time went: each task's last try, queued, started and ended, in seconds
        from the run's queueing."""
        t0 = datetime.fromisoformat(run["queued_at"])

        def at(stamp: str | None) -> str:
            return f"{(datetime.fromisoformat(stamp) - t0).total_seconds():6.1f}" if stamp else "     -"

        tis = self.get(f"dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances", limit=1000)["task_instances"]
        lines = [f"{dag_id} {run['dag_run_id']}: {run['state']}, started {at(run['start_date'])}, "
                 f"ended {at(run['end_date'])}"]
        lines += [f"  {ti['task_id']:>15}[{ti['map_index']:>2}] try {ti['try_number']}: queued {at(ti['queued_when'])} "
                  f"start {at(ti['start_date'])} end {at(ti['end_date'])}"
                  for ti in sorted(tis, key=lambda t: (t["start_date"] or "", t["map_index"]))]
        return "\n".join(lines)

    def task_log_files(self, dag_id: str, run_id: str, task_id: str) -> list[Path]:
        return sorted((self.home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/**/*.log"))

    def task_log(self, dag_id: str, run_id: str, task_id: str, wait_for: str = "", timeout: float = 60) -> str:
        """The task's log files as the worker wrote them; with `wait_for`, read again until that text
        is there (the task's supervisor writes the log out, and may finish after the run's state)."""
        deadline = time.monotonic() + timeout
        while True:
            text = "\n".join(log.read_text(errors="replace")
                             for log in self.task_log_files(dag_id, run_id, task_id))
            if wait_for in text or time.monotonic() > deadline:
                return text
            time.sleep(self.poll)
