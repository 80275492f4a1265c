"""A fifth channel is one module. WhatsApp, described in a test-only package
(tests/channels/fifth/whatsapp.py) and registered like the built-in channels, is accepted by
spec validation and template lookup, gets its send task and pool, and is planned and sent by the
engine, with no other edit: everything asks the registry (lifecycle.channels)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle.channels import CHANNELS, channel, discover
from lifecycle.config import SEGMENTS_DIR, TEMPLATES_DIR, frequency_caps
from lifecycle.render import missing_template_files, template_files
from lifecycle.spec import SpecError, load_spec

HEADER = """/* ---
journey: whatsapp_probe
schedule: hourly
entry_key: cart_id
entered_at: cart_updated_at
max_lateness: 7d
params: {{lookback_hours: 48, wait_hours: 1}}
steps:
  - {{name: nudge, after: 1h, channel: {channels}, template: cart_abandonment/reminder_1}}
--- */
"""
WHATSAPP_TEXT = "Hi {{ customer.first_name }}, your cart at {{ shop.name }} is waiting."


@pytest.fixture()
def whatsapp(monkeypatch, tmp_path):
    """The fifth channel registered (for this test only), with a copy of the templates that has
    its file for cart_abandonment/reminder_1."""
    from channels import fifth
    from channels.fifth import whatsapp as module

    for name, described in discover(fifth).items():
        monkeypatch.setitem(CHANNELS, name, described)
    templates = tmp_path / "include" / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    monkeypatch.setattr(module, "templates_dir", templates)
    module.DELIVERED.clear()
    return module


def segment(tmp_path, channels: str):
    body = (SEGMENTS_DIR / "cart_abandonment.sql").read_text().split("--- */", 1)[1]
    path = tmp_path / "whatsapp_probe.sql"
    path.write_text(HEADER.format(channels=channels) + body)
    return path


def test_spec_validation_and_template_lookup_accept_the_registered_channel(whatsapp, tmp_path, monkeypatch):
    templates = whatsapp.templates_dir
    assert channel("whatsapp") is whatsapp.CHANNEL
    assert template_files("cart_abandonment/reminder_1", "whatsapp", templates) == [
        templates / "cart_abandonment/reminder_1.whatsapp.txt"]
    path = segment(tmp_path, "[whatsapp, email]")

    # Its template file is required like any channel's ...
    with pytest.raises(SpecError) as missing:
        load_spec(path, templates_dir=templates)
    assert "is missing include/templates/cart_abandonment/reminder_1.whatsapp.txt (for whatsapp)" in str(missing.value)
    (templates / "cart_abandonment/reminder_1.whatsapp.txt").write_text(WHATSAPP_TEXT)
    assert missing_template_files("cart_abandonment/reminder_1", "whatsapp", templates) == []
    # ... and with it the journey loads, falling back to email.
    spec = load_spec(path, templates_dir=templates)
    assert spec.steps[0].channels == ("whatsapp", "email")
    # A channel no module describes is still refused, naming the registered ones.
    with pytest.raises(SpecError, match=r"'telegram' is not a channel .*available: email, push, sms, whatsapp"):
        load_spec(segment(tmp_path, "telegram"), templates_dir=templates)

    # Its own send task in its own pool; its frequency cap and unsubscribe page wording.
    from lifecycle.dag_factory import build_journey_dag
    from lifecycle.web_service import _label

    dag = build_journey_dag(spec)
    assert dag.get_task("send_whatsapp").pool == "lifecycle_whatsapp"
    assert dag.get_task("send_email").pool == "lifecycle_email"
    monkeypatch.setenv("LIFECYCLE_FREQUENCY_CAPS", "whatsapp=1/1d")
    assert frequency_caps() == {"whatsapp": (1, timedelta(days=1))}
    assert _label("whatsapp") == "WhatsApp messages"


def test_the_registry_is_read_without_any_provider_library():
    """Descriptions only: DAG parsing (spec, render, the registry) never imports a sender or its
    HTTP, phone-number or web-push libraries; the send task does, through `Channel.open()`."""
    code = ("import sys, lifecycle.channels, lifecycle.spec, lifecycle.render, lifecycle.stage; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'httpx', 'phonenumbers', 'pywebpush', "
            "'requests', 'urllib3', 'py_vapid', 'http_ece'} or m in {'lifecycle.send', 'lifecycle.channels.email', 'lifecycle.channels.sms', "
            "'lifecycle.channels.push'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.strip() == "[]"
    assert list(CHANNELS) == ["email", "push", "sms"]


def test_a_channel_module_is_named_after_its_channel(tmp_path, monkeypatch):
    package = tmp_path / "misnamed_channels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "telegram.py").write_text(
        "from dataclasses import replace\n"
        "from lifecycle.channels.catalog.sms import CHANNEL as SMS\n"
        "CHANNEL = replace(SMS, name='signal')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import misnamed_channels

    with pytest.raises(ValueError, match="misnamed_channels.telegram describes channel 'signal'"):
        discover(misnamed_channels)


def test_planning_and_sending_ask_the_registry(whatsapp, shop_db, smtp_server, tmp_path):
    from lifecycle.replay import run_interval

    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    (whatsapp.templates_dir / "cart_abandonment/reminder_1.whatsapp.txt").write_text(WHATSAPP_TEXT)
    spec = load_spec(segment(tmp_path, "[whatsapp, email]"), templates_dir=whatsapp.templates_dir)
    with engine.begin() as conn:  # the demo shop knows three channels; this one opts every other customer in
        conn.exec_driver_sql("ALTER TABLE shop.consents DROP CONSTRAINT consents_channel_check")
        conn.execute(sa.text("""
            INSERT INTO shop.consents (customer_id, channel, status, source, updated_at)
            SELECT customer_id, 'whatsapp', 'opted_in', 'test', :at FROM shop.customers
            WHERE customer_id::text ~ '[02468]$'"""), {"at": anchor - timedelta(days=30)})

    from lifecycle.channels.email import EmailChannel

    senders = {"email": lambda: EmailChannel("127.0.0.1", smtp_server.port)}
    run_interval(engine, spec, anchor - timedelta(hours=1), anchor,
                 lambda name: senders[name]() if name in senders else channel(name).open())

    with engine.connect() as conn:
        planned = conn.execute(sa.text(
            "SELECT customer_id, channel, status FROM lifecycle.messages WHERE step = 'nudge'")).all()
        # Who can receive WhatsApp, from the shop's own tables: a phone and the consent.
        reachable = set(conn.execute(sa.text("""
            SELECT c.customer_id::text FROM shop.customers c
            JOIN shop.consents k ON k.customer_id = c.customer_id AND k.channel = 'whatsapp' AND k.status = 'opted_in'
            WHERE nullif(trim(c.phone), '') IS NOT NULL""")).scalars())
        phones = dict(conn.execute(sa.text("SELECT customer_id::text, phone FROM shop.customers")).all())
    on_whatsapp = {c for c, ch, _ in planned if ch == "whatsapp"}
    assert on_whatsapp and on_whatsapp < {c for c, _, _ in planned}
    # The first channel they can receive; those who can receive neither are recorded on the
    # first one with the reason, never sent.
    assert {c for c, ch, _ in planned if ch == "email"}.isdisjoint(reachable)
    sent = {c for c, ch, st in planned if ch == "whatsapp" and st == "sent"}
    assert sent == on_whatsapp & reachable and sent
    assert {st for c, ch, st in planned if ch == "whatsapp" and c not in reachable} <= {"suppressed", "skipped"}
    assert sorted(m.to for m in whatsapp.DELIVERED) == sorted(phones[c] for c in sent)
    assert all(m.body.startswith("Hi ") and m.body.endswith("is waiting.") for m in whatsapp.DELIVERED)
    assert {st for c, ch, st in planned if ch == "email"} <= {"sent", "skipped", "suppressed"}

    # `lifecycle preview` shows what its builder makes.
    from lifecycle.preview import preview

    customer = min(sent, key=int)
    shown = preview(engine, spec, tmp_path / "preview", customer=customer, as_of=anchor)
    (path,) = [p for p in shown.written if p.name == "nudge.whatsapp.json"]
    assert json.loads(path.read_text())["to"] == phones[customer]
