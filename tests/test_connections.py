"""Airflow connections reach the clients the providers' hooks build: the warehouse engine
(PostgresHook's URL, on the embedded server's unix socket and the service over TCP) and the
email channel's SMTP sessions (SmtpHook: TLS with certificate checks, AUTH, timeout, retry limit),
each against a real server."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest
import sqlalchemy as sa
from channels.network import self_signed  # tests/channels/network.py

from lifecycle.channels.base import ChannelUnavailable
from lifecycle.channels.email import EmailChannel, OutboundEmail
from lifecycle.warehouse import airflow_conn_json, airflow_warehouse_engine

APP = "lifecycle-connections-test"
# The implicit-TLS test server requires AUTH without aiosmtpd's own STARTTLS: it is TLS anyway.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


# ---------------------------------------------------------------------------- the warehouse
@pytest.mark.parametrize("form", ["json", "uri"])
def test_the_warehouse_connection_and_its_libpq_extras_reach_the_engine(warehouse_url, form, monkeypatch):
    """JSON or URI (Airflow's own round trip), socket directory or TCP: the engine reaches the
    connection's database with its libpq extras; PostgresHook's own extras (`cursor`) are not
    passed to libpq, which would refuse them. One pooled engine per process."""
    from airflow.sdk import Connection

    conn = json.loads(airflow_conn_json(warehouse_url))
    conn["extra"] = {"application_name": APP, "cursor": "dictcursor"}
    value = json.dumps(conn)
    if form == "uri":
        value = Connection.from_json(value, conn_id="x").get_uri()
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_CONNECTIONS_TEST", value)

    engine = airflow_warehouse_engine("lifecycle_connections_test")
    with engine.connect() as db:
        database, app = db.execute(sa.text("SELECT current_database(), current_setting('application_name')")).one()
    assert (database, app) == (sa.make_url(warehouse_url).database, APP)
    assert airflow_warehouse_engine("lifecycle_connections_test") is engine
    assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._pre_ping) == (2, 2, True)
    # Great Expectations gets the URL as text: it must name the same server and database.
    text = sa.create_engine(engine.url.render_as_string(hide_password=False))
    with text.connect() as db:
        assert db.execute(sa.text("SELECT current_database()")).scalar() == database
    text.dispose()


def test_a_missing_warehouse_connection_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_LIFECYCLE_NOWHERE", raising=False)
    with pytest.raises(RuntimeError, match="AIRFLOW_CONN_LIFECYCLE_NOWHERE"):
        airflow_warehouse_engine("lifecycle_nowhere")


# ---------------------------------------------------------------------------- SMTP
def message(to: str = "ana@example.com") -> OutboundEmail:
    return OutboundEmail(to=to, subject="Hi", text="Hi\n", html="<p>Hi</p>", message_id="<1@lifecycle.test>")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1: (cert file, key file)."""
    return self_signed(tmp_path_factory.mktemp("tls"))


class TLSServer:
    """A real SMTP server (aiosmtpd) with TLS, implicit (`implicit=True`, as on port 465) or
    STARTTLS required before MAIL, and AUTH required: login `shop`, password `secret`."""

    def __init__(self, certificate, implicit: bool):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"shop", b"secret")
            return AuthResult(success=ok, handled=False)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, certificate))
        self.received: list[tuple[str, list[str]]] = []
        # aiosmtpd offers AUTH only after its own STARTTLS unless told otherwise; implicit TLS
        # is TLS from the first byte (a plain client cannot even read the greeting).
        tls = ({"ssl_context": context, "auth_require_tls": False} if implicit
               else {"tls_context": context, "require_starttls": True})
        with socket.socket() as probe:  # a free port
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, server_hostname="sink",
                                     authenticator=authenticate, auth_required=True, ready_timeout=10.0, **tls)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
        self.received.append((envelope.mail_from, envelope.rcpt_tos))
        return "250 2.0.0 Ok: queued as TLS1"

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_tls_verifies_the_server_certificate_unless_the_connection_says_none(certificate, implicit, monkeypatch):
    """SmtpHook's SSL context: the server's certificate is checked (an untrusted one fails the
    channel before anything is sent), trusting it lets the mail through with AUTH over TLS, and
    the connection extra `ssl_context: none` skips the check (a self-signed lab server)."""
    settings = {"use_ssl": True} if implicit else {"starttls": True}
    with TLSServer(certificate, implicit) as server:
        untrusted = EmailChannel("127.0.0.1", server.port, login="shop", password="secret", **settings)
        with pytest.raises(ChannelUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.__enter__()

        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # read by ssl.create_default_context()
        with EmailChannel("127.0.0.1", server.port, login="shop", password="secret", **settings) as channel:
            assert channel.deliver(message()).status == "sent"
        monkeypatch.delenv("SSL_CERT_FILE")

        with EmailChannel("127.0.0.1", server.port, login="shop", password="secret", ssl_context="none",
                          **settings) as channel:
            assert channel.deliver(message("bo@example.com")).status == "sent"
        with pytest.raises(ChannelUnavailable, match="535"):  # AUTH is the hook's too
            EmailChannel("127.0.0.1", server.port, login="shop", password="wrong", ssl_context="none",
                         **settings).__enter__()
    assert server.received == [("hello@shop.example.com", ["ana@example.com"]),
                               ("hello@shop.example.com", ["bo@example.com"])]


def test_the_airflow_connection_configures_implicit_tls_without_starttls(certificate, monkeypatch):
    """Only `ssl_context` set: implicit TLS (the provider's default) and no STARTTLS inside it;
    `from_email` is the envelope sender."""
    with TLSServer(certificate, implicit=True) as server:
        monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP_TEST", json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": server.port, "login": "shop", "password": "secret",
             "extra": {"ssl_context": "none", "from_email": "news@shop.example.com"}}))
        with EmailChannel.from_airflow("lifecycle_smtp_test") as channel:
            assert channel.deliver(message()).status == "sent"
    assert server.received == [("news@shop.example.com", ["ana@example.com"])]


