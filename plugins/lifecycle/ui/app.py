"""The Journeys page's FastAPI app, which plugins/lifecycle_plugin.py mounts in Airflow's API server
at /journeys (and shows in the UI's navigation as an external view).

    GET /journeys/                  the page (HTML): ?since=YYYY-MM-DD&until=YYYY-MM-DD (inclusive) or
                                    ?days=N, &mode=live|dry, &journey=NAME (one journey: the DAG's tab)
    GET /journeys/api/journeys      the same data as JSON

Inside Airflow a request needs a logged-in user (the UI's session cookie, or a bearer token) and
shows only the journeys whose DAGs that user may read. The warehouse is the tasks' Airflow
connection (lifecycle_warehouse), read in a read-only transaction (lifecycle.ui.data).

No `from __future__ import annotations` here: FastAPI must see the `Annotated[..., Depends(local)]`
objects themselves, which postponed annotations would turn into names it looks up in the globals."""

import logging
import os
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.engine import Engine

from lifecycle.ui import URL_PREFIX

log = logging.getLogger(__name__)
NO_SCHEMA = ("The warehouse has no `lifecycle` schema yet: run `lifecycle migrate` (or `lifecycle init`) against it, "
             "then let a journey run.")


def default_engine() -> Engine:
    """The warehouse of the tasks: the Airflow connection LIFECYCLE_WAREHOUSE_CONN_ID names."""
    from lifecycle.config import settings
    from lifecycle.warehouse import airflow_warehouse_engine

    return airflow_warehouse_engine(settings().warehouse_conn_id)


def airflow_reader() -> Callable:
    """A dependency giving a filter: of some journeys, those whose DAG the logged-in Airflow user may
    read (401 without a login). Asked per DAG id of the auth manager, so it holds for journeys whose
    DAG Airflow has not parsed yet too. Airflow's API modules are imported on the first request, not
    when the plugin loads: every Airflow process loads plugins, only the API server serves this page."""
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer(auto_error=False)

    async def readable(request: Request,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Callable:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
        from airflow.api_fastapi.core_api.security import get_user

        user = await get_user(request, None, credentials)  # the bearer token, else the UI's session cookie
        manager = get_auth_manager()
        return lambda names: {n for n in names
                              if manager.is_authorized_dag(method="GET", details=DagDetails(id=n), user=user)}

    return readable


def create_app(engine: Callable[[], Engine] = default_engine, *, require_login: bool = True,
               airflow_url: str | None = None) -> FastAPI:
    """The app. `require_login=False` (tests, the local server of `main`) shows everything; `airflow_url`:
    where the DAG links point (default: the Airflow the app is mounted in)."""
    reader = airflow_reader() if require_login else (lambda: None)
    app = FastAPI(title="lifecycle: Journeys", docs_url=None, redoc_url=None, openapi_url=None)

    def collect(request: Request, allowed: Callable | None, since, until, days, mode, journey):
        from lifecycle.spec import load_all
        from lifecycle.ui.data import Period, PeriodError, has_lifecycle_schema, journey_views, read_only

        try:
            period = Period.parse(since, until, mode, journey, days)
        except PeriodError as exc:
            return None, [], str(exc)
        specs, errors = load_all()
        with read_only(engine()) as conn:
            if not has_lifecycle_schema(conn):
                return period, [], NO_SCHEMA
            return period, journey_views(conn, period, specs, errors, allowed), None

    params = dict(since=Query(None, description="first day (YYYY-MM-DD) or ISO time"),
                  until=Query(None, description="last day, inclusive (YYYY-MM-DD), or an exclusive ISO time"),
                  days=Query(None, description="the last N days (default 30) when since is not given"),
                  mode=Query("live", description="live or dry"),
                  journey=Query(None, description="one journey"))

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, allowed: Annotated[Any, Depends(reader)], since: str | None = params["since"],
             until: str | None = params["until"], days: int | None = params["days"], mode: str = params["mode"],
             journey: str | None = params["journey"]):
        from lifecycle.ui.data import Period
        from lifecycle.ui.page import render_page

        period, views, notice = collect(request, allowed, since, until, days, mode, journey)
        status = 200
        if period is None:  # a bad parameter: say which, show the default period
            period, status = Period.parse(None, None), 400
        root = request.scope.get("root_path", "")
        base = airflow_url if airflow_url is not None else (root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else "")
        html = render_page(views, period, airflow_base=base, page_url=f"{root}/", notice=notice)
        return HTMLResponse(html, status_code=status)

    @app.get("/api/journeys")
    def data(request: Request, allowed: Annotated[Any, Depends(reader)], since: str | None = params["since"],
             until: str | None = params["until"], days: int | None = params["days"], mode: str = params["mode"],
             journey: str | None = params["journey"]):
        from lifecycle.ui.page import as_json

        period, views, notice = collect(request, allowed, since, until, days, mode, journey)
        if period is None:
            return JSONResponse({"error": notice}, status_code=400)
        return JSONResponse({**as_json(views, period), "notice": notice})

    return app


def main(argv: list[str] | None = None) -> int:
    """`python -m lifecycle.ui.app`: the page on this machine alone (127.0.0.1, no login), without an
    Airflow API server: after `make demo`, say. Inside Airflow the plugin serves it with logins."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m lifecycle.ui.app", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--warehouse-url", help="default: AIRFLOW_CONN_LIFECYCLE_WAREHOUSE, else the embedded demo warehouse")
    parser.add_argument("--airflow-url", default="http://localhost:8080", help="where the DAG links point")
    args = parser.parse_args(argv)
    from lifecycle.cli import default_warehouse_url
    from lifecycle.config import WAREHOUSE_CONN_ID
    from lifecycle.warehouse import engine_for, warehouse_url

    if args.warehouse_url or os.environ.get(f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"):
        url = warehouse_url(args.warehouse_url)
    else:
        url = default_warehouse_url()
    warehouse = engine_for(url)
    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    root.mount(URL_PREFIX, create_app(lambda: warehouse, require_login=False, airflow_url=args.airflow_url.rstrip("/")))
    print(f"Journeys page: http://127.0.0.1:{args.port}{URL_PREFIX}/")
    uvicorn.run(root, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
