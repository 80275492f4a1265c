"""Links in messages: opaque, signed unsubscribe and "keep me subscribed" tokens (no address or id
readable in them)."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections import Counter

from cryptography.fernet import Fernet, InvalidToken

from lifecycle.config import SHOP, settings


@functools.cache
def _fernet(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


MIN_KEY_BYTES = 32
# A key's information, estimated from its character frequencies (Shannon, times its length). The
# estimate undercounts a random key a little (token_urlsafe(32) ~ 200 bits, a 32-digit hex ~ 117),
# and catches the keys people type: "aaaa...", "abab...", "password-password-...".
MIN_KEY_BITS = 100
MIN_DISTINCT = 8
HOW_TO = ("set a long random secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
          "the same for the Airflow workers and the unsubscribe service (`make demo` and `lifecycle env` make one)")


def _estimated_bits(key: str) -> float:
    counts = Counter(key)
    return -sum(n * math.log2(n / len(key)) for n in counts.values())


def signing_key_problem(key: str | None) -> str | None:
    """Why `key` cannot sign unsubscribe tokens (a forgeable key lets anyone unsubscribe anyone),
    or None when it is fit."""
    if not key:
        return "LIFECYCLE_SIGNING_KEY is not set"
    size = len(key.encode())
    if size < MIN_KEY_BYTES:
        return f"LIFECYCLE_SIGNING_KEY is too short: {size} bytes, at least {MIN_KEY_BYTES} are needed"
    if len(set(key)) == 1:
        return "LIFECYCLE_SIGNING_KEY is one character repeated"
    bits = _estimated_bits(key)
    if bits < MIN_KEY_BITS or len(set(key)) < MIN_DISTINCT:
        return (f"LIFECYCLE_SIGNING_KEY looks low-entropy: {len(set(key))} distinct characters, about {bits:.0f} "
                f"bits, at least {MIN_KEY_BITS} expected")
    return None


def signing_key() -> str:
    """The secret behind unsubscribe links; without it anyone could forge an unsubscribe."""
    key = settings().signing_key
    problem = signing_key_problem(key)
    if problem:
        raise RuntimeError(f"{problem}: {HOW_TO}.")
    return key


def _cipher() -> Fernet:
    return _fernet(signing_key())


def unsubscribe_token(customer_id: str | int, channel: str) -> str:
    """Authenticated encryption (Fernet): opaque to the reader, tamper-evident to us.
    The customer id travels as a string: a warehouse's ids may be text (`C-001`, UUIDs)."""
    return _cipher().encrypt(f"{customer_id}:{channel}".encode()).decode()


# "Keep me subscribed" tokens carry their purpose, so an unsubscribe link can never be replayed
# as a stay choice, nor a stay link as an unsubscribe. Same key, same opacity.
STAY = "stay"


def _payload(token: str) -> str | None:
    try:
        return _cipher().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError):
        return None


def _id_and_channel(payload: str) -> tuple[str, str] | None:
    """The channel never holds a ':', so the last one splits them (a text id may contain ':')."""
    customer_id, sep, channel = payload.rpartition(":")
    return (customer_id, channel) if sep and customer_id and channel else None


def verify_unsubscribe_token(token: str) -> tuple[str, str] | None:
    """(customer id as a string, channel) of an unsubscribe token; None for a forged or damaged
    token and for a stay token (an unsubscribe payload never starts with the stay purpose)."""
    payload = _payload(token)
    if payload is None or payload.startswith(f"{STAY}:"):
        return None
    return _id_and_channel(payload)


def stay_token(customer_id: str | int, channel: str) -> str:
    return _cipher().encrypt(f"{STAY}:{customer_id}:{channel}".encode()).decode()


def verify_stay_token(token: str) -> tuple[str, str] | None:
    """(customer id as a string, channel) of a stay token; None for anything else."""
    payload = _payload(token)
    if payload is None or not payload.startswith(f"{STAY}:"):
        return None
    return _id_and_channel(payload.removeprefix(f"{STAY}:"))


def links_for(customer_id: str | int, channel: str) -> dict[str, str]:
    """The links every message may show. `preferences` (the footer's "Email preferences" and
    win_back's "Yes, keep me subscribed") opens the service's /preferences page, where a POST
    records the choice to stay and ends a no_response sunset."""
    token = unsubscribe_token(customer_id, channel)
    domain = SHOP["from_email"].split("@")[-1]
    return {
        "unsubscribe": f"{SHOP['base_url']}/unsubscribe?t={token}",
        "unsubscribe_mailto": f"mailto:unsubscribe@{domain}?subject=unsubscribe%20{token}",
        "preferences": f"{SHOP['base_url']}/preferences?t={stay_token(customer_id, channel)}",
    }
