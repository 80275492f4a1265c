"""`lifecycle` command line: lint segment files, run the demo, print the journey report.

    lifecycle lint [FILES...] [--warehouse-url URL]   check segment files and their templates (no Airflow
                                                      needed); with a warehouse, run each SELECT (LIMIT 0)
    lifecycle demo [--days 3]                         the whole product on an embedded warehouse
    lifecycle report [--warehouse-url URL]            entered / sent / converted / exited per journey
    lifecycle env                                     shell exports to use `airflow` on the demo
    lifecycle promote JOURNEY                         make a draft journey live (status: live)
    lifecycle migrate [--warehouse-url URL] [--demo-shop]   apply the lifecycle migrations + contact views
    lifecycle init [--warehouse-url URL] [--demo-shop]      create the (embedded) warehouse DB, migrate, create the pools
    lifecycle stop                                    stop the embedded PostgreSQL
    lifecycle preview JOURNEY [--customer ID] [--as-of T] [--step NAME] [--out DIR]
                                                      render one customer's messages to files (writes nothing)
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifecycle.config import CONDITIONS_DIR, PROJECT_DIR, SEGMENTS_DIR, STATE_DIR

DEMO_DB = "lifecycle_demo"
AIRFLOW_DB = "airflow_demo"  # Airflow's metadata on the same embedded server: parallel dag.test workers
DEMO_SEED = 7  # demo_shop.generate's default seed
DEMO_OUT = PROJECT_DIR / "demo_output"
PERIODS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}


# ---------------------------------------------------------------------------- lint
# The run's "now" is :as_of; the clock of the warehouse makes a backfill select today's rows.
WALL_CLOCK = re.compile(r"\b(now\s*\(|current_date\b|current_timestamp\b|clock_timestamp\s*\(|localtimestamp\b|"
                        r"statement_timestamp\s*\(|transaction_timestamp\s*\(|timeofday\s*\()", re.I)
TEXT_TYPES = {"text", "varchar", "bpchar", "citext", "name"}
# information_schema's type names (what stage_segment checks) -> pg_type's (what a cursor reports)
PG_TYPE_NAMES = {"bigint": "int8", "integer": "int4", "smallint": "int2", "text": "text", "character varying": "varchar",
                 "character": "bpchar", "uuid": "uuid", "timestamp with time zone": "timestamptz",
                 "timestamp without time zone": "timestamp", "date": "date"}


def _run_types(names) -> set[str]:
    """The types stage_segment accepts, as pg_type names: lint and the run agree."""
    return {PG_TYPE_NAMES.get(name, name) for name in names}


def lint(paths: list[str], warehouse_url: str | None) -> int:
    from lifecycle.spec import condition_tie_problems, discover

    files = [Path(p) for p in paths] or discover(SEGMENTS_DIR)
    if not files:
        print(f"no segment files in {SEGMENTS_DIR}")
        return 1
    warehouse = _Warehouse(warehouse_url) if warehouse_url else None
    failures = 0
    try:
        for path in files:
            spec, problems = _lint_file(path, warehouse)
            if problems:
                failures += 1
                print(f"FAIL {path}")
                for problem in problems:
                    print(f"     - {problem}")
            else:
                steps = ", ".join(f"{s.name}@{_fmt(s.after)}" for s in spec.steps)
                print(f"ok   {path.name}: {spec.schedule}, steps {steps}")
    finally:
        if warehouse is not None:
            warehouse.dispose()
    print(f"\n{len(files) - failures} ok, {failures} broken")
    if not paths:  # every condition file too, used or not (README "Ties")
        failures += _lint_conditions(condition_tie_problems)
    if warehouse is not None and not warehouse.has_lifecycle:
        print("\nthe warehouse has no `lifecycle` schema (the segments read its contacts and consent views): "
              "run `lifecycle migrate` against it first; the SELECTs were not run")
        failures += 1
    return 1 if failures else 0


def _lint_file(path: Path, warehouse) -> tuple:
    """(spec or None, every problem): the header, the templates, the clock, and the warehouse's view."""
    from lifecycle.spec import SpecError, load_spec

    try:
        spec = load_spec(path)
    except SpecError as exc:
        return None, exc.problems
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is this file's problem
        return None, [f"{type(exc).__name__}: {exc}"]
    problems = [f"SQL line {_file_line(spec, m.start())}: {_clock_name(m)} reads the wall clock: "
                "use :as_of (the run's interval end) so backfills replay the past exactly"
                for m in WALL_CLOCK.finditer(_mask_sql(spec.sql))]
    fields_by_template: dict[str, set[str]] = {}
    for where, channels, template in _messages(spec):
        for channel in channels:
            found, fields = _check_template(template, channel)
            problems += [f"{where} ({template}, {channel}): {p}" for p in found]
            fields_by_template.setdefault(template, set()).update(fields)
    if warehouse is not None and warehouse.has_lifecycle:
        problems += _warehouse_problems(spec, warehouse, fields_by_template)
    return spec, problems


