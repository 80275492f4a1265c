"""The Journeys page in a real browser: Airflow's own API server (`airflow api-server`) loads the plugin
from plugins/, headless Chromium logs in as a viewer (simple auth manager, a user with a password) and
reads the planted funnel, first on the page itself, then inside the Airflow UI, where the page is the
"Journeys" entry of the navigation (an iframe). Without a login the page is refused. PNG screenshots go
to test-output/ui/.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright without downloading a browser.
Without it the test is skipped with a message, except under CI=true, where it must run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_ui_page import EMAIL_1, EMAIL_2, JOURNEY, plant

from lifecycle.config import PROJECT_DIR
from lifecycle.warehouse import airflow_conn_json
from lifecycle_demo.ports import free_port

pytestmark = pytest.mark.slow  # starts Airflow's API server and a browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = PROJECT_DIR / "test-output" / "ui"
USER, PASSWORD = "analyst", "journeys-page-password"


def _need_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    message = "no chromium: `apt-get install chromium` (Debian) to run the browser test"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def planted_now(shop_db):
    """The planted month, dated ten days ago: the page's default period (the last 30 days) holds it."""
    engine, _, _ = shop_db
    t0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    return engine, plant(engine, t0), t0


@pytest.fixture(scope="module")
def starting_api_server(shop_db, airflow_db, tmp_path_factory):
    """`airflow api-server` on a free port with this repository's plugins folder and the module's
    warehouse (and the session's migrated metadata database, which it checks at start), started
    but not waited for: it takes the longest to come up (half a minute under load), so meanwhile
    the browser starts and the data is planted (the page reads the warehouse per request)."""
    _need_chromium()
    engine, _, _ = shop_db
    port = free_port()
    home = tmp_path_factory.mktemp("api-server")
    log = home / "api-server.log"
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    env = {**os.environ,
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"),
           "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
           "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
           "AIRFLOW__API_AUTH__JWT_SECRET": "journeys-page-test-secret",
           "AIRFLOW__API__WORKERS": "1",
           "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": airflow_conn_json(engine.url.render_as_string(hide_password=False)),
           "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR / "plugins"), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port",
                                   str(port), "--workers", "1"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # its own process group: its worker stops with it
    try:
        yield server, f"http://127.0.0.1:{port}", log
    finally:
        _stop_group(server)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM, 3 s for a graceful exit (uvicorn took 8 s under load), then SIGKILL the group."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(starting_api_server):
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def api_server(starting_api_server, browser, planted_now):
    """The API server's base URL, once it answers its health check."""
    server, base, log = starting_api_server
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the API server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
    return base


def _funnel_cell(scope, step: str, variant: str, metric: str) -> str:
    row = scope.locator(f'table.funnel-table[data-journey="{JOURNEY}"] tr[data-step="{step}"][data-variant="{variant}"]')
    return row.locator(f'td[data-metric="{metric}"]').inner_text().strip()


def test_the_journeys_page_shows_the_planted_funnel_in_chromium(api_server, browser, planted_now):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    _, found, _ = planted_now
    # Without a login the plugin's app refuses the page.
    anonymous = browser.new_page()
    assert anonymous.goto(f"{api_server}/journeys/").status == 401
    anonymous.close()

    # Log in as the viewer (the token the UI keeps in its `_token` cookie) and open the page, served by
    # the plugin in the API server.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    login = context.request.post(f"{api_server}/auth/token", data={"username": USER, "password": PASSWORD})
    assert login.status == 201, login.text()
    context.add_cookies([{"name": "_token", "value": login.json()["access_token"], "url": api_server}])
    page = context.new_page()
    page.goto(f"{api_server}/journeys/?journey={JOURNEY}")
    try:
        page.wait_for_selector(f'section.journey[data-journey="{JOURNEY}"]')
    except Exception:
        page.screenshot(path=str(OUTPUT / "failed.png"))
        raise AssertionError(f"{page.url}\n{page.content()[:3000]}") from None
    for metric in ("sent", "opened", "clicked", "converted"):
        assert _funnel_cell(page, "email_1", "", metric) == str(EMAIL_1[metric])
    for variant, numbers in EMAIL_2.items():
        assert _funnel_cell(page, "email_2", variant, "clicked") == str(numbers["clicked"])
    assert page.locator('svg.funnel g[data-step="email_1"][data-metric="clicked"] text').text_content().startswith(
        f"clicked {EMAIL_1['clicked']} ")
    assert page.locator("a.dag-link").get_attribute("href") == f"/dags/{JOURNEY}"
    text = page.locator("body").inner_text()
    assert not [a for a in found["addresses"] if a and a in text]
    page.screenshot(path=str(OUTPUT / "journeys-page.png"), full_page=True)

    # Inside the Airflow UI: the navigation's "Journeys" view frames the same page.
    page.goto(f"{api_server}/plugin/journeys")
    frame = page.frame_locator("iframe")
    frame.locator(f'section.journey[data-journey="{JOURNEY}"]').wait_for(timeout=60_000)
    assert _funnel_cell(frame, "email_1", "", "sent") == str(EMAIL_1["sent"])
    summary = frame.locator(f'#summary tr[data-journey="{JOURNEY}"]')
    assert summary.locator('td[data-metric="converted"]').inner_text() == "4"
    page.screenshot(path=str(OUTPUT / "airflow-journeys.png"))
    context.close()
