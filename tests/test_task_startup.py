"""What an Airflow task process pays before its task runs (benchmarks/task_startup.py measures it):
it parses dags/journeys.py in Airflow's parsing context, which names the DAG it runs, and builds
only that DAG, the same DAG a full parse builds; the plugin builds the Journeys page's app on the
page's first request, not at import; and the parse never imports the renderer (css_inline, babel)
or FastAPI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from lifecycle.config import PROJECT_DIR, SEGMENTS_DIR

DAG_FILE = PROJECT_DIR / "dags" / "journeys.py"
JOURNEYS = sorted(p.stem for p in SEGMENTS_DIR.glob("*.sql"))


def bag(dag_id: str | None = None, task_id: str | None = None):
    """The DagBag a task process builds (airflow.sdk.execution_time.task_runner.parse), in the
    parsing context of `dag_id`/`task_id` (none: the dag-processor's parse)."""
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager

    try:
        with _airflow_parsing_context_manager(dag_id=dag_id, task_id=task_id):
            return BundleDagBag(dag_folder=str(DAG_FILE), safe_mode=False, load_op_links=False,
                                bundle_path=str(DAG_FILE.parent), bundle_name="dags-folder")
    finally:  # Airflow's manager leaves a variable set that was unset before (tests/conftest.py)
        for name in ("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "_AIRFLOW_PARSING_CONTEXT_TASK_ID"):
            os.environ.pop(name, None)


def serialized(dag) -> dict:
    """The DAG as Airflow stores and compares it (tasks, params, timetable, docs, pools...)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.to_dict(dag)


@pytest.fixture(scope="module")
def full_bag():
    full = bag()
    assert full.import_errors == {}
    return full


@pytest.mark.parametrize("journey", JOURNEYS)
def test_a_task_process_builds_only_its_journeys_dag_and_the_same_one(full_bag, journey):
    one = bag(journey, "send_email")
    assert one.import_errors == {}
    assert set(one.dags) == {journey}
    assert serialized(one.dags[journey]) == serialized(full_bag.dags[journey])
    assert "send_email" in one.dags[journey].task_dict


def test_the_dispatcher_and_an_unknown_dag_id_build_every_dag(full_bag):
    """The dispatcher reads every live journey, so its task processes build all; a DAG id no file
    makes (a DAG since removed) gets the full parse too, and Airflow says it is not there."""
    dispatch = bag("lifecycle_dispatch", "collect")
    assert set(dispatch.dags) == set(full_bag.dags)
    assert serialized(dispatch.dags["lifecycle_dispatch"]) == serialized(full_bag.dags["lifecycle_dispatch"])
    assert set(bag("no_such_journey", "start_run").dags) == set(full_bag.dags)


def test_a_broken_files_task_process_builds_its_stand_in(tmp_path):
    """A broken file's stand-in DAG (named after the file, made safe) is built alone too, the same
    as in a full parse; a valid journey whose name a broken file's safe name collides with wins."""
    from lifecycle.dag_factory import build_dags

    shutil.copy(SEGMENTS_DIR / "cart_abandonment.sql", tmp_path)
    shutil.copy(SEGMENTS_DIR / "win_back.sql", tmp_path)
    broken = (SEGMENTS_DIR / "win_back.sql").read_text().replace("after: 7d", "after: a week")
    (tmp_path / "win back.sql").write_text(broken)  # its stand-in would be `win_back`: the journey keeps it
    (tmp_path / "no header.sql").write_text("SELECT 1 AS customer_id\n")  # -> `no_header`
    full = build_dags(tmp_path, dag_id="")
    assert set(full) == {"cart_abandonment", "win_back", "no_header", "lifecycle_dispatch"}
    for dag_id in ("cart_abandonment", "win_back", "no_header"):
        one = build_dags(tmp_path, dag_id=dag_id)
        assert set(one) == {dag_id}
        assert serialized(one[dag_id]) == serialized(full[dag_id])
    assert "broken" not in build_dags(tmp_path, dag_id="win_back")["win_back"].tags
    assert "must start with a header comment" in build_dags(tmp_path, dag_id="no_header")["no_header"].description


# What a task process has imported once it loaded the plugins and parsed its DAG, in a fresh process.
CHILD = """
import json, sys
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager
from airflow.sdk.listener import get_listener_manager

listeners = get_listener_manager()
with _airflow_parsing_context_manager(dag_id=sys.argv[1] or None, task_id="send_email" if sys.argv[1] else None):
    bag = BundleDagBag(dag_folder={dag_file!r}, safe_mode=False, load_op_links=False,
                       bundle_path={bundle!r}, bundle_name="dags-folder")
print(json.dumps({{"dags": sorted(bag.dags), "errors": list(bag.import_errors),
                  "listeners": [type(p).__name__ if not hasattr(p, "__name__") else p.__name__
                                for p in listeners.pm.get_plugins()],
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in {{
                      "lifecycle", "css_inline", "babel", "fastapi", "starlette", "lifecycle_plugin"}})}}))
"""


@pytest.mark.parametrize("dag_id", ["cart_abandonment", ""], ids=["task process", "dag-processor"])
def test_loading_the_plugin_and_parsing_imports_no_renderer_and_no_fastapi(dag_id, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("_AIRFLOW")}
    env.update({"AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"), "AIRFLOW_HOME": str(tmp_path),
                "PYTHONPATH": str(PROJECT_DIR / "plugins")})
    code = CHILD.format(dag_file=str(DAG_FILE), bundle=str(DAG_FILE.parent))
    done = subprocess.run([sys.executable, "-c", code, dag_id], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    assert seen["dags"] == ([dag_id] if dag_id else sorted([*JOURNEYS, "lifecycle_dispatch"]))
    assert "lifecycle.ui.run_note_listener" in seen["listeners"]  # the plugin was loaded
    assert "lifecycle_plugin" in seen["modules"] and "lifecycle.dag_factory" in seen["modules"]
    heavy = [m for m in seen["modules"] if m.split(".")[0] in {"css_inline", "babel", "fastapi", "starlette"}
             or m in {"lifecycle.render", "lifecycle.inlining", "lifecycle.ui.app"}]
    assert heavy == []


def test_the_journeys_page_is_built_on_its_first_request():
    """Airflow's API server mounts the plugin's app; the app behind it is made when a request comes."""
    import lifecycle_plugin
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    (entry,) = lifecycle_plugin.LifecyclePlugin.fastapi_apps
    page = lifecycle_plugin.JourneysPage()  # a fresh one: another test may have served the plugin's
    root = FastAPI()
    root.mount(entry["url_prefix"], page)
    assert isinstance(entry["app"], lifecycle_plugin.JourneysPage) and page.app is None
    with TestClient(root) as client:
        response = client.get(f"{entry['url_prefix']}/")
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}  # the page's login rule
    assert type(page.app) is FastAPI
