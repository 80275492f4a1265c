"""Airflow plugin of the lifecycle engine (Airflow loads the .py files of its plugins folder; the
engine's packages are left out by plugins/.airflowignore, so this file is the only plugin here).

- the Journeys page: a FastAPI app mounted in the API server at /journeys, shown in the UI's
  navigation ("Journeys") and, for one journey, as a tab of each DAG's page;
- the run-note listener: the scheduler copies each journey run's summary line onto its DAG run."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from lifecycle.ui import run_note_listener
from lifecycle.ui.app import URL_PREFIX, create_app

ICON = ("data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' "
        "stroke='%23868e96' stroke-width='2'><path d='M3 4h18l-7 8v6l-4 2v-8z'/></svg>")


class LifecyclePlugin(AirflowPlugin):
    name = "lifecycle"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Journeys"}]
    external_views = [
        {"name": "Journeys", "href": f"{URL_PREFIX}/", "url_route": "journeys", "destination": "nav",
         "nav_top_level": True, "icon": ICON},
        {"name": "Journey results", "href": f"{URL_PREFIX}/?journey={{DAG_ID}}", "url_route": "journey-results",
         "destination": "dag", "icon": ICON},
    ]
    listeners = [run_note_listener]
