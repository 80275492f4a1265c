"""The web service's unsubscribe routes (RFC 8058 one-click and the manual page), run for real.

`python -m lifecycle.web_service` runs as a subprocess on a free port against the
module's demo shop (embedded PostgreSQL and the service), reading the warehouse from
AIRFLOW_CONN_LIFECYCLE_WAREHOUSE exactly as in docker-compose.yaml. Requests are made with
httpx as a mailbox provider makes them: follow_redirects=False, form body
`List-Unsubscribe=One-Click`. The acceptance test goes from a real email on a real SMTP
server to a suppressed next reminder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle
from cryptography.fernet import Fernet

from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR
from lifecycle.links import stay_token, unsubscribe_token
from lifecycle.replay import run_interval
from lifecycle.spec import load_spec
from lifecycle.warehouse import airflow_conn_json
from lifecycle_demo.ports import free_port

SHOP_SERVERS = ("embedded", "service")  # connection handling and concurrency: on the service too

SPEC = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
# The service's shop name: markup in it must come out escaped on every page.
SHOP_NAME = "Bits & <Bobs> \"Shop\""
SHOP_NAME_HTML = "Bits &amp; &lt;Bobs&gt; &#34;Shop&#34;"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
USED_TOKENS: list[str] = []  # every token sent to the service; none may show up in its log


@contextlib.contextmanager
def web_service_process(engine: sa.Engine, log_path: Path, **env_vars: str):
    """`python -m lifecycle.web_service` as its own process (the demo's launcher,
    lifecycle_demo.engagement.web_service), reading the warehouse of `engine` from the Airflow
    connection variable (as docker-compose.yaml does), logging at info; yields base URL, port, an
    httpx client (no redirects followed) and the log file. test_tracking uses it too."""
    from lifecycle_demo.engagement import web_service

    env = {
        **os.environ,
        "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": airflow_conn_json(engine.url.render_as_string(hide_password=False)),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
        **env_vars,
    }
    with web_service(None, env, log_path, log_level="info") as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as client:
            yield SimpleNamespace(base=base, port=port, client=client, log_path=log_path)


@pytest.fixture(scope="module")
def service(shop_db, tmp_path_factory):
    """The service as its own process, on the module's shop; yields base URL and log file."""
    log_path = tmp_path_factory.mktemp("unsubscribe") / "service.log"
    with web_service_process(shop_db[0], log_path, LIFECYCLE_SHOP_NAME=SHOP_NAME) as running:
        yield running


@pytest.fixture()
def shop(shop_db):
    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    return engine, planted, anchor


def suppressions(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT customer_id::bigint, channel, reason, source FROM lifecycle.suppressions ORDER BY customer_id, channel"))]


def customer(engine, offset: int = 0):
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT customer_id, email, first_name, last_name FROM shop.customers ORDER BY customer_id "
            "OFFSET :o LIMIT 1"), {"o": offset}).one()


def token(customer_id: int, channel: str = "email") -> str:
    t = unsubscribe_token(customer_id, channel)
    USED_TOKENS.append(t)
    return t


def received_by(server, address: str) -> list:
    return [m for m in server.messages if address in m.rcpt_tos]