@pytest.fixture()
def listener():
    """A TCP socket on 127.0.0.1 that never answers (no SMTP greeting); `accepts` counts the
    connections taken, `hang_up` makes it close each at once instead."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    state = {"accepts": 0, "hang_up": False, "open": []}

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            state["accepts"] += 1
            conn.close() if state["hang_up"] else state["open"].append(conn)

    threading.Thread(target=serve, daemon=True).start()
    state["port"] = sock.getsockname()[1]
    yield state
    sock.close()
    for conn in state["open"]:
        conn.close()


def smtp_connection(port: int, **extra) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"disable_ssl": True, "disable_tls": True, **extra}})


def test_the_connection_timeout_reaches_the_smtp_client(listener, monkeypatch):
    """A server that accepts but never greets: with `timeout: 1` each attempt gives up after a
    second (the default waits 30), and smtplib reports it as a lost connection, which the hook
    retries (`retry_limit`) before the channel fails."""
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP_TEST",
                       smtp_connection(listener["port"], timeout=1, retry_limit=1))
    started = time.monotonic()
    with pytest.raises(ChannelUnavailable, match="Unable to connect"):
        EmailChannel.from_airflow("lifecycle_smtp_test").__enter__()
    assert 1.9 <= time.monotonic() - started < 15
    assert listener["accepts"] == 2


@pytest.mark.parametrize("retry_limit", [0, 2])
def test_the_connection_retry_limit_reaches_the_smtp_client(listener, retry_limit, monkeypatch):
    """A server that hangs up before its greeting is tried `retry_limit` more times, then the
    channel fails (the messages stay planned); nothing was sent, so a reconnect cannot double one."""
    listener["hang_up"] = True
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP_TEST", smtp_connection(listener["port"], retry_limit=retry_limit))
    with pytest.raises(ChannelUnavailable, match="Unable to connect"):
        EmailChannel.from_airflow("lifecycle_smtp_test").__enter__()
    assert listener["accepts"] == retry_limit + 1
