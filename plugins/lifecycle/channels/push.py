"""Browser web push: VAPID-signed (RFC 8292), payload encrypted per RFC 8291 (aes128gcm).

Configured by an Airflow connection (`lifecycle_push`): the password holds the VAPID
private key (PEM, as `vapid --gen` writes it, or the raw 32-byte key in base64url, as
`web-push generate-vapid-keys` prints it); the login or the extra `subject` holds the
contact the push services may write to (`mailto:...` or an `https:` URL). Extras:
`timeout` (seconds), `allow_http` (plain-http endpoints, for test setups), `allow_private`.

Endpoints come from customers' browsers, so they are untrusted: an endpoint that is not https,
or whose host is or resolves to a loopback, private, link-local, shared, multicast or reserved
address, fails (reason recorded, no request made) so a forged subscription cannot make the worker
call internal services. The connection checks its peer again (DNS rebinding). A local push service (tests, `make demo`) needs `allow_private`: the
connection extra, or LIFECYCLE_PUSH_ALLOW_PRIVATE=1; it also allows plain http to such addresses.

Kept-alive connections for a batch (lifecycle.channels.http_client: urllib3, a third of
requests' CPU per request; the environment's proxy per push service, the CA bundle requests used:
REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's); every push service reply is classified:

    201/202 (200)      sent (provider id: the Location header the service returns)
    404, 410           failed, the subscription is gone: its endpoint is revoked and the
                       step may fall back to its next channel
    429, 5xx           retry (Retry-After recorded in the details)
    a redirect         failed (a push service answers; it never sends a POST elsewhere)
    400, 413, other    failed
    refused, connect timeout, TLS failure
                       ChannelUnavailable (nothing was sent: the request never started)
    lost after sending unknown (the service may have it: never re-sent blindly)

The VAPID token (aud = the endpoint's origin, exp 12 h ahead) is signed once per push
service origin and reused while it has more than an hour left. Logs name the message's
idempotency key and the push service's host, never the endpoint's token or the payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import struct
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from py_vapid import Vapid
from urllib3.exceptions import NameResolutionError, NewConnectionError

from lifecycle import logsafe
from lifecycle.channels import http_client
from lifecycle.channels.base import ChannelUnavailable, Outcome
from lifecycle.channels.http_client import Lost, MarkedHTTPConnection, MarkedHTTPSConnection, NotSent, Reply
from lifecycle.config import settings

log = logging.getLogger(__name__)

PUSH_CONN_ID = settings().push_conn_id

URGENCIES = ("very-low", "low", "normal", "high")  # RFC 8030 section 5.3
# RFC 8291 section 4: push services must accept 4096 bytes of encrypted body. aes128gcm
# adds 86 bytes of header (salt 16, rs 4, idlen 1, key 65), a 1-byte delimiter and a
# 16-byte tag, which leaves 3993 bytes of JSON.
MAX_PAYLOAD_BYTES = 4096 - 86 - 1 - 16
REQUIRED_FIELDS = ("title", "body", "url")
VAPID_LIFETIME = 12 * 3600  # exp = now + 12 h (RFC 8292 allows at most 24 h)
VAPID_REFRESH = 3600  # sign a new token once the cached one has less than an hour left
_SUBJECT = re.compile(r"mailto:[^@\s]+@[^@\s]+|https://[^/\s?#]+(?:[/?#]\S*)?", re.I)
ALLOW_PRIVATE_ENV = "LIFECYCLE_PUSH_ALLOW_PRIVATE"


@dataclass(frozen=True)
class OutboundPush:
    endpoint: str
    p256dh: str  # base64url, as stored in shop.push_subscriptions
    auth: str
    payload: dict  # {"title", "body", "url", "icon"?, "tag"?}: JSON-encoded and encrypted
    key: str  # idempotency key (logs only)
    ttl: int = 86400  # seconds the push service keeps it for an offline browser
    urgency: str = "normal"  # very-low / low / normal / high


def load_vapid_key(private_key: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (SEC1 or PKCS#8), base64url DER, or the raw 32-byte scalar."""
    text = private_key.strip().replace("\\n", "\n")
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = _b64decode(re.sub(r"\s+", "", text))
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error):
        # `from None`: the message never carries any part of the key
        raise ValueError("VAPID private key is not a PEM, DER or raw base64url P-256 key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("VAPID private key must be an EC P-256 (prime256v1) key")
    return key


RECORD_SIZE = 4096  # RFC 8188 rs: the whole message is one record


def encrypt(payload: bytes, receiver: ec.EllipticCurvePublicKey, auth_secret: bytes, *,
            key: ec.EllipticCurvePrivateKey | None = None, salt: bytes | None = None) -> bytes:
    """RFC 8291 (aes128gcm content coding, RFC 8188) for one subscription: a new P-256 key pair
    and a random 16-byte salt per message (`key` and `salt` only for the RFC's test vector).
    What pywebpush does through http_ece, without their per-message overhead (0.19 against
    0.11 ms of CPU); the local push service decrypts it with http_ece."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    salt = salt or os.urandom(16)
    point = serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ua_public, as_public = receiver.public_bytes(*point), key.public_key().public_bytes(*point)
    ikm = HKDF(hashes.SHA256(), 32, auth_secret, b"WebPush: info\x00" + ua_public + as_public).derive(
        key.exchange(ec.ECDH(), receiver))
    cek = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
    header = salt + struct.pack("!IB", RECORD_SIZE, len(as_public)) + as_public
    return header + AESGCM(cek).encrypt(nonce, payload + b"\x02", None)  # 0x02: the last record's delimiter


def origin_of(endpoint: str) -> str:
    """scheme://host[:port] of an endpoint: the VAPID `aud` claim."""
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port and port != default else "")


