"""What a channel is (`Channel`, one per module in channels/catalog/) and the interface its
sender implements (`Sender`: delivers one message at a time, classifies every outcome)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from lifecycle.ids import CONSENT, CONTACTS, PUSH_SUBSCRIPTIONS


@dataclass(frozen=True)
class Outcome:
    """What happened to one message.

    sent     the provider accepted it (provider_message_id recorded)
    failed   permanent: never retried (reason recorded; `suppress` adds a suppression)
    retry    transient: the message goes back to planned and the task is retried
    unknown  the provider may or may not have it: recorded, never re-sent blindly
    """

    status: Literal["sent", "failed", "retry", "unknown"]
    reason: str | None = None
    provider_message_id: str | None = None
    suppress: str | None = None  # e.g. 'hard_bounce', 'provider_opt_out': suppress this channel
    revoke: str | None = None  # push: the exact endpoint to mark revoked in shop.push_subscriptions
    fallback: bool = False  # the address is gone: the step may try its next channel
    details: dict = field(default_factory=dict)  # recorded in messages.payload (e.g. SMS segments)


class ChannelUnavailable(RuntimeError):
    """The provider cannot be reached at all; nothing in flight was accepted."""


class Sender(Protocol):
    """One open connection to a channel's provider, for one batch.

    Optional: `deliver_many(messages)` (a window at once, e.g. SMTP pipelining); or
    `concurrency` (requests in flight, lifecycle.send.deliver_all) with `recipient(message)`,
    the address one message goes to: one recipient's messages are then still sent one after
    another, in the window's order. `deliver` must then be safe to call from several threads."""

    name: str

    def __enter__(self) -> Sender: ...

    def __exit__(self, *exc: Any) -> None: ...

    def deliver(self, message: Any) -> Outcome: ...


class Reconciling(Protocol):
    """A sender whose provider can be asked whether a message went out (e.g. SMS lookups):
    an 'unknown' outcome is then settled by looking, never by sending again."""

    def reconcile(self, message: Any, claimed_at: datetime) -> Outcome | None: ...


def _load(path: str) -> Any:
    """`module:attribute`, imported on first use: providers' libraries stay out of DAG parsing."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Channel:
    """Everything the engine knows about one channel. The description is plain data, cheap to
    import at DAG parse time; the provider code it names (`sender`, `build`) is imported inside
    the send task.

    `address_sql` is a SQL test that the customer has somewhere to receive the channel; it
    names the customer id through `{contacts}`, `{consent}` and `{push_subscriptions}`: the
    id cast to the type of that contact view (lifecycle.ids.shop_ids).
    """

    name: str
    template_files: tuple[str, ...]  # suffixes appended to the template name, e.g. ('.sms.txt',)
    label: str  # what the unsubscribe pages call it: "Unsubscribe from <label>?"
    address_sql: str
    no_address: str  # the reason recorded when the send-time check finds no address
    sender: str  # `module:Class` whose `from_airflow()` opens a Sender from the channel's connection
    build: str  # `module:function(row, spec, now)` that renders a loaded message for the sender
    pool_slots: int  # slots of its Airflow pool `lifecycle_<name>` (a deployment may change them)
    # Suppressions the provider or the return mailbox records for this channel that stop
    # transactional messages too (the address is dead, or its owner refuses every message).
    blocks_transactional: tuple[str, ...] = ()
    segment_column: str | None = None  # a column the segment's SELECT must return (text) when a step uses it

    @property
    def pool(self) -> str:
        return f"lifecycle_{self.name}"

    def files(self, template: str, templates_dir: Path) -> list[Path]:
        """The files template `template` (`<journey>/<step>`) is made of for this channel: its name
        with each of `template_files` after it. ValueError for a name that leaves the folder."""
        name = str(template).strip().strip("/")
        if not name or ".." in Path(name).parts or Path(name).is_absolute():
            raise ValueError(f"invalid template name {template!r}")
        return [Path(templates_dir) / f"{name}{suffix}" for suffix in self.template_files]

    def missing_files(self, template: str, templates_dir: Path) -> list[Path]:
        """The files of `files` that do not exist (empty: the template is complete). Segment files
        are checked with this while Airflow parses the DAGs: it never imports the renderer."""
        return [path for path in self.files(template, templates_dir) if not path.is_file()]

    def has_address(self, ids: dict[str, str]) -> str:
        """`address_sql` for the customer id expressions `ids` (keyed by contact view)."""
        return self.address_sql.format(contacts=ids[CONTACTS], consent=ids[CONSENT],
                                       push_subscriptions=ids[PUSH_SUBSCRIPTIONS])

    def open(self) -> Sender:
        """A sender configured from the channel's Airflow connection (inside a task)."""
        return _load(self.sender).from_airflow()

    def outbound(self, row: Any, spec: Any, now: datetime) -> Any:
        """The message `row` (as send.load_batch loads it) rendered for the sender."""
        return _load(self.build)(row, spec, now)
