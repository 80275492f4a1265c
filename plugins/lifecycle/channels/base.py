"""The interface every channel implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol


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


class Channel(Protocol):
    name: str

    def __enter__(self) -> Channel: ...

    def __exit__(self, *exc: Any) -> None: ...

    def deliver(self, message: Any) -> Outcome: ...


class Reconciling(Protocol):
    """A channel whose provider can be asked whether a message went out (e.g. SMS lookups):
    an 'unknown' outcome is then settled by looking, never by sending again."""

    def reconcile(self, message: Any, claimed_at: datetime) -> Outcome | None: ...