# ---------------------------------------------------------------------------- 1. acceptance
def test_one_click_from_a_real_email_suppresses_the_next_reminder(shop, service, smtp_server):
    engine, planted, anchor = shop
    case = planted["cart_recent"]  # cart updated at A-2h: reminder_1 due at A-1h, reminder_2 at A+22h
    channel_for = lambda name: EmailChannel("127.0.0.1", smtp_server.port)  # noqa: E731

    first = run_interval(engine, SPEC, anchor - timedelta(hours=1), anchor, channel_for)
    assert first["messages"].get("sent")
    (mail,) = received_by(smtp_server, case.email)
    message = mail.message()
    assert message["X-Lifecycle-Step"] == "reminder_1"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
    https = [link for link in links if link.startswith("https://")]
    assert https and any(link.startswith("mailto:") for link in links)
    USED_TOKENS.append(https[0].split("t=", 1)[1])

    # The mailbox provider POSTs to the https URI; here the shop's host is this service.
    parts = urlsplit(https[0])
    local = urlunsplit(("http", f"127.0.0.1:{service.port}", parts.path, parts.query, ""))
    response = httpx.post(local, data=ONE_CLICK, follow_redirects=False, timeout=10)
    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/plain")
    assert suppressions(engine) == [(case.customer_id, "email", "unsubscribe", "one_click")]

    # The hour in which reminder_2 falls due.
    with engine.connect() as conn:
        next_step, due = conn.execute(sa.text(
            "SELECT next_step, next_due_at FROM lifecycle.enrollments "
            "WHERE journey = 'cart_abandonment' AND enrollment_key = :k"), {"k": str(case.cart_id)}).one()
    assert next_step == "reminder_2"
    end = due.replace(minute=0, second=0, microsecond=0)
    if end < due:
        end += timedelta(hours=1)
    before = len(smtp_server.messages)
    run_interval(engine, SPEC, end - timedelta(hours=1), end, channel_for)

    assert not received_by(smtp_server, case.email)[1:], "an unsubscribed customer got another email"
    assert all(case.email not in m.rcpt_tos for m in smtp_server.messages[before:])
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT m.step, m.status, m.reason FROM lifecycle.messages m "
            "JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE e.enrollment_key = :k ORDER BY m.due_at"), {"k": str(case.cart_id)}).all()
    assert [tuple(r) for r in rows] == [
        ("reminder_1", "sent", None),
        ("reminder_2", "suppressed", "suppressed: unsubscribe"),
    ]


# ---------------------------------------------------------------------------- 2. the manual page
def test_get_confirms_without_writing_then_post_confirm_suppresses_once(shop, service):
    engine = shop[0]
    who = customer(engine)
    t = token(who.customer_id)

    page = service.client.get("/unsubscribe", params={"t": t})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert re.search(r'<form method="post" action="\?t=[^"]+">', html)
    assert '<input type="hidden" name="confirm" value="yes">' in html
    assert "marketing emails" in html and SHOP_NAME_HTML in html and SHOP_NAME not in html
    for private in (who.email, who.first_name, who.last_name):
        assert private not in html
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert service.client.head("/unsubscribe", params={"t": t}).status_code == 200
    assert suppressions(engine) == []  # scanners prefetch links: a GET changes nothing

    # The form's action resolves to the same URL (path and token).
    action = re.search(r'action="([^"]+)"', html).group(1).replace("&amp;", "&")
    target = httpx.URL(str(page.url)).join(action)
    assert target.path == "/unsubscribe" and target.params["t"] == t
    done = service.client.post(target, data={"confirm": "yes"})
    assert done.status_code == 200 and "You're unsubscribed" in done.text.replace("&#39;", "'")
    assert who.email not in done.text and SHOP_NAME_HTML in done.text
    assert suppressions(engine) == [(who.customer_id, "email", "unsubscribe", "unsubscribe_page")]

    for _ in range(2):  # again from the page, and once more by one-click: still one row
        assert service.client.post(target, data={"confirm": "yes"}).status_code == 200
    assert service.client.post("/unsubscribe", params={"t": t}, data=ONE_CLICK).status_code == 200
    assert suppressions(engine) == [(who.customer_id, "email", "unsubscribe", "unsubscribe_page")]


