"""A local HTTP server speaking Twilio's Messages API, for the demo and the tests.

A real server (``http.server.ThreadingHTTPServer`` in a background thread, HTTP/1.1
keep-alive) answering the calls the SMS channel makes, the way Twilio answers them:

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json     send (form: To, From or
                                                             MessagingServiceSid, Body,
                                                             StatusCallback)
    GET  /2010-04-01/Accounts/{AccountSid}/Messages.json     list, newest first; filters To,
                                                             From, DateSent, DateSent>=,
                                                             DateSent<=; PageSize, Page
    GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json   fetch one

HTTP Basic auth with the configured AccountSid/AuthToken (401, error 20003, otherwise).
A POST needs an E.164 ``To`` (21604 missing, 21211 invalid), a ``Body`` (21602, at most
1600 characters: 21617) and exactly one of ``From``/``MessagingServiceSid`` (21603; real
Twilio accepts both, this server is stricter). Accepted: 201 with the message resource
(sid ``SM`` + 32 hex, status ``queued``, or ``accepted`` for a messaging service;
``num_segments`` as a string; RFC 2822 dates). Stored messages are then "delivered" at
once (status ``sent``, ``date_sent`` = ``date_created``). Errors are Twilio's JSON:
``{"code": 21610, "message": ..., "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400}``.

Scripted behaviours for tests (attributes; change them while the server runs)::

    with TwilioServer() as twilio:
        twilio.stop_numbers.add("+4915112345678")        # 400, 21610: replied STOP
        twilio.fail_next.append((429, {"Retry-After": "1"}, twilio_error(20429, "Too Many Requests", 429)))
        twilio.accept_then_fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
        twilio.drop_next = 1        # accept, record, then close the connection without an answer
        twilio.slow_next.append(2)  # accept, record, answer 201 after 2 seconds
        twilio.fail_next_lookup.append((503, {}, twilio_error(20503, "Service Unavailable", 503)))  # next list GET
        ... twilio.base_url, twilio.account_sid, twilio.auth_token ...
        twilio.messages   # accepted messages (resource dicts), oldest first
        twilio.requests   # every request: RecordedRequest(method, path, query, form, headers, auth_ok, client)

``fail_next`` entries answer the next POSTs before anything else is checked (nothing is
recorded as a message); ``accept_then_fail_next`` entries answer after the message was
accepted and recorded (a provider that took the message and then failed: "maybe sent").
An entry is ``(status, headers, body)``; a dict body is sent as JSON.

The demo's SMS outbox: ``jsonl_path`` appends every accepted message as one JSON line.
CLI: ``python -m lifecycle_demo.sinks.twilio_server --port N --jsonl FILE --account-sid AC... --auth-token ...``
runs until killed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hmac
import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from lifecycle.channels.sms import sms_segments
from lifecycle_demo.sinks.serving import BackgroundHTTPServer, OwnedHTTPServer, serve_until_signalled

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_ACCOUNT_SID",
    "DEMO_AUTH_TOKEN",
    "RecordedRequest",
    "TwilioServer",
    "twilio_error",
]

API_VERSION = "2010-04-01"
DEMO_ACCOUNT_SID = "AC" + "0" * 30 + "de"  # the shape of a real AccountSid, obviously not one
DEMO_AUTH_TOKEN = "lifecycle-demo-auth-token"
MAX_BODY = 1600

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
LIST_PATH = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages\.json$")
ONE_PATH = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")

Scripted = tuple[int, dict[str, str], Any]


def twilio_error(code: int, message: str, status: int = 400) -> dict:
    """Twilio's error body."""
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    auth_ok: bool
    client: tuple[str, int] = ("", 0)  # the client's address: one per connection
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _rfc2822(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC).replace(microsecond=0))  # 'Thu, 20 Nov 2026 09:00:00 +0000'


