"""Links in messages: opaque, signed unsubscribe and "keep me subscribed" tokens (no address or id
readable in them)."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import os
from collections import Counter

from cryptography.fernet import Fernet, InvalidToken

from lifecycle.config import SHOP


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
    key = os.environ.get("LIFECYCLE_SIGNING_KEY", "")
    problem = signing_key_problem(key)
    if problem:
        raise RuntimeError(f"{problem}: {HOW_TO}.")
    return key


def _cipher() -> Fernet:
    return _fernet(signing_key())


def unsubscribe_token(customer_id: int, channel: str) -> str:
    """Authenticated encryption (Fernet): opaque to the reader, tamper-evident to us."""
    return _cipher().encrypt(f"{customer_id}:{channel}".encode()).decode()


def verify_unsubscribe_token(token: str) -> tuple[int, str] | None:
    """(customer_id, channel) of an unsubscribe token; None for anything else, a stay token too
    (its payload starts with its purpose, which is not a customer id)."""
    try:
        customer_id, channel = _cipher().decrypt(token.encode()).decode().split(":", 1)
        return int(customer_id), channel
    except (InvalidToken, ValueError):
        return None


# "Keep me subscribed" tokens carry their purpose, so an unsubscribe link can never be replayed
# as a stay choice, nor a stay link as an unsubscribe. Same key, same opacity.
STAY = "stay"


def stay_token(customer_id: int, channel: str) -> str:
    return _cipher().encrypt(f"{STAY}:{customer_id}:{channel}".encode()).decode()


def verify_stay_token(token: str) -> tuple[int, str] | None:
    try:
        purpose, customer_id, channel = _cipher().decrypt(token.encode()).decode().split(":", 2)
        if purpose != STAY:
            return None
        return int(customer_id), channel
    except (InvalidToken, ValueError):
        return None


def links_for(customer_id: int, channel: str) -> dict[str, str]:
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