def _messages(spec):
    for step in spec.steps:
        if step.template:
            yield f"steps ({step.name})", step.channels, step.template
    for i, rule in enumerate(spec.exits):
        if rule.template:
            yield f"exit[{i}].then", (rule.channel,), rule.template


def _check_template(template: str, channel: str):
    from lifecycle.render import check_template

    return check_template(template, channel)


def _mask_sql(sql: str) -> str:
    """The SQL with comments and quoted text blanked out, character for character (offsets kept)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731
    return re.sub(r"/\*.*?\*/|--[^\n]*|'(?:[^']|'')*'", blank, sql, flags=re.S)


def _file_line(spec, offset: int) -> str:
    """`line L, column C` in the segment file for a character offset into spec.sql."""
    text = spec.path.read_text(encoding="utf-8")
    start = text.find(spec.sql)
    at = (start if start >= 0 else 0) + offset
    line = text.count("\n", 0, at) + 1
    return f"{line}, column {at - text.rfind(chr(10), 0, at)}"


class _Warehouse:
    """The warehouse lint runs the SELECTs on; whether it has the `lifecycle` schema, asked once."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.engine = sa.create_engine(url)
        with self.engine.connect() as conn:
            self.has_lifecycle = conn.exec_driver_sql(
                "SELECT to_regnamespace('lifecycle') IS NOT NULL").scalar()

    def dispose(self) -> None:
        self.engine.dispose()


def _literal_sql(spec, cursor) -> tuple[str, list[tuple[int, int, int]]]:
    """spec.sql with each bound parameter as the literal the driver would send (this hour's
    values), and the pieces (statement offset, sql offset, length) to map a position back."""
    from lifecycle.run_context import RunContext
    from lifecycle.spec import BIND

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    values = RunContext(spec.journey, "lint", "live", end - PERIODS[spec.schedule], end).binds(spec)
    masked, sql = _mask_sql(spec.sql), spec.sql
    out, pieces, pos = [], [], 0
    for match in BIND.finditer(masked):
        pieces.append((sum(map(len, out)), pos, match.start() - pos))
        out.append(sql[pos:match.start()])
        out.append(cursor.mogrify("%s", (values.get(match.group(1)),)).decode())
        pos = match.end()
    pieces.append((sum(map(len, out)), pos, len(sql) - pos))
    out.append(sql[pos:])
    return "".join(out), pieces


