"""docker-compose.yaml and Dockerfile: structure checks without Docker (parsed with PyYAML)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
COMMON = COMPOSE["x-airflow-common"]
ENV = COMMON["environment"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()

AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
]
LONG_RUNNING = [s for s in AIRFLOW_SERVICES if s != "airflow-init"]


def _airflow_pin() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(r"\s*apache-airflow\s*==\s*([0-9][^\s#;]*)\s*(#.*)?", line)
        if match:
            return match.group(1)
    raise AssertionError("requirements.txt does not pin apache-airflow==X.Y.Z")


def _base_image() -> tuple[str, str]:
    match = re.search(r"^FROM\s+apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)\s*$", DOCKERFILE, re.M)
    assert match, "Dockerfile must start FROM apache/airflow:<version>-python<X.Y>"
    return match.group(1), match.group(2)


def test_required_services_exist():
    required = {"postgres", "redis", "warehouse", "mailpit", *AIRFLOW_SERVICES}
    assert required <= set(SERVICES)
    assert SERVICES["flower"]["profiles"] == ["flower"]  # optional, off by default


def test_celery_executor_and_airflow3_settings():
    assert ENV["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert ENV["AIRFLOW__CORE__AUTH_MANAGER"]
    assert ENV["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert ENV["AIRFLOW__API_AUTH__JWT_SECRET"]  # one secret shared by all components
    assert (
        ENV["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        and "@redis:6379" in ENV["AIRFLOW__CELERY__BROKER_URL"]
    )
    assert "@postgres/" in ENV["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert ENV["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    commands = {name: SERVICES[name].get("command") for name in LONG_RUNNING}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-worker": "celery worker",
        "airflow-triggerer": "triggerer",
    }


def test_two_celery_workers_like_the_celery_executor_test():
    """tests/test_celery_executor.py runs two Celery workers and kills one mid-batch: compose runs
    the same topology (replicas of one service, so nothing a replica would share is fixed)."""
    worker = SERVICES["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    # the health check pings this replica's own Celery node
    assert 'celery@$${HOSTNAME}' in " ".join(worker["healthcheck"]["test"])
    assert [s for s, spec in SERVICES.items() if spec.get("command") == "celery worker"] == ["airflow-worker"]
    # the image gets the CeleryExecutor from our pinned requirements
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^apache-airflow-providers-celery\b", requirements, re.M)
    assert re.search(r"^celery==", (ROOT / "constraints.txt").read_text(), re.M)


def test_airflow_services_merge_the_common_anchor():
    """Checked on the YAML nodes: each service's `<<` is the very x-airflow-common node."""
    root = yaml.compose(COMPOSE_TEXT)
    top = {key.value: value for key, value in root.value}
    common_node = top["x-airflow-common"]
    services = {key.value: value for key, value in top["services"].value}
    for name in [*AIRFLOW_SERVICES, "flower", "airflow-cli"]:
        merges = [value for key, value in services[name].value if key.value == "<<"]
        assert merges and merges[0] is common_node, f"{name} does not merge *airflow-common"
    for name in ("postgres", "redis", "warehouse", "mailpit"):
        assert "build" not in SERVICES[name]


