"""A fifth channel, WhatsApp, as a deployment would add it: one module with its description,
its builder and its sender (here an outbox in memory instead of the WhatsApp Cloud API)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lifecycle.channels.base import Outcome
from lifecycle.channels.catalog.sms import CHANNEL as SMS
from lifecycle.config import TEMPLATES_DIR

# WhatsApp reaches the phone numbers SMS reaches (lifecycle.contacts.phone); the rest is its own.
CHANNEL = replace(
    SMS,
    name="whatsapp",
    template_files=(".whatsapp.txt",),
    label="WhatsApp messages",
    sender=f"{__name__}:Outbox",
    build=f"{__name__}:build",
    pool_slots=1,
    blocks_transactional=(),
)
templates_dir: Path = TEMPLATES_DIR  # the test points it at its own copy of the templates
DELIVERED: list[OutboundWhatsApp] = []


@dataclass(frozen=True)
class OutboundWhatsApp:
    to: str
    body: str
    key: str


def build(row, spec, now) -> OutboundWhatsApp:
    from lifecycle.render import render_plain
    from lifecycle.send import template_context

    (body,) = render_plain(row.template, CHANNEL.name, template_context(row), templates_dir)
    return OutboundWhatsApp(to=row.phone, body=body, key=row.idempotency_key)


class Outbox:
    name = CHANNEL.name

    @classmethod
    def from_airflow(cls) -> Outbox:
        return cls()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def deliver(self, message: OutboundWhatsApp) -> Outcome:
        DELIVERED.append(message)
        return Outcome("sent", provider_message_id=f"wamid.{len(DELIVERED)}")