def _warehouse_problems(spec, warehouse: _Warehouse, fields_by_template: dict[str, set[str]]) -> list[str]:
    """Run the SELECT with LIMIT 0 (nothing is read) and check what it returns."""
    from lifecycle import stage
    from lifecycle.stage import coupon_product_columns, required_columns

    prefix = "SELECT * FROM (\n"
    raw = warehouse.engine.raw_connection()
    try:
        cursor = raw.cursor()
        body, pieces = _literal_sql(spec, cursor)
        try:
            cursor.execute(f"{prefix}{body}\n) q LIMIT 0")
        except Exception as exc:  # noqa: BLE001 - the warehouse's own words, with where in the file
            return [_warehouse_error(spec, exc, len(prefix), pieces)]
        columns = [(d.name, d.type_code) for d in cursor.description]
        cursor.execute("SELECT oid, typname FROM pg_type WHERE oid = ANY(%s)", ([t for _, t in columns],))
        types = dict(cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
    returned = {name: types.get(oid, str(oid)) for name, oid in columns}
    problems = []
    missing = sorted(required_columns(spec) - set(returned))
    if missing:
        problems.append(f"SQL: the SELECT must return column(s) {', '.join(missing)}; it returns {', '.join(returned)}")
    product_types = _run_types(getattr(stage, "ID_TYPES", None) or stage.INTEGER_TYPES)
    expected = [(spec.entered_at, _run_types(stage.TIMESTAMP_TYPES), "a timestamp (entered_at)")]
    expected += [(c, product_types, f"product ids ({', '.join(sorted(product_types))}; coupon.product)")
                 for c in coupon_product_columns(spec)]
    if "email" in spec.channels:
        expected.append(("email", TEXT_TYPES, "text (email)"))
    for column, allowed, what in expected:
        if column in returned and returned[column] not in allowed:
            problems.append(f"SQL: column {column!r} must be {what}, it is {returned[column]}")
    for template, fields in sorted(fields_by_template.items()):
        for field in sorted(fields - set(returned)):
            hint = difflib.get_close_matches(field, list(returned), n=1)
            problems.append(f"template {template} uses row.{field}, which the SELECT does not return"
                            + (f" (did you mean row.{hint[0]}?)" if hint else ""))
    return problems


def _warehouse_error(spec, exc: Exception, prefix_len: int, pieces) -> str:
    detail = str(getattr(exc, "pgerror", None) or exc).strip().splitlines()[0]
    position = getattr(getattr(exc, "diag", None), "statement_position", None)
    where = ""
    if position:
        at = int(position) - 1 - prefix_len  # PostgreSQL counts characters from 1
        for start, sql_start, length in reversed(pieces):
            if at >= start:
                where = f" at line {_file_line(spec, sql_start + min(at - start, length))}"
                break
    return f"{spec.path.name}: the warehouse rejected the SQL{where}: {detail}"


def _lint_conditions(condition_tie_problems) -> int:
    conditions, failures = sorted(CONDITIONS_DIR.glob("*.sql")), 0
    for path in conditions:
        problems = condition_tie_problems(path) + _wall_clock_problems(path)
        failures += bool(problems)
        print(f"FAIL {path}" if problems else f"ok   {path.name}")
        for problem in problems:
            print(f"     - {problem}")
    print(f"\nconditions: {len(conditions) - failures} ok, {failures} broken")
    return failures


def _clock_name(match: re.Match) -> str:
    """`now()`, `current_date`: the wall-clock call as the analyst knows it."""
    word = match.group(1)
    return re.sub(r"\s*\($", "()", word) if word.endswith("(") else word


def _wall_clock_problems(path: Path) -> list[str]:
    """A condition reading the wall clock instead of :as_of (backfills would not replay)."""
    text = path.read_text(encoding="utf-8")
    return [f"condition {path.name} line {text.count(chr(10), 0, m.start()) + 1}: "
            f"{_clock_name(m)} reads the wall clock: use :as_of"
            for m in WALL_CLOCK.finditer(_mask_sql(text))]


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0h"


# ---------------------------------------------------------------------------- demo
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
        "LIFECYCLE_SIGNING_KEY": os.environ.get("LIFECYCLE_SIGNING_KEY") or signing_key(state_dir),
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

    from lifecycle.sinks.meta_server import MetaAudienceServer
    from lifecycle.sinks.push_server import PushServer, demo_key_lookup
    from lifecycle.sinks.twilio_server import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, TwilioServer

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
        cmd = [sys.executable, "-m", "lifecycle.cli", "demo-worker", "--start", start.isoformat(),
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


def demo(days: int, customers: int, verbose: bool, workers: int = 3) -> int:
    import logging

    import sqlalchemy as sa

    from lifecycle import demo_shop, schema
    from lifecycle.report import format_summary, journey_summary
    from lifecycle.smtp_sink import EmlSink
    from lifecycle.spec import load_all

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd would log addresses
    anchor = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = anchor - timedelta(days=days)
    print(f"lifecycle demo: simulating {start:%Y-%m-%d} .. {anchor:%Y-%m-%d} (UTC) on an embedded PostgreSQL")
    url = _demo_database(STATE_DIR)
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
        prepare_airflow({**airflow_env(STATE_DIR, url, sink.port), **channel_conns}, quiet=not verbose)
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
    (DEMO_OUT / "summary.txt").write_text(summary + "\n")
    print(f"\n{summary}\n\nWhat each channel delivered, on disk:")
    print(f"  email            {len(list(outbox.glob('*.eml'))):>5}  {outbox.relative_to(PROJECT_DIR)}/*.eml "
          "(open any in a mail client)")
    for name, file in (("SMS", "sms.jsonl"), ("web push", "push.jsonl"), ("Meta audiences", "meta_audiences.jsonl")):
        path = DEMO_OUT / file
        lines = len(path.read_text().splitlines()) if path.exists() else 0
        print(f"  {name:<16} {lines:>5}  {path.relative_to(PROJECT_DIR)} (one JSON object per request)")
    print(f"audit tables: schema lifecycle in {url}")
    for failure in failures:
        print(f"  FAILED RUN {failure}")
    engine.dispose()
    return 1 if failures or errors else 0


# ---------------------------------------------------------------------------- promote
def promote_journey(journey: str, segments_dir: Path) -> int:
    """Set `status: live` in the journey's segment file (a path to the file works too)."""
    from lifecycle.promote import PromoteError, promote

    path = Path(journey) if journey.endswith(".sql") else segments_dir / f"{journey}.sql"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(segments_dir.glob("*.sql")))
        print(f"no segment file {path} (journeys: {known})")
        return 1
    try:
        print(promote(path).describe())
    except PromoteError as exc:
        print(exc)
        return 1
    return 0


# ---------------------------------------------------------------------------- init / migrate / stop
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


def _warehouse_target(warehouse_url: str | None, state_dir: Path) -> tuple[str, bool]:
    """(URL, is it the embedded one): --warehouse-url, else the Airflow connection in the environment
    (AIRFLOW_CONN_LIFECYCLE_WAREHOUSE, as in docker-compose), else the embedded demo warehouse."""
    from lifecycle.config import WAREHOUSE_CONN_ID
    from lifecycle.unsubscribe_service import warehouse_url as url_from_environment

    if warehouse_url or os.environ.get(f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"):
        url = url_from_environment(warehouse_url)
        if not _on_embedded_server(url, state_dir):
            return url.render_as_string(hide_password=False), False
        return _embedded_url(state_dir, url.database or DEMO_DB), True  # `lifecycle env`'s connection
    return _embedded_url(state_dir, DEMO_DB), True


def _on_embedded_server(url, state_dir: Path) -> bool:
    """Whether `url` is the embedded server's (its unix socket lives in the data directory)."""
    host = url.query.get("host") or url.host or ""
    return host.startswith("/") and Path(host).resolve() == (state_dir / "pgdata").resolve()


def _embedded_url(state_dir: Path, database: str) -> str:
    """The embedded server's URL for `database` (started if it is not running)."""
    import sqlalchemy as sa

    from lifecycle.warehouse import start_embedded

    uri = start_embedded(state_dir / "pgdata").replace("postgresql://", "postgresql+psycopg2://", 1)
    return sa.make_url(uri).set(database=database).render_as_string(hide_password=False)


def _create_database_if_missing(url: str) -> bool:
    """CREATE DATABASE for the URL's database on its server unless it exists; whether it was made.
    Never drops: unlike `lifecycle demo`, init keeps what is there."""
    import sqlalchemy as sa

    target = sa.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}).first():
                return False
            conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
            return True
    finally:
        admin.dispose()