def _flat(pairs: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[0] for key, values in pairs.items()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per batch, like the real API
    server_version = "lifecycle-twilio-sink/1"
    timeout = 60  # an idle keep-alive connection is closed after a minute
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: OwnedHTTPServer

    # plumbing ------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_request(self, code="-", size="-") -> None:  # the query string can hold phone numbers
        log.debug("twilio sink: %s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's signature)
        log.debug("twilio sink: " + format, *args)

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, dict | list):
            raw = json.dumps(body).encode()
            content_type = "application/json; charset=utf-8"
        elif isinstance(body, bytes):
            raw, content_type = body, "application/octet-stream"
        else:
            raw, content_type = str(body or "").encode(), "text/plain; charset=utf-8"
        self.send_response(status)
        headers = {k: v for k, v in (headers or {}).items() if k.lower() != "content-length"}
        if "content-type" not in {k.lower() for k in headers}:
            headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(raw))
        headers.setdefault("Twilio-Request-Id", "RQ" + uuid.uuid4().hex)
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, code: int, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        self._answer(status, twilio_error(code, message, status), headers)

    def _scripted(self, entry: Scripted) -> None:
        status, headers, body = entry
        self._answer(status, body, headers)

    def _auth_ok(self) -> bool:
        owner = self.server.owner
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, owner.account_sid) and hmac.compare_digest(password, owner.auth_token)

    def _read_form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if "application/x-www-form-urlencoded" not in self.headers.get("Content-Type", ""):
            return {}
        return _flat(parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True))

    # routes ----------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 (http.server's method name)
        self._handle("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        form = self._read_form() if method == "POST" else {}
        auth_ok = self._auth_ok()
        owner._record(RecordedRequest(method, url.path, _flat(parse_qs(url.query, keep_blank_values=True)),
                                      form, dict(self.headers.items()), auth_ok, tuple(self.client_address[:2])))
        listing, one = LIST_PATH.match(url.path), ONE_PATH.match(url.path)
        if listing:
            scripted = owner._pop("fail_next" if method == "POST" else "fail_next_lookup")
            if scripted is not None:
                return self._scripted(scripted)
        if not auth_ok:
            return self._error(20003, "Authenticate", 401, {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        match = listing or one
        if match is None or match["account"] != owner.account_sid:
            return self._error(20404, f"The requested resource {url.path} was not found", 404)
        if listing and method == "POST":
            return self._create(form)
        if listing and method == "GET":
            return self._list(url.path, parse_qs(url.query, keep_blank_values=True))
        if one and method == "GET":
            found = owner._find(one["sid"])
            if found is None:
                return self._error(20404, f"The requested resource {url.path} was not found", 404)
            return self._answer(200, found)
        return self._error(20004, "Method not allowed", 405)

    def _create(self, form: dict[str, str]) -> None:
        owner = self.server.owner
        to = form.get("To", "").strip()
        sender = form.get("From", "").strip()
        service = form.get("MessagingServiceSid", "").strip()
        body = form.get("Body", "")
        if not to:
            return self._error(21604, "A 'To' phone number is required.", 400)
        if not E164.match(to):
            return self._error(21211, f"Invalid 'To' Phone Number: {to}", 400)
        if bool(sender) == bool(service):
            return self._error(21603, "Exactly one of 'From' or 'MessagingServiceSid' is required.", 400)
        if sender and not (E164.match(sender) or ALPHANUMERIC_SENDER.match(sender)):
            return self._error(21212, f"Invalid From Number (caller ID): {sender}", 400)
        if not body:
            return self._error(21602, "Message body is required.", 400)
        if len(body) > MAX_BODY:
            return self._error(21617, "The concatenated message body exceeds the 1600 character limit.", 400)
        if to in owner.stop_numbers:
            return self._error(21610, "Attempt to send to unsubscribed recipient", 400)

        created = owner._accept(to, sender or None, service or None, body)
        if (scripted := owner._pop("accept_then_fail_next")) is not None:
            return self._scripted(scripted)
        if owner._take_drop():
            self.close_connection = True  # accepted, and no answer at all: the client sees the drop
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if (delay := owner._pop("slow_next")) is not None:
            time.sleep(float(delay))
        return self._answer(201, created)

    def _list(self, path: str, query: dict[str, list[str]]) -> None:
        owner = self.server.owner
        q = {key.removesuffix("="): value for key, value in _flat(query).items()}  # 'DateSent>=' encoded whole
        try:
            page_size = max(1, min(int(q.get("PageSize", 50)), 1000))
            page = max(0, int(q.get("Page", 0)))
            exact = date.fromisoformat(q["DateSent"]) if q.get("DateSent") else None
            after = date.fromisoformat(q["DateSent>"]) if q.get("DateSent>") else None
            before = date.fromisoformat(q["DateSent<"]) if q.get("DateSent<") else None
        except ValueError as exc:
            return self._error(20001, f"Invalid parameter: {exc}", 400)

        def keep(m: dict) -> bool:
            if q.get("To") and m["to"] != q["To"]:
                return False
            if q.get("From") and m["from"] != q["From"]:
                return False
            if exact or after or before:
                if not m.get("date_sent"):
                    return False
                sent = parsedate_to_datetime(m["date_sent"]).astimezone(UTC).date()
                if (exact and sent != exact) or (after and sent < after) or (before and sent > before):
                    return False
            return True

        matching = [m for m in reversed(owner.messages_snapshot()) if keep(m)]  # newest first
        chunk = matching[page * page_size:(page + 1) * page_size]
        filters = {k: v for k, v in q.items() if k in ("To", "From", "DateSent", "DateSent>", "DateSent<")}

        def uri(n: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': page_size, 'Page': n})}"

        has_next = (page + 1) * page_size < len(matching)
        start = page * page_size
        self._answer(200, {
            "messages": chunk,
            "page": page,
            "page_size": page_size,
            "start": start,
            "end": start + max(len(chunk) - 1, 0),
            "uri": uri(page),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if has_next else None,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
        })


class TwilioServer(BackgroundHTTPServer):
    """The local Twilio Messages API; see the module docstring."""

    name = "Twilio sink"
    allow_reuse_address = True

    def __init__(
        self,
        account_sid: str = DEMO_ACCOUNT_SID,
        auth_token: str = DEMO_AUTH_TOKEN,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        jsonl_path: Path | str | None = None,
        stop_numbers: set[str] | None = None,
    ) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        super().__init__(host, port)
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.stop_numbers: set[str] = set(stop_numbers or ())
        self.fail_next: list[Scripted] = []
        self.fail_next_lookup: list[Scripted] = []
        self.accept_then_fail_next: list[Scripted] = []
        self.slow_next: list[float] = []
        self.drop_next = 0
        self.messages: list[dict] = []
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    # lifecycle -----------------------------------------------------------------
    def handler_class(self) -> type[_Handler]:
        return _Handler

    @property
    def messages_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    def start(self) -> TwilioServer:
        if self.jsonl_path is not None:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        return super().start()

    def _stopped(self) -> None:
        """Cut open keep-alive connections too (the provider is gone)."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # state (called from handler threads) ------------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _pop(self, name: str) -> Any:
        with self._lock:
            queue = getattr(self, name)
            return queue.pop(0) if queue else None

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drop_next > 0:
                self.drop_next -= 1
                return True
            return False

    def _accept(self, to: str, sender: str | None, service: str | None, body: str) -> dict:
        now = datetime.now(UTC)
        sid = "SM" + uuid.uuid4().hex
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        created = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(sms_segments(body)["segments"]),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": uri.removesuffix(".json") + "/Media.json"},
            "to": to,
            "uri": uri,
        }
        stored = copy.deepcopy(created) | {"status": "sent", "date_sent": created["date_created"]}
        with self._lock:
            self.messages.append(stored)
            if self.jsonl_path is not None:
                with self.jsonl_path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(stored, ensure_ascii=False) + "\n")
        log.info("twilio sink: accepted %s", sid)
        return created

    def _find(self, sid: str) -> dict | None:
        with self._lock:
            return next((copy.deepcopy(m) for m in self.messages if m["sid"] == sid), None)

    def messages_snapshot(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self.messages)

    def posts(self) -> list[RecordedRequest]:
        """The POSTs to the Messages endpoint, in order."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.requests.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle_demo.sinks.twilio_server",
        description="Local server speaking Twilio's Messages API; appends each accepted SMS to a JSONL file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="port; 0 picks a free one (default 8089)")
    parser.add_argument("--jsonl", type=Path, default=None, help="append every accepted message to this file")
    parser.add_argument("--account-sid", default=DEMO_ACCOUNT_SID, help="the AccountSid clients must use")
    parser.add_argument("--auth-token", default=DEMO_AUTH_TOKEN, help="the AuthToken clients must use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    server = TwilioServer(args.account_sid, args.auth_token, host=args.host, port=args.port,
                          jsonl_path=args.jsonl).start()
    where = f", appending messages to {args.jsonl.resolve()}" if args.jsonl else ""
    print(f"twilio sink listening on {server.base_url} (AccountSid {server.account_sid}){where}", flush=True)
    return serve_until_signalled(server.stop)


if __name__ == "__main__":
    sys.exit(main())