def _b64decode(text: str) -> bytes:
    data = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address `host` stands for (an IP literal is itself); OSError when it does not resolve."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for loopback, private, link-local, shared (CGNAT), reserved, unspecified, multicast."""
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is loopback
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class NonPublicPeer(NewConnectionError):
    """The connection reached a non-public address although the endpoint's check passed."""


class _PublicPeerOnly:
    """Checks the address actually connected to: DNS may answer the request differently from the
    check before it (rebinding), and that second answer is the one that counts."""

    def _new_conn(self):
        sock = super()._new_conn()
        peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
        if not _is_public(peer):
            sock.close()
            raise NonPublicPeer(self, f"{self.host} connected to non-public address {peer}")
        return sock


class _PublicHTTPConnection(_PublicPeerOnly, MarkedHTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicPeerOnly, MarkedHTTPSConnection):
    pass


# Connection pools whose connections refuse non-public peers.
PUBLIC_POOLS = http_client.pool_classes(_PublicHTTPConnection, _PublicHTTPSConnection)
REDIRECTS = (301, 302, 303, 307, 308)


def _retry_after(value: str | None) -> int | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        return max(0, int(parsedate_to_datetime(value).timestamp() - time.time()))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class PushChannel:
    name = "push"

    def __init__(self, vapid_private_key: str, vapid_subject: str, *, timeout: float = 10.0,
                 allow_http: bool = False, allow_private: bool | None = None, concurrency: int = 4):
        if not vapid_subject or not _SUBJECT.fullmatch(vapid_subject.strip()):
            raise ValueError(f"VAPID subject must be a mailto: address or an https: URL, not {vapid_subject!r}")
        self.subject = vapid_subject.strip()
        # no-strict: the subject was checked above (py_vapid's own check refuses https URLs with a path)
        self.vapid = Vapid(private_key=load_vapid_key(vapid_private_key), conf={"no-strict": True})
        self.timeout = timeout
        self.allow_http = allow_http
        # None: LIFECYCLE_PUSH_ALLOW_PRIVATE decides (set for a local push service only)
        self.allow_private = settings().push_allow_private if allow_private is None else allow_private
        self._managers: dict[str | None, http_client.Pools] = {}  # proxy (None: direct) -> pools
        self._tokens: dict[str, tuple[int, dict[str, str]]] = {}  # origin -> (exp, VAPID headers)
        self._addresses: dict[tuple[str, int], list] = {}  # (host, port) -> addresses, for this batch
        self._proxies: dict[str, str | None] = {}  # origin -> the environment's proxy for it, for this batch
        # Requests in flight at once (lifecycle.send.deliver_all), each on a kept-alive
        # connection of its own (at most 10 per push service).
        self.concurrency = max(1, min(int(concurrency), 10))

    @classmethod
    def from_airflow(cls, conn_id: str = PUSH_CONN_ID) -> PushChannel:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson
        if not conn.password:
            raise ValueError(f"Airflow connection {conn_id!r} has no password (the VAPID private key)")
        subject = extra.get("subject") or conn.login
        if not subject:
            raise ValueError(f"Airflow connection {conn_id!r} needs a login or extra 'subject' (mailto: or https:)")
        return cls(conn.password, subject, timeout=float(extra.get("timeout", 10.0)),
                   allow_http=bool(extra.get("allow_http", False)),
                   allow_private=bool(extra["allow_private"]) if "allow_private" in extra else None,
                   concurrency=int(extra.get("concurrency", 4)))

    @property
    def application_server_key(self) -> str:
        """The VAPID public key (base64url, uncompressed point): what the site's
        `pushManager.subscribe({applicationServerKey})` must be given."""
        return _b64encode(self.vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    # kept-alive connections for a batch -----------------------------------------
    def __enter__(self) -> PushChannel:
        logsafe.install()  # urllib3 logs the endpoint's path (its token) at DEBUG
        return self

    def __exit__(self, *exc) -> None:
        for manager in self._managers.values():
            manager.clear()
        self._managers.clear()
        self._addresses.clear()
        self._proxies.clear()

    def _pools(self, endpoint: str, origin: str) -> http_client.Pools:
        """The connection pools for a push service: direct, or through the environment's proxy
        for it (looked up once per push service and batch, not per request)."""
        if origin not in self._proxies:
            self._proxies[origin] = http_client.environment_proxy(endpoint)
        proxy = self._proxies[origin]
        manager = self._managers.get(proxy)
        if manager is None:
            manager = self._managers[proxy] = http_client.Pools(
                proxy, maxsize=self.concurrency, tls=http_client.ca_bundle_from("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
                pools=http_client.POOLS if self.allow_private else PUBLIC_POOLS)
        return manager

    def vapid_headers(self, origin: str) -> dict[str, str]:
        """`Authorization: vapid t=<JWT>, k=<public key>` for one push service, cached."""
        now = int(time.time())
        cached = self._tokens.get(origin)
        if cached and cached[0] - now > VAPID_REFRESH:
            return cached[1]
        exp = now + VAPID_LIFETIME
        headers = self.vapid.sign({"aud": origin, "exp": exp, "sub": self.subject})
        self._tokens[origin] = (exp, headers)
        return headers

    @staticmethod
    def recipient(message: OutboundPush) -> str:
        """The subscription a message goes to (lifecycle.send.deliver_all keeps each one's order)."""
        return message.endpoint

    def deliver(self, message: OutboundPush) -> Outcome:
        keys = subscription_keys(message)
        problem = self._check(message, keys)
        if problem is not None:
            log.warning("push %s not sent: %s", message.key, problem.reason)
            return problem
        data = json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False).encode()
        origin = origin_of(message.endpoint)
        body = encrypt(data, *keys)  # type: ignore[misc]  # (_check fails a message without keys)
        headers = {"Urgency": message.urgency, **self.vapid_headers(origin), "Content-Encoding": "aes128gcm",
                   "TTL": str(message.ttl), "User-Agent": "lifecycle-push/1"}
        try:
            response = self._pools(message.endpoint, origin).request("POST", message.endpoint, headers=headers,
                                                                     body=body, timeout=self.timeout)
        except NotSent as exc:
            return self._not_sent(origin, exc.error)
        except Lost as exc:  # the service may have it
            if exc.timed_out:
                return Outcome("unknown", f"no reply from push service {origin} within {self.timeout}s: "
                                          f"{type(exc.error).__name__}")
            return Outcome("unknown", f"connection to push service {origin} lost: {type(exc.error).__name__}")
        return self._classify(message, origin, response)

    def _check(self, message: OutboundPush, keys: tuple | None) -> Outcome | None:
        """Everything that would fail no matter what the push service says: no request is made.
        `keys`: the subscription's, as subscription_keys read them."""
        problem = self._endpoint_problem(message.endpoint)
        if problem is not None:
            return problem
        if keys is None:
            return Outcome("failed", "invalid subscription keys (p256dh must be a P-256 point, auth 16 bytes)",
                           fallback=True)
        if message.urgency not in URGENCIES:
            return Outcome("failed", f"invalid urgency {message.urgency!r} (one of {', '.join(URGENCIES)})")
        if isinstance(message.ttl, bool) or not isinstance(message.ttl, int) or message.ttl < 0:
            return Outcome("failed", f"invalid TTL {message.ttl!r} (seconds, an integer >= 0)")
        if not isinstance(message.payload, dict):
            return Outcome("failed", "push payload must be a JSON object")
        missing = [name for name in REQUIRED_FIELDS if not message.payload.get(name)]
        if missing:
            return Outcome("failed", f"push payload lacks {', '.join(missing)}")
        try:
            size = len(json.dumps(message.payload, separators=(",", ":"), ensure_ascii=False).encode())
        except (TypeError, ValueError) as exc:
            return Outcome("failed", f"push payload is not JSON-serialisable: {exc}")
        if size > MAX_PAYLOAD_BYTES:
            return Outcome("failed", f"push payload too large: {size} bytes of JSON, at most {MAX_PAYLOAD_BYTES} "
                                     "fit in the 4096 bytes push services accept", details={"payload_bytes": size})
        return None

    def _endpoint_problem(self, endpoint: str) -> Outcome | None:
        """An endpoint the worker must not call: not https, or on a non-public address."""
        try:
            parts = urlsplit(endpoint)
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return Outcome("failed", "invalid push endpoint (not an http(s) URL)", fallback=True)
        if parts.scheme not in ("https", "http") or not host:
            return Outcome("failed", "invalid push endpoint (not an http(s) URL)", fallback=True)
        if parts.scheme == "http" and not (self.allow_http or self.allow_private):
            return Outcome("failed", "invalid push endpoint (plain http)", fallback=True)
        try:
            addresses = self._resolved(host, port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError):
            return Outcome("retry", f"push service host of {origin_of(endpoint)} did not resolve")
        internal = sorted({str(a) for a in addresses if not _is_public(a)})
        if internal and not self.allow_private:
            # names the host only: the path holds the subscription's token
            return Outcome("failed", f"push endpoint refused: host {host} is or resolves to a non-public address "
                                     f"({', '.join(internal)}); set {ALLOW_PRIVATE_ENV}=1 only for a local push "
                                     "service", fallback=True)
        if parts.scheme == "http" and not self.allow_http and len(internal) < len(addresses):
            return Outcome("failed", "invalid push endpoint (plain http to a public address)", fallback=True)
        return None

    def _resolved(self, host: str, port: int) -> list:
        """The host's addresses, looked up once per batch (a batch's subscriptions are on a handful
        of push services: one DNS lookup each, not one per message). The connection checks the
        address it reaches again, so a later answer cannot slip past this one."""
        key = (host, port)
        if key not in self._addresses:
            self._addresses[key] = _addresses(host, port)  # a failed lookup is not kept: tried again
        return self._addresses[key]

    def _not_sent(self, origin: str, error: Exception) -> Outcome:
        """The request never started to leave: nothing reached the push service."""
        if isinstance(error, NonPublicPeer):  # the socket closed before TLS
            return Outcome("failed", f"push endpoint refused: {error._message}", fallback=True)
        if isinstance(error, NameResolutionError):
            # one push service's name: the other subscriptions in the batch still go out
            return Outcome("retry", f"push service host of {origin} did not resolve")
        raise ChannelUnavailable(f"push service {origin} unavailable: {type(error).__name__}") from error

    def _classify(self, message: OutboundPush, origin: str, response: Reply) -> Outcome:
        status = response.status_code
        log.info("push %s -> %s: HTTP %s", message.key, origin, status)
        if status in REDIRECTS and "location" in response.headers:
            return Outcome("failed", f"push service {origin} redirected the request")
        if status in (200, 201, 202):
            location = response.headers.get("Location")
            if not location:
                # no id from the service: a stable stand-in that does not reveal the endpoint's token
                location = "push-" + hashlib.sha256(f"{message.endpoint}\n{message.key}".encode()).hexdigest()[:32]
            return Outcome("sent", provider_message_id=location)
        text = _short(response, message.endpoint)
        if status in (404, 410):
            return Outcome("failed", f"subscription gone ({status})", revoke=message.endpoint, fallback=True)
        if status == 429 or status >= 500:
            wait = _retry_after(response.headers.get("Retry-After"))
            details = {"http_status": status} | ({"retry_after": wait} if wait is not None else {})
            suffix = f", retry after {wait}s" if wait is not None else ""
            return Outcome("retry", f"push service HTTP {status}{suffix}{text}", details=details)
        if status == 413:
            return Outcome("failed", f"push payload too large (413){text}")
        if status in (401, 403):
            return Outcome("failed", f"push service rejected the VAPID authorization ({status}){text}")
        return Outcome("failed", f"push service HTTP {status}{text}")


def subscription_keys(message: OutboundPush) -> tuple[ec.EllipticCurvePublicKey, bytes] | None:
    """The subscription's public key (p256dh, a P-256 point) and auth secret (16 bytes); None
    when they are not that."""
    try:
        p256dh, auth = _b64decode(message.p256dh), _b64decode(message.auth)
        if len(p256dh) != 65 or len(auth) != 16:
            return None
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh), auth
    except (ValueError, TypeError, binascii.Error):
        return None


def _short(response: Reply, endpoint: str, limit: int = 200) -> str:
    """A push service's error text, bounded, with any echo of the endpoint's token removed."""
    body = (response.text or "").strip().replace("\n", " ")
    token = endpoint.rstrip("/").rsplit("/", 1)[-1]
    if len(token) >= 8:
        body = body.replace(token, "<token>")
    return f": {body[:limit]}" if body else ""
