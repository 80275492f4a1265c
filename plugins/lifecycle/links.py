"""Links in messages: opaque, signed unsubscribe tokens (no address or id readable in them)."""

from __future__ import annotations

import base64
import functools
import hashlib
import os

from cryptography.fernet import Fernet, InvalidToken

from lifecycle.config import SHOP

_DEV_KEY = "lifecycle-local-demo-key-not-for-production"


@functools.cache
def _fernet(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


def _cipher() -> Fernet:
    # Deployments set LIFECYCLE_SIGNING_KEY; the fallback only serves the local demo.
    return _fernet(os.environ.get("LIFECYCLE_SIGNING_KEY") or _DEV_KEY)


def unsubscribe_token(customer_id: int, channel: str) -> str:
    """Authenticated encryption (Fernet): opaque to the reader, tamper-evident to us."""
    return _cipher().encrypt(f"{customer_id}:{channel}".encode()).decode()


def verify_unsubscribe_token(token: str) -> tuple[int, str] | None:
    try:
        customer_id, channel = _cipher().decrypt(token.encode()).decode().split(":", 1)
    except (InvalidToken, ValueError):
        return None
    return int(customer_id), channel


def links_for(customer_id: int, channel: str) -> dict[str, str]:
    token = unsubscribe_token(customer_id, channel)
    domain = SHOP["from_email"].split("@")[-1]
    return {
        "unsubscribe": f"{SHOP['base_url']}/unsubscribe?t={token}",
        "unsubscribe_mailto": f"mailto:unsubscribe@{domain}?subject=unsubscribe%20{token}",
        "preferences": f"{SHOP['base_url']}/preferences?t={token}",
    }