def _shown(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def migrate_warehouse(warehouse_url: str | None, state_dir: Path, demo_shop: bool = False) -> int:
    """Apply the lifecycle migrations and the contact views to the warehouse (idempotent)."""
    try:
        url, embedded = _warehouse_target(warehouse_url, state_dir)
    except ValueError as exc:
        print(f"lifecycle migrate: {exc}")
        return 1
    return _migrate(url, embedded, state_dir, demo_shop)


def _migrate(url: str, embedded: bool, state_dir: Path, demo_shop: bool) -> int:
    """Migrate `url`; the embedded warehouse (or --demo-shop) also gets the demo shop's tables,
    which the default contact views read."""
    import sqlalchemy as sa

    from lifecycle.schema import MigrationError, create_shop_schema, migrate

    if embedded and _create_database_if_missing(url):
        print(f"created database {sa.make_url(url).database} on the embedded PostgreSQL ({state_dir / 'pgdata'})")
    engine = sa.create_engine(url)
    try:
        if embedded or demo_shop:
            create_shop_schema(engine)
        applied = migrate(engine)
    except MigrationError as exc:
        print(f"lifecycle migrate: warehouse {_shown(url)}: {exc}")
        return 1
    except sa.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        print(f"lifecycle migrate: warehouse {_shown(url)}: {detail}; nothing was applied")
        return 1
    finally:
        engine.dispose()
    if applied:
        print(f"warehouse {_shown(url)}: applied {', '.join(applied)}")
    else:
        print(f"warehouse {_shown(url)}: already current")
    return 0


def create_pools() -> int:
    """The Airflow pools the send tasks run in (dag_factory.POOLS), in the metadata database this
    environment configures; a pool that exists keeps the slots an operator gave it."""
    import sqlalchemy as sa
    from airflow.models.pool import Pool

    from lifecycle.dag_factory import POOLS

    try:
        existing = {name: Pool.get_pool(name) for name in POOLS}
    except sa.exc.SQLAlchemyError as exc:
        print(f"lifecycle init: Airflow's metadata database is not reachable or not migrated "
              f"({str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}): run `airflow db migrate` first "
              "(docker-compose's airflow-init does); no pools were created")
        return 1
    for name, slots in POOLS.items():
        if existing[name] is not None:
            print(f"pool {name}: exists ({existing[name].slots} slots), left as it is")
            continue
        Pool.create_or_update_pool(name, slots=slots, description="lifecycle sends", include_deferred=False)
        print(f"pool {name}: created with {slots} slots")
    return 0


def init(warehouse_url: str | None, state_dir: Path, demo_shop: bool = False) -> int:
    """Everything a new installation needs before the DAGs run: the warehouse database (if it is
    the embedded one), its schemas, and the Airflow pools."""
    try:
        url, embedded = _warehouse_target(warehouse_url, state_dir)
    except ValueError as exc:
        print(f"lifecycle init: {exc}")
        return 1
    if _migrate(url, embedded, state_dir, demo_shop):
        return 1
    if embedded:  # the embedded setup keeps Airflow's metadata on the same server (`lifecycle env`)
        if _create_database_if_missing(_embedded_url(state_dir, AIRFLOW_DB)):
            print(f"created database {AIRFLOW_DB} on the embedded PostgreSQL (Airflow's metadata, see `lifecycle env`)")
    return create_pools()


def stop(state_dir: Path) -> int:
    """Stop the embedded PostgreSQL that `demo`, `env`, `init` or `report` started."""
    from lifecycle.warehouse import stop_embedded

    data_dir = state_dir / "pgdata"
    if stop_embedded(data_dir):
        print(f"stopped the embedded PostgreSQL ({data_dir})")
    else:
        print(f"no embedded PostgreSQL running on {data_dir}")
    return 0


# ---------------------------------------------------------------------------- report / env
def _default_url() -> str:
    import sqlalchemy as sa

    from lifecycle.warehouse import start_embedded

    uri = start_embedded(STATE_DIR / "pgdata").replace("postgresql://", "postgresql+psycopg2://", 1)
    return sa.make_url(uri).set(database=DEMO_DB).render_as_string(hide_password=False)


def report(warehouse_url: str | None, mode: str) -> int:
    import sqlalchemy as sa

    from lifecycle.report import format_summary, journey_summary

    engine = sa.create_engine(warehouse_url or _default_url())
    print(format_summary(journey_summary(engine, mode)))
    if mode == "dry":
        from lifecycle.report import DRY_RUN_COLUMNS, dry_run_messages

        print("\nWhat the dry runs would have sent (distinct subjects and bodies, and the first message's subject):")
        print(format_summary(dry_run_messages(engine), DRY_RUN_COLUMNS))
    return 0


def preview(journey: str, customer: str | None, as_of: datetime | None, step: str | None,
            out: Path | None, warehouse_url: str | None) -> int:
    """Render one customer's messages of a journey to files; nothing is written to `lifecycle`."""
    import sqlalchemy as sa

    from lifecycle.links import signing_key
    from lifecycle.preview import NotSelected
    from lifecycle.preview import preview as render_preview
    from lifecycle.render import TemplateRenderError
    from lifecycle.spec import load_all
    from lifecycle.sql import SegmentSQLError

    try:
        signing_key()  # the messages carry signed unsubscribe links, as sent ones do
    except RuntimeError as exc:
        print(f"lifecycle preview: {exc}", file=sys.stderr)
        return 2
    specs, _errors = load_all()
    spec = next((s for s in specs if s.journey == journey), None)
    if spec is None:
        print(f"lifecycle preview: no journey {journey!r} (valid segment files: "
              f"{', '.join(sorted(s.journey for s in specs))}; `lifecycle lint` shows the broken ones)", file=sys.stderr)
        return 2
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    out = out or Path("preview") / journey
    engine = sa.create_engine(warehouse_url or _default_url())
    try:
        result = render_preview(engine, spec, out, customer=customer, as_of=as_of, step=step)
    except (NotSelected, ValueError, SegmentSQLError, TemplateRenderError) as exc:  # each names what is wrong
        print(f"lifecycle preview: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{journey}: customer {result.customer_id}, interval {result.interval_start.isoformat()} .. "
          f"{result.interval_end.isoformat()} (nothing written to the lifecycle schema)")
    for path in result.written:
        print(f"  wrote {path}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def env() -> int:
    for key, value in airflow_env(STATE_DIR, _default_url(), int(os.environ.get("LIFECYCLE_SMTP_PORT", 1025))).items():
        print(f"export {key}={json.dumps(value) if not value.startswith('{') else repr(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lifecycle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_lint = sub.add_parser("lint", help="check segment files")
    p_lint.add_argument("files", nargs="*")
    p_lint.add_argument("--warehouse-url", help="also run each SELECT with LIMIT 0 on this warehouse and check its columns")
    p_demo = sub.add_parser("demo", help="run all journeys over past days on the embedded warehouse")
    p_demo.add_argument("--days", type=int, default=3)
    p_demo.add_argument("--customers", type=int, default=3000)
    p_demo.add_argument("--verbose", action="store_true")
    p_demo.add_argument("--workers", type=int, default=3, help="parallel Airflow processes running the journeys")
    p_worker = sub.add_parser("demo-worker", help=argparse.SUPPRESS)  # internal: one process of `demo`
    p_worker.add_argument("--start", type=datetime.fromisoformat, required=True)
    p_worker.add_argument("--end", type=datetime.fromisoformat, required=True)
    p_worker.add_argument("journeys", nargs="+")
    p_report = sub.add_parser("report", help="per-journey summary")
    p_report.add_argument("--warehouse-url")
    p_report.add_argument("--mode", default="live", choices=["live", "dry"])
    sub.add_parser("env", help="print exports for running `airflow` against the demo")
    p_promote = sub.add_parser("promote", help="make a draft journey live: set `status: live` in its header")
    p_promote.add_argument("journey", help="journey name (or the segment file's path)")
    p_promote.add_argument("--segments-dir", type=Path, default=SEGMENTS_DIR)
    for name, text in (("migrate", "apply the lifecycle migrations and contact views to the warehouse"),
                       ("init", "create the warehouse database (embedded), migrate it, create the Airflow pools")):
        p_ops = sub.add_parser(name, help=text)
        p_ops.add_argument("--warehouse-url", help="default: AIRFLOW_CONN_LIFECYCLE_WAREHOUSE, else the embedded warehouse")
        p_ops.add_argument("--demo-shop", action="store_true",
                           help="also create the demo shop's tables (schema `shop`) the default contact views read")
    sub.add_parser("stop", help="stop the embedded PostgreSQL")
    p_preview = sub.add_parser("preview", help="render one customer's messages of a journey to files (writes nothing)")
    p_preview.add_argument("journey")
    p_preview.add_argument("--customer", help="customer id (default: the first the segment selects)")
    p_preview.add_argument("--as-of", type=datetime.fromisoformat,
                           help="the interval ending at this moment (default: the latest complete one; UTC if no offset)")
    p_preview.add_argument("--step", help="only this step (default: every message step and exit message)")
    p_preview.add_argument("--out", type=Path, help="directory for the files (default: ./preview/<journey>/)")
    p_preview.add_argument("--warehouse-url", help="default: the embedded demo warehouse")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        return migrate_warehouse(args.warehouse_url, STATE_DIR, args.demo_shop)
    if args.command == "init":
        return init(args.warehouse_url, STATE_DIR, args.demo_shop)
    if args.command == "stop":
        return stop(STATE_DIR)
    if args.command == "lint":
        return lint(args.files, args.warehouse_url)
    if args.command == "demo":
        return demo(args.days, args.customers, args.verbose, args.workers)
    if args.command == "demo-worker":
        return demo_worker(args.journeys, args.start, args.end)
    if args.command == "preview":
        return preview(args.journey, args.customer, args.as_of, args.step, args.out, args.warehouse_url)
    if args.command == "report":
        return report(args.warehouse_url, args.mode)
    if args.command == "promote":
        return promote_journey(args.journey, args.segments_dir)
    return env()


if __name__ == "__main__":
    sys.exit(main())
