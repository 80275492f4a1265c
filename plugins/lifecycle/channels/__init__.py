"""The channel registry: what each channel is (`Channel`), read by everything else.

Each module in lifecycle/channels/catalog/ describes one channel; a new channel (WhatsApp,
in-app) is one new module there, naming its sender and builder. The senders (email.py, sms.py,
push.py here) deliver one message at a time over one connection per batch and classify every
outcome (sent / failed / retry / unknown).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from lifecycle.channels import catalog
from lifecycle.channels.base import Channel, ChannelUnavailable, Outcome, Sender

__all__ = ["CHANNELS", "Channel", "ChannelUnavailable", "Outcome", "Sender", "blocks_transactional", "channel",
           "discover"]


def discover(package: ModuleType) -> dict[str, Channel]:
    """The `CHANNEL` of every module in `package`, by name (in name order)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        described = importlib.import_module(f"{package.__name__}.{info.name}").CHANNEL
        if described.name != info.name:
            raise ValueError(f"{package.__name__}.{info.name} describes channel {described.name!r}: "
                             "a channel's module is named after it")
        found[described.name] = described
    return found


# Read at call time everywhere (never copied at import), so a test can register one more.
CHANNELS: dict[str, Channel] = discover(catalog)


def channel(name: str) -> Channel:
    try:
        return CHANNELS[name]
    except KeyError:
        raise ValueError(f"unknown channel {name!r} (known: {', '.join(CHANNELS)})") from None


def blocks_transactional() -> tuple[str, ...]:
    """Suppression reasons that stop transactional messages too, on the channel they were
    recorded for: every other reason (unsubscribe, a no_response sunset) is a marketing opt-out."""
    return tuple(dict.fromkeys(r for c in CHANNELS.values() for r in c.blocks_transactional))
