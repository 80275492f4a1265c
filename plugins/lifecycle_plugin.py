"""Airflow plugin of the lifecycle engine (Airflow loads the .py files of its plugins folder; the
engine's packages are left out by plugins/.airflowignore, so this file is the only plugin here).

- the Journeys page: a FastAPI app mounted in the API server at /journeys, shown in the UI's
  navigation ("Journeys") and, for one journey, as a tab of each DAG's page;
- the run-note listener: the scheduler copies each journey run's summary line onto its DAG run.

Every Airflow process loads this file, each task process too (for its listeners), and only the API
server serves the page: the page's app is built, and FastAPI imported, on its first request."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from lifecycle.ui import URL_PREFIX, run_note_listener

ICON = ("data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' "
        "stroke='%23868e96' stroke-width='2'><path d='M3 4h18l-7 8v6l-4 2v-8z'/></svg>")


class JourneysPage:
    """An ASGI app that builds lifecycle.ui.app's app when the API server first hands it a request
    (or its lifespan events) and passes everything on to it. Airflow only mounts what it is given
    (`app.mount(url_prefix, app)`): any ASGI callable will do."""

    def __init__(self) -> None:
        self.app = None

    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:  # no await before this assignment: two first requests cannot both build
            from lifecycle.ui.app import create_app

            self.app = create_app()
        await self.app(scope, receive, send)


class LifecyclePlugin(AirflowPlugin):
    name = "lifecycle"
    fastapi_apps = [{"app": JourneysPage(), "url_prefix": URL_PREFIX, "name": "Journeys"}]
    external_views = [
        {"name": "Journeys", "href": f"{URL_PREFIX}/", "url_route": "journeys", "destination": "nav",
         "nav_top_level": True, "icon": ICON},
        {"name": "Journey results", "href": f"{URL_PREFIX}/?journey={{DAG_ID}}", "url_route": "journey-results",
         "destination": "dag", "icon": ICON},
    ]
    listeners = [run_note_listener]