def test_post_needs_one_click_or_confirm(shop, service):
    engine = shop[0]
    t = token(customer(engine).customer_id)
    for body in ({}, {"confirm": "no"}, {"List-Unsubscribe": "Yes"}, {"foo": "bar"}):
        response = service.client.post("/unsubscribe", params={"t": t}, data=body)
        assert response.status_code == 400, body
        assert "location" not in response.headers
    assert service.client.post("/unsubscribe", params={"t": t}, content=b"x" * 20_000,
                               headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413
    assert suppressions(engine) == []


def test_one_click_as_multipart_and_with_a_trailing_slash(shop, service):
    """RFC 8058 allows multipart/form-data; neither spelling of the path may redirect."""
    engine = shop[0]
    who = customer(engine, 1)
    t = token(who.customer_id)
    response = service.client.post("/unsubscribe/", params={"t": t}, files={"List-Unsubscribe": (None, "One-Click")})
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert response.status_code == 200 and "location" not in response.headers
    assert suppressions(engine) == [(who.customer_id, "email", "unsubscribe", "one_click")]


# ---------------------------------------------------------------------------- 3. bad and other tokens
def test_tampered_or_foreign_tokens_are_refused_and_write_nothing(shop, service):
    engine = shop[0]
    t = token(customer(engine).customer_id)
    middle = len(t) // 2
    tampered = t[:middle] + ("A" if t[middle] != "A" else "B") + t[middle + 1:]
    other_key = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"someone-else").digest()))
    foreign = other_key.encrypt(f"{customer(engine).customer_id}:email".encode()).decode()
    USED_TOKENS.extend([tampered, foreign])
    for bad in (tampered, foreign, t[:-4], "not-a-token", "", "x" * 5000):
        one_click = service.client.post("/unsubscribe", params={"t": bad}, data=ONE_CLICK)
        assert one_click.status_code == 400 and "location" not in one_click.headers
        page_post = service.client.post("/unsubscribe", params={"t": bad}, data={"confirm": "yes"})
        assert page_post.status_code == 400 and "not valid" in page_post.text
        page = service.client.get("/unsubscribe", params={"t": bad})
        assert page.status_code == 400 and "<form" not in page.text
    assert service.client.post("/unsubscribe", data=ONE_CLICK).status_code == 400  # no token at all
    assert suppressions(engine) == []


def test_a_token_for_another_channel_suppresses_only_that_channel(shop, service):
    engine = shop[0]
    who = customer(engine, 2)
    t = token(who.customer_id, "sms")
    assert "marketing text messages" in service.client.get("/unsubscribe", params={"t": t}).text
    assert service.client.post("/unsubscribe", params={"t": t}, data=ONE_CLICK).status_code == 200
    assert suppressions(engine) == [(who.customer_id, "sms", "unsubscribe", "one_click")]


# ---------------------------------------------------------------------------- 4. "keep me subscribed"
def sunset(engine, customer_id: int, reason: str = "no_response", days_ago: int = 3) -> None:
    """An active suppression as win_back's stop_emailing (or the service) writes it."""
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source, since) "
                             "VALUES (:c, 'email', :r, 'win_back', now() - make_interval(days => :d))"),
                     {"c": customer_id, "r": reason, "d": days_ago})


