"""`lifecycle migrate`, `init`, `env` and `stop` (README "Operations"): on real PostgreSQL
(embedded servers started by the commands themselves) and Airflow's real metadata DB, plus how
docker-compose's airflow-init and the image use them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from lifecycle import cli
from lifecycle.config import SQL_DIR
from lifecycle.dag_factory import POOLS
from lifecycle.schema import is_current
from lifecycle_demo import cli as demo_cli

ROOT = Path(__file__).resolve().parents[1]


def _versions(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT version FROM lifecycle.schema_migrations")).scalars())


def test_migrate_applies_the_schemas_once(scratch_engine, capsys):
    url = scratch_engine.url.render_as_string(hide_password=False)
    assert cli.main(["migrate", "--warehouse-url", url, "--demo-shop"]) == 0
    assert is_current(scratch_engine)
    versions = _versions(scratch_engine)
    migrations = {p.stem for p in (SQL_DIR / "lifecycle").glob("[0-9][0-9][0-9]_*.sql")}
    assert migrations and migrations <= versions and any(v.startswith("contacts:") for v in versions)
    first = capsys.readouterr().out
    assert "applied" in first and scratch_engine.url.database in first
    assert cli.main(["migrate", "--warehouse-url", url]) == 0
    assert "already current" in capsys.readouterr().out
    assert _versions(scratch_engine) == versions


def test_migrate_reads_the_airflow_connection(scratch_engine, capsys, monkeypatch):
    """docker-compose gives the warehouse only as AIRFLOW_CONN_LIFECYCLE_WAREHOUSE."""
    from lifecycle.schema import create_shop_schema
    from lifecycle.warehouse import airflow_conn_json

    create_shop_schema(scratch_engine)  # the tables the default contact views read
    url = scratch_engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", airflow_conn_json(url))
    assert cli.main(["migrate"]) == 0
    assert is_current(scratch_engine)


def test_migrate_says_which_file_a_warehouse_without_the_shop_tables_rejects(scratch_engine, capsys):
    """A real warehouse whose contact views were not adapted yet: the file, the missing table,
    and that nothing was applied (one transaction)."""
    url = scratch_engine.url.render_as_string(hide_password=False)
    assert cli.main(["migrate", "--warehouse-url", url]) == 1
    out = capsys.readouterr().out
    assert "contacts.sql" in out and 'relation "shop.customers" does not exist' in out
    assert "Who is reachable" in out and "nothing was applied" in out
    with scratch_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regnamespace('lifecycle')").scalar() is None


def test_migrate_names_an_unreachable_warehouse(capsys):
    url = "postgresql+psycopg2://nobody:secret@127.0.0.1:1/nowhere"
    assert cli.main(["migrate", "--warehouse-url", url]) == 1
    out = capsys.readouterr().out
    assert "127.0.0.1:1/nowhere" in out and "nothing was applied" in out and "secret" not in out


def _pools() -> dict[str, int]:
    from airflow.models.pool import Pool

    return {p.pool: p.slots for p in Pool.get_pools() if p.pool in POOLS}


def _export(out: str, name: str) -> str:
    match = re.search(rf"^export {name}=(.*)$", out, re.M)
    assert match, out
    return shlex.split(match.group(1))[0]


@pytest.fixture()
def state_dir(monkeypatch):
    """A state dir of its own (not under pytest's tmp_path, which is pruned while servers run);
    whatever embedded server the test leaves running is stopped."""
    from lifecycle.warehouse import stop_embedded

    path = Path(tempfile.mkdtemp(prefix="lifecycle-state-"))
    monkeypatch.setenv("LIFECYCLE_STATE_DIR", str(path))
    monkeypatch.delenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", raising=False)
    monkeypatch.delenv("LIFECYCLE_SIGNING_KEY", raising=False)
    yield path
    stop_embedded(path / "pgdata")
    shutil.rmtree(path, ignore_errors=True)


def test_init_on_the_embedded_warehouse(state_dir, airflow_db, capsys):
    from airflow.models.pool import Pool

    # an operator tuned one pool; another is missing (a new installation)
    Pool.create_or_update_pool("lifecycle_sms", slots=9, description="tuned", include_deferred=False)
    Pool.delete_pool("lifecycle_email")
    try:
        assert cli.main(["init"]) == 0
        out = capsys.readouterr().out
        assert _pools() == {**POOLS, "lifecycle_sms": 9}
        assert "pool lifecycle_email: created with 4 slots" in out
        assert "pool lifecycle_sms: exists (9 slots), left as it is" in out
        assert f"created database {cli.DEMO_DB}" in out and f"created database {cli.AIRFLOW_DB}" in out

        warehouse = sa.create_engine(cli._embedded_url(state_dir, cli.DEMO_DB))
        assert is_current(warehouse)
        with warehouse.begin() as conn:  # init keeps what is there: a second init drops nothing
            conn.exec_driver_sql("CREATE TABLE public.kept (x int)")
        warehouse.dispose()
        assert cli.main(["init"]) == 0
        assert "already current" in capsys.readouterr().out
        warehouse = sa.create_engine(cli._embedded_url(state_dir, cli.DEMO_DB))
        with warehouse.connect() as conn:
            assert conn.exec_driver_sql("SELECT to_regclass('public.kept')").scalar() == "kept"
        warehouse.dispose()
    finally:
        for name, slots in POOLS.items():  # the session's other tests expect the default pools
            Pool.create_or_update_pool(name, slots=slots, description="lifecycle sends", include_deferred=False)


def test_init_after_env_treats_its_connection_as_the_embedded_warehouse(state_dir, airflow_db, monkeypatch, capsys):
    """`eval "$(lifecycle env)"` then `lifecycle init`: the connection names the embedded server,
    so init still creates its databases and the demo shop's tables."""
    from lifecycle.warehouse import airflow_conn_json, stop_embedded

    url = cli._embedded_url(state_dir, cli.DEMO_DB)
    stop_embedded(state_dir / "pgdata")  # and `lifecycle stop` ran since: init starts it again
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", airflow_conn_json(url))
    assert cli.main(["init"]) == 0
    assert f"created database {cli.DEMO_DB}" in capsys.readouterr().out
    warehouse = sa.create_engine(cli._embedded_url(state_dir, cli.DEMO_DB))
    assert is_current(warehouse)
    warehouse.dispose()


def test_env_keeps_the_signing_key_it_made(state_dir, capsys):
    """`lifecycle env` twice: the same key (links already sent stay valid), kept in the state
    dir, readable by its owner only."""
    assert demo_cli.main(["env"]) == 0
    first = _export(capsys.readouterr().out, "LIFECYCLE_SIGNING_KEY")
    assert demo_cli.main(["env"]) == 0
    assert _export(capsys.readouterr().out, "LIFECYCLE_SIGNING_KEY") == first
    key_file = state_dir / demo_cli.SIGNING_KEY_FILE
    assert key_file.read_text().strip() == first and len(first) >= 43  # 32 random bytes
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_stop_stops_the_embedded_postgresql(state_dir, capsys):
    from lifecycle.warehouse import embedded_running, start_embedded

    data_dir = state_dir / "pgdata"
    uri = start_embedded(data_dir)  # as `demo`, `env` or `init` leave it: running on
    assert embedded_running(data_dir)
    assert cli.main(["stop"]) == 0
    assert "stopped the embedded PostgreSQL" in capsys.readouterr().out
    assert not embedded_running(data_dir)
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(uri.replace("postgresql://", "postgresql+psycopg2://", 1)).connect()
    assert cli.main(["stop"]) == 0
    assert "no embedded PostgreSQL running" in capsys.readouterr().out
    assert embedded_running(state_dir / "pgdata") is False
    start_embedded(data_dir)  # and the next command starts it again
    assert embedded_running(data_dir)


def test_env_tightens_a_key_file_others_can_read(state_dir):
    key_file = state_dir / demo_cli.SIGNING_KEY_FILE
    key_file.write_text("k" * 10 + "an-existing-key-made-earlier-0123456789\n")
    key_file.chmod(0o644)
    assert demo_cli.signing_key(state_dir) == "k" * 10 + "an-existing-key-made-earlier-0123456789"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


# ---------------------------------------------------------------------------- compose and image
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_airflow_init_runs_lifecycle_init_after_the_metadata_migration():
    init = COMPOSE["services"]["airflow-init"]
    script = init["command"][1]
    lines = [line.strip() for line in script.splitlines()]
    # the compose warehouse plays the shop's: its demo tables are what the contact views read
    assert "lifecycle init --demo-shop" in lines
    # /entrypoint migrates the metadata DB (_AIRFLOW_DB_MIGRATE) before the pools are created,
    # and the files init may write are chowned after it
    init_at = lines.index("lifecycle init --demo-shop")
    assert lines.index("/entrypoint airflow version") < init_at
    assert init_at < next(i for i, line in enumerate(lines) if line.startswith("chown"))
    assert init["depends_on"]["warehouse"]["condition"] == "service_healthy"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"


def _image_wrapper() -> str:
    """The /usr/local/bin/lifecycle script the Dockerfile writes (its printf lines)."""
    match = re.search(r"RUN printf '%s\\n' (.*?)\s*> /usr/local/bin/lifecycle", DOCKERFILE, re.S)
    assert match, "the Dockerfile does not write /usr/local/bin/lifecycle"
    return "\n".join(shlex.split(match.group(1).replace("\\\n", " ").rstrip(" \\"))) + "\n"


def test_image_lifecycle_command_runs_the_mounted_package(tmp_path):
    """The image's wrapper, run here with this checkout's plugins/ where compose mounts them."""
    assert "chmod 0755 /usr/local/bin/lifecycle" in DOCKERFILE
    script = tmp_path / "lifecycle"
    script.write_text(_image_wrapper().replace("/opt/airflow/plugins", str(ROOT / "plugins")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(["sh", str(script), "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "migrate" in done.stdout and "init" in done.stdout and "stop" in done.stdout
    assert "demo" in done.stdout and "env" in done.stdout  # the demo's commands too, as the console script
