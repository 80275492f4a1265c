"""A real local web push service (RFC 8030) for the demo and the tests.

It does what a browser vendor's push service does with a message, and what the
browser then does with it, over plain HTTP on 127.0.0.1 (stdlib ThreadingHTTPServer in
a background thread, port 0 by default)::

    with PushServer() as push:
        subscription = push.register("alice")   # {"endpoint": ".../push/alice", "keys": {...}}
        ...                                     # POST to subscription["endpoint"]
        push.received[0].payload                # the decrypted JSON

For every ``POST /push/<token>`` it checks, in this order:

1. ``Content-Encoding: aes128gcm``, a ``TTL`` (integer >= 0), ``Urgency`` one of
   very-low/low/normal/high if present, a body of at most 4096 bytes (else 400/413/415);
2. ``Authorization: vapid t=<JWT>, k=<public key>`` (RFC 8292): header typ JWT and alg
   ES256, the ES256 signature verified with k, ``aud`` equal to the origin the request
   was addressed to, ``exp`` in the future and at most 24 h ahead, ``sub`` a ``mailto:``
   or ``https:`` URI (else 401 without a token, 403 with a bad one);
3. the token: unknown -> 404, in ``gone`` -> 410, in ``not_found`` -> 404; then the
   next status in ``fail_next`` (e.g. 429, 500, or ``(429, 30)`` for a Retry-After);
4. decrypts the body (RFC 8291 / RFC 8188 with the subscription's private key and
   auth secret; 400 if it does not decrypt), records it in ``.received`` and answers
   201 with a ``Location`` for the message.

Every refusal is recorded in ``.rejected`` with its reason. Subscriptions come from
``register(token)`` (fresh keys), ``add(token, private_key, auth_secret)`` (known keys)
or a ``key_lookup(token) -> (private_key, auth_secret) | None`` callable (the demo shop's
deterministic keys: see ``demo_key_lookup``). With ``jsonl_path`` every accepted message
is appended as one JSON line: the demo's push outbox.

CLI (the demo): ``python -m lifecycle_demo.sinks.push_server --port 8790 --jsonl out.jsonl
--warehouse-url postgresql://... --seed 7`` serves the demo shop's subscriptions until
killed; the shop's endpoints must point at it (any host, the token is the last segment).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NamedTuple

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lifecycle_demo.sinks.serving import BackgroundHTTPServer, OwnedHTTPServer, serve_until_signalled

log = logging.getLogger(__name__)

__all__ = ["PushServer", "Received", "Rejected", "demo_key_lookup", "verify_vapid"]

URGENCIES = {"very-low", "low", "normal", "high"}
MAX_BODY = 4096  # RFC 8291 section 4: what a push service must accept
MAX_EXP_AHEAD = 24 * 3600  # RFC 8292 section 2
CLOCK_SKEW = 60
_PATH = re.compile(r"/push/([A-Za-z0-9_\-.~]+)")
_SUB = re.compile(r"(mailto:\S+@\S+|https:\S+)", re.I)

KeyPair = tuple[ec.EllipticCurvePrivateKey, bytes]


class Received(NamedTuple):
    """One accepted message: the token it was sent to, its headers (names lower-cased), the VAPID
    claims, the decrypted JSON text."""

    token: str
    headers: dict[str, str]
    claims: dict
    payload_json: str

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)


class Rejected(NamedTuple):
    token: str | None
    status: int
    reason: str


class VapidError(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _b64decode(text: str) -> bytes:
    data = text.strip().rstrip("=")
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify_vapid(authorization: str | None, audience: str, now: float | None = None) -> tuple[dict, str]:
    """Check an RFC 8292 ``Authorization: vapid t=..., k=...`` header; return (claims, k).

    Raises VapidError(401) when there is no vapid authorization, VapidError(403) when
    it is malformed, badly signed, or its claims are wrong.
    """
    now = time.time() if now is None else now
    if not authorization:
        raise VapidError(401, "no Authorization header")
    scheme, _, params = authorization.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise VapidError(401, f"Authorization scheme {scheme!r} is not 'vapid'")
    fields = {}
    for part in params.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if "t" not in fields or "k" not in fields:
        raise VapidError(403, "vapid authorization lacks t= or k=")
    try:
        header_b64, claims_b64, signature_b64 = fields["t"].split(".")
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(claims_b64))
        signature = _b64decode(signature_b64)
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64decode(fields["k"]))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise VapidError(403, f"malformed JWT or key: {exc}") from None
    if not isinstance(header, dict) or header.get("typ") != "JWT" or header.get("alg") != "ES256":
        raise VapidError(403, f"JWT header must be typ JWT, alg ES256: {header}")
    if len(signature) != 64:
        raise VapidError(403, "ES256 signature must be 64 bytes (r || s)")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VapidError(403, "JWT signature does not verify with k") from None
    if not isinstance(claims, dict):
        raise VapidError(403, "JWT claims are not an object")
    if claims.get("aud") != audience:
        raise VapidError(403, f"aud {claims.get('aud')!r} is not this push service's origin {audience!r}")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise VapidError(403, "exp missing or not an integer")
    if exp <= now:
        raise VapidError(403, "JWT expired")
    if exp > now + MAX_EXP_AHEAD + CLOCK_SKEW:
        raise VapidError(403, f"exp is {exp - now:.0f}s ahead, more than 24 h")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _SUB.fullmatch(sub):
        raise VapidError(403, f"sub must be a mailto: or https: URI, not {sub!r}")
    return claims, fields["k"]


class _Handler(BaseHTTPRequestHandler):
    server: OwnedHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per batch, as with a real service

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's signature)
        log.debug("push server: " + format, *args)

    def do_POST(self) -> None:  # noqa: N802 (http.server hook name)
        status, headers, reason = self.server.owner.handle(self)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        body = (reason + "\n").encode() if status >= 400 and reason else b""
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self._refuse(405)

    do_PUT = do_DELETE = do_GET  # noqa: N815


class PushServer(BackgroundHTTPServer):
    """The push service; see the module docstring. Usable as a context manager."""

    name = "push server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 key_lookup: Callable[[str], KeyPair | None] | None = None,
                 jsonl_path: Path | str | None = None) -> None:
        super().__init__(host, port)
        self.key_lookup = key_lookup
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.received: list[Received] = []
        self.rejected: list[Rejected] = []
        self.gone: set[str] = set()
        self.not_found: set[str] = set()
        self.fail_next: list[int | tuple[int, int]] = []
        self.requests = 0
        self._keys: dict[str, KeyPair] = {}
        self._application_keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def handler_class(self) -> type[_Handler]:
        return _Handler

    @property
    def origin(self) -> str:
        return self.base_url

    def endpoint(self, token: str) -> str:
        return f"{self.origin}/push/{token}"

    # subscriptions -----------------------------------------------------------------
    def register(self, token: str | None = None, *, application_server_key: str | None = None) -> dict:
        """A new subscription with fresh keys, as a browser's PushSubscription.toJSON()."""
        token = token or secrets.token_urlsafe(24)
        return self.add(token, ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16),
                        application_server_key=application_server_key)

    def add(self, token: str, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes, *,
            application_server_key: str | None = None) -> dict:
        """A subscription with known keys. With `application_server_key`, only pushes signed by
        that VAPID key are accepted (403 otherwise), as for a browser subscribed with it."""
        if not _PATH.fullmatch(f"/push/{token}"):
            raise ValueError(f"token {token!r} must be URL-safe")
        with self._lock:
            self._keys[token] = (private_key, auth_secret)
            if application_server_key:
                self._application_keys[token] = application_server_key
        public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {"endpoint": self.endpoint(token), "keys": {"p256dh": _b64encode(public), "auth": _b64encode(auth_secret)}}

    def _keys_for(self, token: str) -> KeyPair | None:
        with self._lock:
            keys = self._keys.get(token)
        if keys is None and self.key_lookup is not None:
            keys = self.key_lookup(token)
            if keys is not None:
                with self._lock:
                    self._keys[token] = keys
        return keys

    # one request -----------------------------------------------------------------------
    def handle(self, request: _Handler) -> tuple[int, dict[str, str], str]:
        with self._lock:
            self.requests += 1
        match = _PATH.fullmatch(request.path.split("?", 1)[0])
        token = match.group(1) if match else None
        try:
            length = int(request.headers.get("Content-Length", ""))
        except ValueError:
            return self._reject(token, 411, "Content-Length required")
        if length > 1 << 20:
            request.close_connection = True
            return self._reject(token, 413, f"body of {length} bytes")
        body = request.rfile.read(length)
        if token is None:
            return self._reject(None, 404, f"no such path {request.path.split('/')[1:2]}")
        if len(body) > MAX_BODY:
            return self._reject(token, 413, f"body of {len(body)} bytes exceeds {MAX_BODY}")
        headers = {name.lower(): value for name, value in request.headers.items()}
        encoding = request.headers.get("Content-Encoding", "")
        if encoding.strip().lower() != "aes128gcm":
            return self._reject(token, 415, f"Content-Encoding {encoding!r} is not aes128gcm")
        ttl = request.headers.get("TTL")
        if ttl is None or not ttl.strip().isdigit():
            return self._reject(token, 400, f"TTL header missing or not an integer >= 0: {ttl!r}")
        urgency = request.headers.get("Urgency")
        if urgency is not None and urgency.strip() not in URGENCIES:
            return self._reject(token, 400, f"Urgency {urgency!r} is not one of {sorted(URGENCIES)}")
        audience = f"http://{(request.headers.get('Host') or f'{self.host}:{self.port}').lower()}"
        try:
            claims, k = verify_vapid(request.headers.get("Authorization"), audience)
        except VapidError as exc:
            return self._reject(token, exc.status, f"VAPID: {exc}")

        keys = self._keys_for(token)
        if keys is None:
            return self._reject(token, 404, "unknown subscription")
        with self._lock:
            expected_key = self._application_keys.get(token)
            gone, not_found = token in self.gone, token in self.not_found
            scripted = self.fail_next.pop(0) if not (gone or not_found) and self.fail_next else None
        if expected_key and _b64decode(expected_key) != _b64decode(k):
            return self._reject(token, 403, "VAPID key differs from the subscription's applicationServerKey")
        if gone:
            return self._reject(token, 410, "subscription expired or unsubscribed")
        if not_found:
            return self._reject(token, 404, "subscription not found")
        if scripted is not None:
            status, retry_after = scripted if isinstance(scripted, tuple) else (scripted, None)
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return self._reject(token, status, "scripted failure", extra)

        private_key, auth_secret = keys
        try:
            plain = http_ece.decrypt(body, private_key=private_key, auth_secret=auth_secret, version="aes128gcm")
            payload_json = plain.decode("utf-8")
        except (http_ece.ECEException, ValueError) as exc:
            return self._reject(token, 400, f"payload does not decrypt: {exc}")
        received = Received(token, headers, claims, payload_json)
        message_id = secrets.token_urlsafe(12)
        with self._lock:
            self.received.append(received)
            if self.jsonl_path is not None:
                self._append_jsonl(received, message_id)
        return 201, {"Location": f"{self.origin}/m/{message_id}", "TTL": ttl.strip()}, ""

    def _reject(self, token: str | None, status: int, reason: str,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        with self._lock:
            self.rejected.append(Rejected(token, status, reason))
        log.debug("push server: %s %s", status, reason)
        return status, headers or {}, reason

    def _append_jsonl(self, received: Received, message_id: str) -> None:
        try:
            payload = json.loads(received.payload_json)
        except ValueError:
            payload = received.payload_json
        line = {
            "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "message_id": message_id,
            "token": received.token,
            "ttl": int(received.headers.get("ttl", "0")),
            "urgency": received.headers.get("urgency", "normal"),
            "sub": received.claims.get("sub"),
            "payload": payload,
        }
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def demo_key_lookup(engine, seed: int) -> Callable[[str], KeyPair | None]:
    """key_lookup for the demo shop: the token is the last path segment of a
    shop.push_subscriptions endpoint; its keys follow from (seed, subscription_id)."""
    import sqlalchemy as sa

    from lifecycle_demo.demo_shop import push_subscription_keys

    query = sa.text("SELECT subscription_id FROM shop.push_subscriptions "
                    "WHERE right(endpoint, length(:token) + 1) = '/' || :token ORDER BY subscription_id LIMIT 1")

    def lookup(token: str) -> KeyPair | None:
        with engine.connect() as conn:
            subscription_id = conn.execute(query, {"token": token}).scalar()
        return None if subscription_id is None else push_subscription_keys(subscription_id, seed)

    return lookup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local web push service for the lifecycle demo.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--jsonl", type=Path, help="append every decrypted message to this file")
    parser.add_argument("--warehouse-url", help="the demo shop's database (serves its subscriptions)")
    parser.add_argument("--seed", type=int, default=7, help="the seed the demo shop was generated with")
    args = parser.parse_args(argv)
    lookup = None
    if args.warehouse_url:
        import sqlalchemy as sa

        lookup = demo_key_lookup(sa.create_engine(args.warehouse_url), args.seed)
    server = PushServer(args.host, args.port, key_lookup=lookup, jsonl_path=args.jsonl).start()
    print(f"push service listening on {server.origin}/push/<token>", flush=True)
    return serve_until_signalled(server.stop)


if __name__ == "__main__":
    raise SystemExit(main())