def history(engine, customer_id: int) -> list[tuple]:
    """(reason, lifted?, lifted_reason, lifted_ref) of every suppression row, oldest first."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT reason, lifted_at IS NOT NULL, lifted_reason, lifted_ref FROM lifecycle.suppressions "
            "WHERE customer_id = :c ORDER BY suppression_id"), {"c": str(customer_id)})]


def choices(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT customer_id::bigint, channel, choice, source FROM lifecycle.preference_choices ORDER BY choice_id"))]


def stay(customer_id: int, channel: str = "email") -> str:
    t = stay_token(customer_id, channel)
    USED_TOKENS.append(t)
    return t


@pytest.fixture()
def no_choices(shop):
    with shop[0].begin() as conn:
        conn.exec_driver_sql("DELETE FROM lifecycle.preference_choices")
    return shop


def test_preferences_page_asks_then_a_post_records_the_stay_and_lifts_the_sunset(no_choices, service):
    engine = no_choices[0]
    sunset_customer, unsubscribed = customer(engine, 3), customer(engine, 4)
    sunset(engine, sunset_customer.customer_id)
    sunset(engine, unsubscribed.customer_id, "unsubscribe")
    t = stay(sunset_customer.customer_id)

    page = service.client.get("/preferences", params={"t": t, "utm_source": "lifecycle"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<input type="hidden" name="choice" value="stay">' in page.text
    assert "marketing emails" in page.text and SHOP_NAME_HTML in page.text
    for private in (sunset_customer.email, sunset_customer.first_name, sunset_customer.last_name):
        assert private not in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    # The page also offers to unsubscribe instead: a working unsubscribe link for the same customer.
    other = re.search(r'href="(/unsubscribe\?t=[^"]+)"', page.text).group(1).replace("&amp;", "&")
    USED_TOKENS.append(httpx.URL(other).params["t"])
    assert service.client.get(other).status_code == 200
    assert choices(engine) == [] and history(engine, sunset_customer.customer_id) == [
        ("no_response", False, None, None)]  # link scanners fetch URLs: a GET records nothing

    action = re.search(r'action="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    target = httpx.URL(str(page.url)).join(action)
    assert target.path == "/preferences" and target.params["t"] == t
    done = service.client.post(target, data={"choice": "stay"})
    assert done.status_code == 200 and "still subscribed" in done.text.replace("&#39;", "'")
    assert choices(engine) == [(sunset_customer.customer_id, "email", "stay", "preferences_page")]
    (row,) = history(engine, sunset_customer.customer_id)
    assert row[:3] == ("no_response", True, "chose_to_stay") and row[3].startswith("choice ")

    # "Stay" never overrides an unsubscribe: the choice is recorded, the unsubscribe stays active.
    assert service.client.post("/preferences", params={"t": stay(unsubscribed.customer_id)},
                               data={"choice": "stay"}).status_code == 200
    assert history(engine, unsubscribed.customer_id) == [("unsubscribe", False, None, None)]
    for body in ({}, {"choice": "leave"}, {"confirm": "yes"}):
        assert service.client.post("/preferences", params={"t": t}, data=body).status_code == 400
    assert len(choices(engine)) == 2


def test_stay_and_unsubscribe_tokens_cannot_stand_in_for_each_other(no_choices, service):
    engine = no_choices[0]
    who = customer(engine, 5)
    sunset(engine, who.customer_id)
    unsubscribe, keep = token(who.customer_id), stay(who.customer_id)
    assert service.client.get("/preferences", params={"t": unsubscribe}).status_code == 400
    assert service.client.post("/preferences", params={"t": unsubscribe}, data={"choice": "stay"}).status_code == 400
    assert service.client.get("/unsubscribe", params={"t": keep}).status_code == 400
    assert service.client.post("/unsubscribe", params={"t": keep}, data=ONE_CLICK).status_code == 400
    assert service.client.post("/unsubscribe", params={"t": keep}, data={"confirm": "yes"}).status_code == 400
    assert choices(engine) == [] and history(engine, who.customer_id) == [("no_response", False, None, None)]


def test_an_unsubscribe_supersedes_a_sunset_so_an_order_cannot_lift_it(no_choices, service):
    """An unsubscribe on top of an active sunset closes the sunset (history) and is recorded
    itself: the order that would have lifted the sunset leaves the unsubscribe in force."""
    from lifecycle.suppression import lift_sunsets

    engine = no_choices[0]
    who = customer(engine, 6)
    sunset(engine, who.customer_id)
    assert service.client.post("/unsubscribe", params={"t": token(who.customer_id)}, data=ONE_CLICK).status_code == 200
    assert history(engine, who.customer_id) == [("no_response", True, "superseded", "unsubscribe"),
                                                ("unsubscribe", False, None, None)]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total) "
                             "VALUES (990001, :c, now(), 'placed', 10)"), {"c": who.customer_id})
        assert lift_sunsets(conn, datetime.now(UTC) + timedelta(minutes=1)) == 0
    assert history(engine, who.customer_id)[-1] == ("unsubscribe", False, None, None)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM shop.orders WHERE order_id = 990001"))


# ---------------------------------------------------------------------------- 5. health, logs
def test_health(service):
    response = service.client.get("/health")
    assert response.status_code == 200 and response.text == "ok"
    assert service.client.post("/health").status_code == 405


def test_health_reports_an_unreachable_warehouse():
    import asyncio

    from lifecycle.web_service import create_app, make_engine

    engine = make_engine(f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/nowhere")

    async def requests():
        transport = httpx.ASGITransport(app=create_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://unsubscribe") as client:
            health = await client.get("/health")
            failed = await client.post("/unsubscribe", params={"t": unsubscribe_token(1, "email")}, data=ONE_CLICK)
        return health, failed

    health, failed = asyncio.run(requests())
    engine.dispose()
    assert health.status_code == 503
    assert failed.status_code == 503 and "location" not in failed.headers  # the provider may retry


def test_warehouse_from_the_airflow_connection_or_a_url():
    from lifecycle.web_service import warehouse_url

    conn = airflow_conn_json("postgresql://shop:pw@db.internal:5433/wh")
    url = warehouse_url(environ={"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": conn})
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2", "shop", "pw", "db.internal", 5433, "wh")
    socket_dir = warehouse_url(environ={"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": airflow_conn_json(
        "postgresql://postgres@/postgres?host=/tmp/pg")})
    assert socket_dir.query["host"] == "/tmp/pg" and socket_dir.host is None
    uri = warehouse_url(environ={"AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": "postgres://u:p@h:5432/d"})
    assert (uri.drivername, uri.host, uri.database) == ("postgresql+psycopg2", "h", "d")
    assert warehouse_url("postgresql://u@h/d", environ={}).drivername == "postgresql+psycopg2"
    with pytest.raises(ValueError, match="AIRFLOW_CONN_LIFECYCLE_WAREHOUSE"):
        warehouse_url(environ={})


def test_the_log_carries_no_tokens_or_addresses(shop_db, service):
    engine = shop_db[0]
    text = service.log_path.read_text()
    assert "unsubscribe recorded" in text and "POST /unsubscribe" in text  # it does log, though
    assert USED_TOKENS
    for t in USED_TOKENS:
        assert t not in text
    assert "t=" not in text and "gAAAA" not in text
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text), "an address in the service log"
    with engine.connect() as conn:
        emails = conn.execute(sa.text("SELECT email FROM shop.customers")).scalars().all()
    assert not [e for e in emails if e and e in text]


# ---------------------------------------------------------------------------- the signing key
@pytest.mark.parametrize(("key", "problem"), [
    (None, "is not set"),
    ("short-but-random-Zq8", "too short: 20 bytes"),
    ("x" * 48, "one character repeated"),
    ("ab" * 24, "low-entropy"),
    ("password" * 5, "low-entropy"),
], ids=["missing", "short", "repeated", "two-characters", "a-word-repeated"])
def test_the_service_refuses_to_start_without_a_sound_signing_key(key, problem):
    """Started without a usable key it used to report healthy and answer 500 to every unsubscribe
    (or, with a guessable key, accept forged ones): now it exits at once and says why."""
    env = {k: v for k, v in os.environ.items() if k != "LIFECYCLE_SIGNING_KEY"}
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
            "AIRFLOW_CONN_LIFECYCLE_WAREHOUSE": "postgresql://nobody@127.0.0.1:1/none"}
    if key is not None:
        env["LIFECYCLE_SIGNING_KEY"] = key
    done = subprocess.run([sys.executable, "-m", "lifecycle.web_service", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and problem in done.stderr and "LIFECYCLE_SIGNING_KEY" in done.stderr
    if key:
        assert key not in done.stderr  # the message never echoes the key


def test_keys_the_project_makes_are_accepted(monkeypatch, tmp_path):
    """`lifecycle env` / `make demo`, the advised `token_urlsafe(32)` and the tests' own key all
    pass; docker-compose has no default key (a public one would forge unsubscribes)."""
    import secrets

    from lifecycle.links import signing_key_problem
    from lifecycle_demo.cli import airflow_env

    test_key = os.environ["LIFECYCLE_SIGNING_KEY"]
    monkeypatch.delenv("LIFECYCLE_SIGNING_KEY")
    demo_key = airflow_env(tmp_path, "postgresql://u@127.0.0.1/w", 1025)["LIFECYCLE_SIGNING_KEY"]
    assert "LIFECYCLE_SIGNING_KEY:-" not in (PLUGINS.parent / "docker-compose.yaml").read_text()
    for key in (demo_key, test_key, secrets.token_urlsafe(32),
                secrets.token_hex(32)):
        assert signing_key_problem(key) is None, key
