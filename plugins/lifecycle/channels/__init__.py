"""Delivery channels: each delivers one message at a time over one connection per batch and
classifies every outcome (sent / failed / retry / unknown)."""

from lifecycle.channels.base import Channel, ChannelUnavailable, Outcome

__all__ = ["Channel", "ChannelUnavailable", "Outcome"]
