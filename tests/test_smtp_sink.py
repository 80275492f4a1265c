"""The local SMTP server: .eml outbox for the demo, scripted failures for the engine's tests.

Everything goes over a real SMTP conversation (smtplib -> aiosmtpd on 127.0.0.1).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from lifecycle_demo.sinks.smtp_server import EmlSink, RecordingSMTPServer, eml_filename, start_sink

ROOT = Path(__file__).resolve().parents[1]
EML_NAME = re.compile(r"^\d{8}T\d{12}Z_\d{6}_[A-Za-z0-9@._+-]+\.eml$")


def make_message(
    to: str = "ana.silva@example.com", subject: str = "Your cart is waiting €", n: int = 1
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Northwind Goods <hello@shop.example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<test-{n}@lifecycle.local>"
    msg.set_content(f"Hi Ana,\n.a line starting with a dot\nmessage {n}\n")
    msg.add_alternative(f"<p>Hi Ana, message {n} &mdash; é</p>", subtype="html")
    return msg


def send(port: int, msg: EmailMessage, to: list[str] | None = None) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(
            "hello@shop.example.com", to or [msg["To"]], msg.as_bytes(policy=email.policy.SMTP)
        )


# ------------------------------------------------------------------------------ .eml outbox


def test_eml_sink_writes_one_file_per_message(tmp_path):
    outbox = tmp_path / "outbox"
    with EmlSink(outbox) as sink:
        assert sink.port > 0
        msgs = [make_message(n=1), make_message(to="bob+promo@example.org", n=2)]
        for msg in msgs:
            assert send(sink.port, msg) == {}
        files = sorted(outbox.glob("*.eml"))
        assert files == sorted(sink.files)
    assert len(files) == 2
    assert all(EML_NAME.match(f.name) for f in files), [f.name for f in files]
    assert files[0].name.endswith("_000001_ana.silva@example.com.eml")
    assert files[1].name.endswith("_000002_bob+promo@example.org.eml")
    assert not list(outbox.glob("*.part"))

    for path, sent in zip(files, msgs, strict=True):
        raw = path.read_bytes()
        assert raw == sent.as_bytes(policy=email.policy.SMTP)  # byte for byte, dots unstuffed
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Subject"] == "Your cart is waiting €"
        assert parsed["To"] == sent["To"]
        assert ".a line starting with a dot" in parsed.get_body(("plain",)).get_content()
        assert "é" in parsed.get_body(("html",)).get_content()


def test_start_sink_returns_controller_and_port(tmp_path):
    controller, port = start_sink(tmp_path)
    try:
        assert port == controller.port and port > 0
        send(port, make_message(to="Weird Name/..\\x <w@example.com>"), to=["w/../@example.com"])
    finally:
        controller.stop()
    (path,) = tmp_path.glob("*.eml")
    assert path.parent == tmp_path  # the recipient cannot steer the path
    assert EML_NAME.match(path.name)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_eml_filename_sorts_and_sanitises():
    from datetime import UTC, datetime

    when = datetime(2025, 3, 5, 10, 0, 1, 123456, tzinfo=UTC)
    assert (
        eml_filename(7, ["<a b@x.com>", "c@y.com"], when) == "20250305T100001123456Z_000007_a_b@x.com+1.eml"
    )
    assert eml_filename(1, [], when).endswith("_000001_unknown.eml")


def test_cli_runs_until_killed(tmp_path):
    outbox = tmp_path / "cli-outbox"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifecycle_demo.sinks.smtp_server", "--outbox", str(outbox), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        port = int(match.group(1))
        send(port, make_message())
        deadline = time.monotonic() + 10
        while not list(outbox.glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (path,) = outbox.glob("*.eml")
        assert email.message_from_bytes(path.read_bytes())["Subject"]
        assert proc.poll() is None  # still running
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


# -------------------------------------------------------------------- recording test server


def test_recording_server_keeps_messages_in_memory():
    with RecordingSMTPServer() as smtp:
        send(smtp.port, make_message(n=1))
        second = make_message(n=2)
        send(smtp.port, second, to=["a@example.com", "b@example.com"])
        assert len(smtp.messages) == 2
        mail_from, rcpts, data = smtp.messages[1]
        assert mail_from == "hello@shop.example.com"
        assert rcpts == ["a@example.com", "b@example.com"]
        assert data == second.as_bytes(policy=email.policy.SMTP)
        assert smtp.messages[0].message()["Message-ID"] == "<test-1@lifecycle.local>"
        assert smtp.wait_for(2, timeout=1) == smtp.messages
        smtp.clear()
        assert smtp.messages == []


def test_reject_recipient_is_a_permanent_error_every_time():
    with RecordingSMTPServer(reject={"bad@example.com": "550 5.1.1 no such user"}) as smtp:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                send(smtp.port, make_message(to="bad@example.com"))
            assert info.value.recipients == {"bad@example.com": (550, b"5.1.1 no such user")}
        # mixed envelope: the good recipient still gets it, the refusal is reported
        refused = send(
            smtp.port, make_message(to="good@example.com"), to=["BAD@example.com", "good@example.com"]
        )
        assert refused == {"BAD@example.com": (550, b"5.1.1 no such user")}
        assert [m.rcpt_tos for m in smtp.messages] == [["good@example.com"]]
        assert [r[0] for r in smtp.refusals] == ["RCPT", "RCPT", "RCPT"]


def test_fail_nth_is_a_transient_error_once():
    with RecordingSMTPServer(fail_nth={3: "451 4.3.0 try again later"}) as smtp:
        send(smtp.port, make_message(n=1))
        send(smtp.port, make_message(n=2))
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(smtp.port, make_message(n=3))
        assert (info.value.smtp_code, info.value.smtp_error) == (451, b"4.3.0 try again later")
        assert len(smtp.messages) == 2
        send(smtp.port, make_message(n=3))  # the retry goes through
        send(smtp.port, make_message(n=4))
        assert [m.message()["Message-ID"] for m in smtp.messages] == [
            f"<test-{n}@lifecycle.local>" for n in (1, 2, 3, 4)
        ]
        assert smtp.data_attempts == 5
        assert smtp.fail_nth == {}


def test_failures_can_be_scripted_while_running_and_in_one_session():
    with RecordingSMTPServer() as smtp:
        smtp.fail_nth[2] = "554 5.7.1 message rejected as spam"
        smtp.reject["gone@example.com"] = "550 5.1.1 mailbox unavailable"
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as client:
            client.send_message(make_message(n=1))
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.send_message(make_message(n=2))
            assert info.value.smtp_code == 554
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.send_message(make_message(to="gone@example.com", n=3))
            client.send_message(make_message(n=4))  # the session is still usable
        assert len(smtp.messages) == 2


def test_two_servers_get_distinct_free_ports_and_stop_cleanly(tmp_path):
    a, b = RecordingSMTPServer().start(), RecordingSMTPServer(outbox=tmp_path).start()
    try:
        assert a.port != b.port
        send(b.port, make_message())
        assert len(b.messages) == 1 and len(list(tmp_path.glob("*.eml"))) == 1
    finally:
        a.stop()
        b.stop()
    with pytest.raises(RuntimeError):
        _ = a.port


def test_rendered_email_round_trip():
    """render_email -> MIME -> SMTP -> parsed back: the html part arrives unchanged."""
    from lifecycle.config import SHOP
    from lifecycle.render import render_email

    item = {
        "product_id": 1,
        "name": "Linen Shirt",
        "image_url": "https://cdn.example.com/1.jpg",
        "quantity": 1,
        "unit_price": 49,
        "product_url": "https://shop.example.com/p/1",
    }
    context = {
        "shop": SHOP,
        "customer": {
            "customer_id": 1,
            "first_name": "Zoë",
            "last_name": "L",
            "email": "z@example.com",
            "locale": "fr_FR",
            "country": "FR",
        },
        "row": {
            "cart_id": 1,
            "cart_updated_at": "2025-03-05T10:00:00Z",
            "cart_url": "https://shop.example.com/cart/1",
            "items": [item],
            "cart_total": 49,
        },
        "coupon": None,
        "links": {"unsubscribe": "https://shop.example.com/u/1", "preferences": "https://shop.example.com/p"},
        "journey": "cart_abandonment",
        "step": "reminder_1",
        "currency": "EUR",
    }
    rendered = render_email("cart_abandonment/reminder_1", context)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "hello@shop.example.com", "ana@example.com", rendered.subject
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    with RecordingSMTPServer() as smtp:
        send(smtp.port, msg)
        parsed = smtp.messages[0].message()
    assert parsed["Subject"] == rendered.subject

    def body(kind: str) -> str:
        return parsed.get_body((kind,)).get_content().replace("\r\n", "\n").rstrip("\n")

    assert body("html") == rendered.html.rstrip("\n")
    assert body("plain") == rendered.text.rstrip("\n")


def test_airflow_smtp_hook_with_the_compose_connection(monkeypatch):
    """The lifecycle_smtp connection from docker-compose.yaml (pointed at the sink) sends one message, no retry."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    conn = json.loads(compose["x-airflow-common"]["environment"]["AIRFLOW_CONN_LIFECYCLE_SMTP"])
    with RecordingSMTPServer(fail_nth={1: "451 4.3.0 try again later"}) as smtp:
        conn.update(host="127.0.0.1", port=smtp.port)
        monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP", json.dumps(conn))
        with SmtpHook(smtp_conn_id="lifecycle_smtp") as hook:
            with pytest.raises(smtplib.SMTPDataError):
                hook.send_email_smtp(to="ana@example.com", subject="Hi", html_content="<p>Hi</p>")
            assert smtp.data_attempts == 1  # retry_limit 0: the hook does not resend on its own
            hook.send_email_smtp(to="ana@example.com", subject="Hi", html_content="<p>Hi</p>")
        assert len(smtp.messages) == 1
        assert smtp.messages[0].mail_from == "hello@shop.example.com"