def test_all_airflow_services_use_our_build():
    assert COMMON["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    for name in [*AIRFLOW_SERVICES, "flower"]:
        service = SERVICES[name]
        assert service["build"] == COMMON["build"], name
        assert service["image"] == COMMON["image"], name
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
    assert (ROOT / COMMON["build"]["dockerfile"]).is_file()


def test_image_versions_match_requirements_and_python():
    airflow_version, python_version = _base_image()
    assert airflow_version == _airflow_pin() == "3.3.2"
    assert python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    requires = re.search(r'requires-python\s*=\s*">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())
    assert requires and requires.group(1) == python_version
    # the tag compose gives the built image names the same Airflow version
    assert COMMON["image"].rstrip("}").endswith(airflow_version)


def test_dockerfile_installs_requirements_with_constraints_and_copies_nothing_else():
    assert re.search(r"pip install[^\n]*(\\\n[^\n]*)*-r \S*requirements\.txt", DOCKERFILE)
    assert re.search(r"-c \S*constraints\.txt", DOCKERFILE)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in DOCKERFILE  # keeps the image's Airflow
    copies = re.findall(r"^(?:COPY|ADD)\s+(.*)$", DOCKERFILE, re.M)
    for copy in copies:
        sources = [p for p in copy.split() if not p.startswith("--")][:-1]
        assert set(sources) <= {"requirements.txt", "constraints.txt"}, copy
    assert not re.search(r"(?i)^\s*(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|KEY)", DOCKERFILE, re.M)


def test_constraints_lock_the_same_airflow():
    path = ROOT / "constraints.txt"
    if not path.exists():
        pytest.skip("constraints.txt not generated yet (the Dockerfile needs it to build)")
    pins = re.findall(r"^apache-airflow==(\S+)", path.read_text(), re.M)
    assert pins == [_airflow_pin()]


def test_project_directories_are_mounted():
    mounts = {}
    for volume in COMMON["volumes"]:
        source, target = volume.rsplit(":", 1)
        mounts[target] = source
    for name in ("dags", "plugins", "include", "config", "logs"):
        assert mounts.get(f"/opt/airflow/{name}", "").endswith(f"/{name}"), name
    # plugins/lifecycle/config.py finds include/ next to plugins/
    assert ENV["LIFECYCLE_PROJECT_DIR"] == "/opt/airflow"
    for name in AIRFLOW_SERVICES:
        assert SERVICES[name]["volumes"] == COMMON["volumes"]


def test_warehouse_service_and_connection():
    warehouse = SERVICES["warehouse"]
    assert warehouse["image"] == "postgres:16"
    conn = json.loads(ENV["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"])
    pg = warehouse["environment"]
    assert conn["conn_type"] == "postgres"
    assert conn["host"] == "warehouse" and int(conn["port"]) == 5432
    assert (conn["login"], conn["password"], conn["schema"]) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    # separate from Airflow's metadata database
    assert (
        warehouse is not SERVICES["postgres"]
        and "warehouse" not in ENV["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )
    assert any(v.startswith("warehouse-db-volume:") for v in warehouse["volumes"])
    assert "warehouse-db-volume" in COMPOSE["volumes"]


def test_mail_catcher_service_and_connection():
    mailpit = SERVICES["mailpit"]
    assert mailpit["image"].startswith("axllent/mailpit")
    assert {"1025:1025", "8025:8025"} <= set(mailpit["ports"])
    conn = json.loads(ENV["AIRFLOW_CONN_LIFECYCLE_SMTP"])
    assert conn["conn_type"] == "smtp"
    assert conn["host"] == "mailpit" and int(conn["port"]) == 1025
    extra = conn["extra"]
    assert extra["disable_tls"] is True and extra["disable_ssl"] is True
    assert extra["retry_limit"] == 0  # the engine owns retries (at most once per message)
    assert extra["from_email"]


def test_connections_parse_as_airflow_connections():
    from airflow.sdk import Connection

    warehouse = Connection.from_json(ENV["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"], conn_id="lifecycle_warehouse")
    assert (warehouse.conn_type, warehouse.host, warehouse.port, warehouse.schema) == (
        "postgres",
        "warehouse",
        5432,
        "warehouse",
    )
    smtp = Connection.from_json(ENV["AIRFLOW_CONN_LIFECYCLE_SMTP"], conn_id="lifecycle_smtp")
    assert (smtp.conn_type, smtp.host, smtp.port) == ("smtp", "mailpit", 1025)
    assert smtp.extra_dejson["disable_tls"] is True


def test_worker_waits_for_warehouse_and_mail_catcher():
    depends = SERVICES["airflow-worker"]["depends_on"]
    assert depends["warehouse"]["condition"] == "service_healthy"
    assert depends["mailpit"]["condition"] == "service_healthy"
    assert depends["airflow-apiserver"]["condition"] == "service_healthy"
    assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    for name in LONG_RUNNING:
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_healthchecks_present():
    for name in ["postgres", "redis", "warehouse", "mailpit", *LONG_RUNNING]:
        check = SERVICES[name].get("healthcheck")
        assert check and check["test"] and check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/api/v2/monitor/health" in " ".join(SERVICES["airflow-apiserver"]["healthcheck"]["test"])
    assert "8974/health" in " ".join(SERVICES["airflow-scheduler"]["healthcheck"]["test"])
    assert ENV["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_ports():
    assert SERVICES["airflow-apiserver"]["ports"] == ["8080:8080"]
    assert "8025:8025" in SERVICES["mailpit"]["ports"]
    assert SERVICES["warehouse"]["ports"] == ["5433:5432"]
    assert SERVICES["flower"]["ports"] == ["5555:5555"]
    published = [p.split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), "two services publish the same host port"


def test_init_migrates_and_creates_the_admin():
    init = SERVICES["airflow-init"]
    assert init["user"] == "0:0"
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["environment"]["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert "include" in init["command"][1]  # creates and chowns include/ too


def test_web_service():
    """The web service (unsubscribe, preferences, tracking): our image, its own command, port and health check."""
    service = SERVICES["web"]
    assert service["image"] == COMMON["image"] and service["build"] == COMMON["build"]
    assert service["command"] == "python -m lifecycle.web_service --host 0.0.0.0 --port 8090"
    assert service["ports"] == ["8090:8090"]
    check = service["healthcheck"]["test"]
    assert check[0] in ("CMD", "CMD-SHELL") and "http://localhost:8090/health" in " ".join(check)
    assert service["depends_on"]["warehouse"]["condition"] == "service_healthy"
    # not an Airflow component: no *airflow-common merge, no metadata DB or broker settings
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in service["environment"]
    # `python -m lifecycle...` finds the mounted package and include/ (templates)
    env = service["environment"]
    assert env["PYTHONPATH"] == "/opt/airflow/plugins" and env["LIFECYCLE_PROJECT_DIR"] == "/opt/airflow"
    mounts = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in service["volumes"]}
    assert mounts["/opt/airflow/plugins"].endswith("/plugins")
    assert mounts["/opt/airflow/include"].endswith("/include")


def test_web_service_shares_the_warehouse_and_signing_key():
    env = SERVICES["web"]["environment"]
    assert env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"] == ENV["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"]
    for name in AIRFLOW_SERVICES:  # the workers send the emails whose links it verifies
        airflow_env = SERVICES[name]["environment"]
        assert airflow_env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"] == env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"], name
        assert airflow_env["LIFECYCLE_SIGNING_KEY"] == env["LIFECYCLE_SIGNING_KEY"], name
        assert airflow_env["LIFECYCLE_SHOP_URL"] == env["LIFECYCLE_SHOP_URL"], name  # tracked clicks into the shop
    # read from the environment, with no default: a key in a public file could forge unsubscribes,
    # so compose refuses to start until the operator sets one
    assert re.fullmatch(r"\$\{LIFECYCLE_SIGNING_KEY:\?[^}]+\}", env["LIFECYCLE_SIGNING_KEY"])
    conn = json.loads(env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"])
    assert (conn["conn_type"], conn["host"], int(conn["port"])) == ("postgres", "warehouse", 5432)


def test_web_service_reads_the_compose_connection():
    from lifecycle.web_service import warehouse_url

    env = SERVICES["web"]["environment"]
    url = warehouse_url(environ={"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": env["AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"]})
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+psycopg2", "warehouse", 5432, "lifecycle", "warehouse",
    )


def test_sms_and_meta_connections_point_at_the_local_sinks():
    import json

    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    env = services["airflow-worker"]["environment"]
    sms = json.loads(env["AIRFLOW_CONN_LIFECYCLE_SMS"])
    meta = json.loads(env["AIRFLOW_CONN_LIFECYCLE_META"])
    assert sms["host"] == "http://sms-sink:8089" and meta["host"] == "http://meta-sink:8765"
    assert "lifecycle_demo.sinks.twilio_server" in services["sms-sink"]["command"]
    assert "--port 8089" in services["sms-sink"]["command"]
    assert "lifecycle_demo.sinks.meta_server" in services["meta-sink"]["command"]
    assert f"--token {meta['password']}" in services["meta-sink"]["command"]
