"""Links in messages: opaque, signed unsubscribe and "keep me subscribed" tokens (no address or id
readable in them), and the short signed tokens of tracked opens and clicks (lifecycle.tracking)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping

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
          "the same for the Airflow workers and the web service (`make demo` and `lifecycle env` make one)")


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


def _cipher(key: str | None = None) -> Fernet:
    return _fernet(key or signing_key())


def unsubscribe_token(customer_id: str | int, channel: str, *, key: str | None = None) -> str:
    """Authenticated encryption (Fernet): opaque to the reader, tamper-evident to us.
    The customer id travels as a string: a warehouse's ids may be text (`C-001`, UUIDs).
    `key`: the signing key, when the caller checked it once for many messages."""
    return _cipher(key).encrypt(f"{customer_id}:{channel}".encode()).decode()


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


def stay_token(customer_id: str | int, channel: str, *, key: str | None = None) -> str:
    return _cipher(key).encrypt(f"{STAY}:{customer_id}:{channel}".encode()).decode()


def verify_stay_token(token: str) -> tuple[str, str] | None:
    """(customer id as a string, channel) of a stay token; None for anything else."""
    payload = _payload(token)
    if payload is None or not payload.startswith(f"{STAY}:"):
        return None
    return _id_and_channel(payload.removeprefix(f"{STAY}:"))


def links_for(customer_id: str | int, channel: str, *, key: str | None = None) -> dict[str, str]:
    """The links every message may show. `preferences` (the footer's "Email preferences" and
    win_back's "Yes, keep me subscribed") opens the service's /preferences page, where a POST
    records the choice to stay and ends a no_response sunset. `key` as for unsubscribe_token."""
    token = unsubscribe_token(customer_id, channel, key=key)
    domain = SHOP["from_email"].split("@")[-1]
    return {
        "unsubscribe": f"{SHOP['base_url']}/unsubscribe?t={token}",
        "unsubscribe_mailto": f"mailto:unsubscribe@{domain}?subject=unsubscribe%20{token}",
        "preferences": f"{SHOP['base_url']}/preferences?t={stay_token(customer_id, channel, key=key)}",
    }


class LazyLinks(Mapping):
    """`links_for(customer_id, channel, key=key)`, made on first use. Most SMS and push templates
    never show a link: their messages then cost no Fernet tokens (two encryptions, two reads
    of os.urandom, which let the send task's delivery threads take the GIL in between). A template
    that does use them (`links.unsubscribe`, `links["preferences"]`, a loop) gets the same dict."""

    __slots__ = ("_args", "_links")

    def __init__(self, customer_id: str | int, channel: str, *, key: str | None = None):
        self._args = (customer_id, channel, key)
        self._links: dict[str, str] | None = None

    def _made(self) -> dict[str, str]:
        if self._links is None:
            customer_id, channel, key = self._args
            self._links = links_for(customer_id, channel, key=key)
        return self._links

    def __getitem__(self, name: str) -> str:
        return self._made()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._made())

    def __len__(self) -> int:
        return len(self._made())

    def __repr__(self) -> str:
        return repr(self._made())


# ---------------------------------------------------------------------------- tracking tokens
# The open pixel (/o/<token>.gif) and click redirect (/c/<token>) of lifecycle.tracking carry a
# token that names the message and, for a click, the link's target. Same secret as above, its
# own purpose: the key is HMAC(signing key, TRACKING_LABEL), so no tracking token can pass for an
# unsubscribe or stay token (Fernet, keyed by sha256(signing key)) or the reverse, and the purpose
# byte inside the signed body keeps an open token from being used as a click and vice versa.
#
# Signed, not encrypted, to stay short (an SMS link must fit its segment: a Fernet token of a
# URL is ~200 characters, this one ~40 for a shop link): base64url(purpose, message id as a
# varint, target, MAC). Readable in it are the message id (a number that names no one) and the
# target, which the message showed anyway. A link into the shop (`<shop base_url>/...`) keeps
# only its path; the service puts its own LIFECYCLE_SHOP_URL back (workers and service share it,
# like the key). The MAC (HMAC-SHA256 cut to 80 bits) covers all of it: a changed id or target
# fails, so the redirect only ever goes where one of our messages pointed.
TRACKING_LABEL = b"lifecycle tracking tokens v1"
OPEN, CLICK, CLICK_IN_SHOP = b"o", b"c", b"s"
MAC_BYTES = 10
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]{1,2048}")


@functools.cache
def _tracking_key(key: str) -> bytes:
    return hmac.new(key.encode(), TRACKING_LABEL, hashlib.sha256).digest()


@functools.cache
def _keyed(key: str) -> hmac.HMAC:
    """An HMAC keyed once per signing key; each token copies it. The same MAC as
    hmac.digest(_tracking_key(key), ...), without keying per token, and without hmac.digest's
    release of the GIL, which in a send task hands it to a delivery thread mid-render."""
    return hmac.new(_tracking_key(key), digestmod=hashlib.sha256)


def _mac(body: bytes, key: str | None = None) -> bytes:
    mac = _keyed(key or signing_key()).copy()
    mac.update(body)
    return mac.digest()[:MAC_BYTES]


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"message id must not be negative, got {n}")
    out = bytearray()
    while True:
        n, low = n >> 7, n & 0x7F
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes) -> tuple[int, bytes] | None:
    n = 0
    for i, byte in enumerate(data[:10]):  # 10 bytes hold any 64-bit id
        n |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return n, data[i + 1:]
    return None


def _seal(body: bytes, key: str | None) -> str:
    return base64.urlsafe_b64encode(body + _mac(body, key)).rstrip(b"=").decode()


def _unseal(token: str) -> bytes | None:
    """The signed body of a tracking token; None when it does not verify."""
    if not _TOKEN_CHARS.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    # Canonical base64 only: a token that decodes to the same bytes but reads differently is not ours.
    if len(raw) <= MAC_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        return None
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    return body if hmac.compare_digest(mac, _mac(body)) else None


# `key`: the signing key, when the caller checked it once for many tokens (signing_key() reads
# and checks the settings each time: most of a token's cost).
def open_token(message_id: int, *, key: str | None = None) -> str:
    return _seal(OPEN + _varint(message_id), key)


def click_token(message_id: int, url: str, shop_url: str | None = None, *, key: str | None = None) -> str:
    """The token of a click on `url` in message `message_id`; a link under `shop_url` (default
    the shop's base_url) keeps only its path."""
    shop = (shop_url or SHOP["base_url"]).rstrip("/")
    if url.startswith(f"{shop}/"):
        return _seal(CLICK_IN_SHOP + _varint(message_id) + url[len(shop):].encode(), key)
    return _seal(CLICK + _varint(message_id) + url.encode(), key)


def verify_open_token(token: str) -> int | None:
    """The message id of an open token; None for anything else (forged, damaged, a click token)."""
    body = _unseal(token)
    if body is None or body[:1] != OPEN:
        return None
    read = _read_varint(body[1:])
    return read[0] if read and not read[1] else None


def verify_click_token(token: str, shop_url: str | None = None) -> tuple[int, str] | None:
    """(message id, target URL) of a click token; None for anything else."""
    body = _unseal(token)
    if body is None or body[:1] not in (CLICK, CLICK_IN_SHOP):
        return None
    read = _read_varint(body[1:])
    if read is None or not read[1]:
        return None
    message_id, target = read
    try:
        url = target.decode()
    except UnicodeDecodeError:
        return None
    if body[:1] == CLICK_IN_SHOP:
        url = (shop_url or SHOP["base_url"]).rstrip("/") + url
    return message_id, url
