"""A local HTTP server that speaks the Meta Marketing API's custom-audience users edge.

    POST   /{version}/{audience_id}/users     add rows to the audience
    DELETE /{version}/{audience_id}/users     remove rows from the audience

Parameters come as form fields (``application/x-www-form-urlencoded``, as in Meta's
examples: ``payload`` and ``session`` are JSON strings), as a JSON body, or in the query
string: ``access_token``, ``payload={"schema": [...], "data": [[...], ...]}`` and, for
uploads in several requests, ``session={"session_id", "batch_seq", "last_batch_flag",
"estimated_num_total"}``. What it checks, as Meta does:

- the access token (else 400, ``OAuthException`` code 190);
- the payload: a known schema (one key as a string with flat ``data``, or a list of keys),
  at most 10,000 rows (else code 100). Every value must be 64 lowercase hex characters
  (a SHA-256) or empty, and every row must have one value per key with at least one
  filled in. Rows that break this are not applied; they are counted in
  ``num_invalid_entries``, with a few ``invalid_entry_samples``;
- the session: a new ``session_id`` starts at ``batch_seq`` 1 and belongs to one audience and
  one method; later batches have a higher ``batch_seq`` (the same one again is taken as a
  retry of that batch: membership is a set, so re-applying it changes nothing);
  ``last_batch_flag`` closes the session, and a closed session takes nothing more (but
  the closing batch again, a retry).

Success answers like Meta: ``{"audience_id", "session_id", "num_received",
"num_invalid_entries", "invalid_entry_samples"}``. Each audience's membership is kept as a
set of row tuples (``.audience(id)``); every request is recorded (``.requests``), and with
``jsonl_path`` appended to a JSON-lines file (counts and session only, never the hashes).

Failures are scripted with ``fail_next``::

    with MetaAudienceServer(access_token="t") as meta:
        meta.fail_next(code=2)                      # transient Graph error (HTTP 500)
        meta.fail_next(status=400, code=100, after=1)   # the request after next: permanent
        meta.fail_next(drop=True)                   # apply, then hang up without answering
        ... MetaAudienceClient(meta.base_url, access_token="t") ...

CLI for the demo: ``python -m lifecycle_demo.sinks.meta_server --port 8765 --jsonl audiences.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import socket
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lifecycle_demo.sinks.serving import BackgroundHTTPServer, serve_until_signalled

log = logging.getLogger(__name__)

__all__ = ["MAX_ROWS", "MetaAudienceServer", "RecordedRequest"]

MAX_ROWS = 10_000
_PATH = re.compile(r"^/(v\d+\.\d+)/([^/]+)/users/?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Keys of customer-file audiences whose values are SHA-256 hashes (multi-key names, and
# the single-key *_SHA256 names).
HASHED_KEYS = frozenset({
    "EMAIL", "PHONE", "FN", "LN", "FI", "GEN", "DOBY", "DOBM", "DOBD", "CT", "ST", "ZIP", "COUNTRY",
    "EMAIL_SHA256", "PHONE_SHA256",
})
MAX_SAMPLES = 10

_MESSAGES = {
    1: "An unknown error occurred",
    2: "An unexpected error has occurred. Please retry your request later.",
    4: "Application request limit reached",
    17: "User request limit reached",
    100: "Invalid parameter",
    190: "Invalid OAuth access token.",
    341: "Application limit reached",
}


@dataclass
class RecordedRequest:
    """One request as the server saw it (rows are the parsed data, valid or not)."""

    method: str
    path: str
    audience_id: str | None
    version: str | None
    schema: list[str] | None
    rows: list[tuple] = field(default_factory=list)
    session: dict | None = None
    status: int = 0
    response: dict | None = None
    error_code: int | None = None
    scripted: str | None = None  # 'fail' or 'drop' when fail_next answered it
    at: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class _Failure:
    status: int
    code: int | None
    message: str
    drop: bool


@dataclass
class _Session:
    audience_id: str
    method: str
    last_seq: int = 0
    closed: bool = False
    received: int = 0
    estimated_num_total: int | None = None


class _GraphError(Exception):
    def __init__(self, status: int, code: int, message: str, *, subcode: int | None = None,
                 transient: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.subcode, self.transient = status, code, message, subcode, transient


def _error_body(code: int, message: str, *, subcode: int | None = None, transient: bool = False,
                error_type: str = "OAuthException") -> dict:
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code,
                             "fbtrace_id": "A" + secrets.token_urlsafe(16)}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    return {"error": error}


def _param(params: dict[str, Any], name: str) -> Any:
    """A parameter that may be JSON-encoded in a string (form fields) or already decoded (JSON body)."""
    value = params.get(name)
    if isinstance(value, str) and name in ("payload", "session"):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise _GraphError(400, 100, f"(#100) param {name} must be a valid JSON object") from exc
    return value


class MetaAudienceServer(BackgroundHTTPServer):
    """See the module docstring. ``port=0`` picks a free port."""

    name = "Meta audience server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, access_token: str = "test-token",
                 jsonl_path: Path | str | None = None) -> None:
        super().__init__(host, port)
        self.access_token = access_token
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.requests: list[RecordedRequest] = []
        self.audiences: dict[str, set[tuple]] = {}
        self.sessions: dict[int, _Session] = {}
        self._script: list[_Failure | None] = []
        self._lock = threading.Lock()

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    # --------------------------------------------------------------------------- test helpers
    def fail_next(self, status: int | None = None, code: int | None = None, *, times: int = 1, after: int = 0,
                  message: str | None = None, drop: bool = False) -> None:
        """Answer `times` requests, starting `after` requests from now, with an error.

        status/code: the HTTP status and Graph error code. Given only one, the other follows
        Meta's habits: code 1 or 2 (transient) come with 500, other codes with 400, a bare
        500 carries code 1 and a bare 429 code 17. drop=True: the request is processed,
        then the connection is closed without an answer (the client cannot know it landed).
        """
        if status is None:
            status = 500 if code in (None, 1, 2) else 400
        if code is None:
            code = {429: 17}.get(status, 1 if status >= 500 else 100)
        failure = _Failure(status, code, message or _MESSAGES.get(code, "Invalid parameter"), drop)
        with self._lock:
            need = after + times
            if len(self._script) < need:
                self._script.extend([None] * (need - len(self._script)))
            for i in range(after, need):
                self._script[i] = failure

    def audience(self, audience_id: str) -> set[tuple]:
        """The audience's current members (row tuples), a copy."""
        with self._lock:
            return set(self.audiences.get(audience_id, ()))

    @property
    def accepted(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.ok]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.audiences.clear()
            self.sessions.clear()
            self._script.clear()

    # --------------------------------------------------------------------------- the API
    def _next_failure(self) -> _Failure | None:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def handle(self, method: str, raw_path: str, params: dict[str, Any]) -> tuple[int, dict | None, RecordedRequest]:
        """Process one request; (status, body, record). body None: drop the connection."""
        match = _PATH.match(urlsplit(raw_path).path)
        record = RecordedRequest(method, raw_path, match and match.group(2), match and match.group(1), None,
                                 at=datetime.now(UTC).isoformat())
        try:
            if match is None:
                raise _GraphError(400, 2500, "Unknown path components")
            if params.get("access_token") != self.access_token:
                raise _GraphError(400, 190, _MESSAGES[190])
            schema, rows = self._parse_payload(_param(params, "payload"))
            record.schema, record.rows = schema, rows
            session = _param(params, "session")
            record.session = session if isinstance(session, dict) else None
            failure = self._next_failure()
            if failure is not None and not failure.drop:
                record.scripted = "fail"
                raise _GraphError(failure.status, failure.code, failure.message,
                                  transient=failure.code in (1, 2, 4, 17, 341))
            body = self._apply(method, record.audience_id, schema, rows, session)
            if failure is not None:  # drop: the work is done, the answer is lost
                record.scripted = "drop"
                record.status, record.response = 0, body
                return 0, None, record
            record.status, record.response = 200, body
            return 200, body, record
        except _GraphError as exc:
            body = _error_body(exc.code, exc.message, subcode=exc.subcode, transient=exc.transient)
            record.status, record.response, record.error_code = exc.status, body, exc.code
            return exc.status, body, record
        finally:
            self._record(record)

    def _parse_payload(self, payload: Any) -> tuple[list[str], list[tuple]]:
        if not isinstance(payload, dict) or "schema" not in payload or "data" not in payload:
            raise _GraphError(400, 100, "(#100) The parameter payload is required, with schema and data")
        schema, data = payload["schema"], payload["data"]
        single = isinstance(schema, str)
        keys = [schema] if single else schema
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise _GraphError(400, 100, "(#100) payload.schema must be a key or a non-empty list of keys")
        unknown = [k for k in keys if k not in HASHED_KEYS]
        if unknown:
            raise _GraphError(400, 100, f"(#100) Invalid schema key(s): {', '.join(unknown)}")
        if len(set(keys)) != len(keys):
            raise _GraphError(400, 100, "(#100) Duplicate keys in payload.schema")
        if not isinstance(data, list):
            raise _GraphError(400, 100, "(#100) payload.data must be a list")
        if len(data) > MAX_ROWS:
            raise _GraphError(400, 100, f"(#100) payload.data has {len(data)} rows; at most {MAX_ROWS} per request")
        rows = [tuple(row) if isinstance(row, list) else (row,) for row in data]
        return keys, rows

    def _check_session(self, method: str, audience_id: str, session: Any) -> tuple[int | None, _Session | None]:
        if session is None:
            return None, None
        if not isinstance(session, dict):
            raise _GraphError(400, 100, "(#100) param session must be an object")
        sid, seq, last = session.get("session_id"), session.get("batch_seq"), session.get("last_batch_flag")
        if not isinstance(sid, int) or isinstance(sid, bool) or not 0 < sid < 2**63:
            raise _GraphError(400, 100, "(#100) session.session_id must be a positive 64-bit integer")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise _GraphError(400, 100, "(#100) session.batch_seq must be an integer starting at 1")
        if not isinstance(last, bool):
            raise _GraphError(400, 100, "(#100) session.last_batch_flag must be a boolean")
        total = session.get("estimated_num_total")
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
            raise _GraphError(400, 100, "(#100) session.estimated_num_total must be a non-negative integer")
        state = self.sessions.get(sid)
        if state is None:
            if seq != 1:
                raise _GraphError(400, 100, f"(#100) session {sid} is unknown: a session starts at batch_seq 1")
            return sid, _Session(audience_id, method, estimated_num_total=total)
        if state.audience_id != audience_id or state.method != method:
            raise _GraphError(400, 100, f"(#100) session {sid} belongs to another audience or operation")
        if state.closed and seq != state.last_seq:  # the closing batch again is a retry: fine
            raise _GraphError(400, 100, f"(#100) session {sid} is already closed (last_batch_flag was sent)")
        if seq < state.last_seq:
            raise _GraphError(400, 100, f"(#100) session {sid}: batch_seq {seq} after {state.last_seq}")
        return sid, state

    def _apply(self, method: str, audience_id: str, schema: list[str], rows: list[tuple], session: Any) -> dict:
        with self._lock:
            sid, state = self._check_session(method, audience_id, session)
            valid, invalid, samples = [], 0, {}
            for row in rows:
                problem = self._row_problem(row, len(schema))
                if problem is None:
                    valid.append(row)
                    continue
                invalid += 1
                if len(samples) < MAX_SAMPLES:
                    samples[json.dumps(list(row))[:200]] = problem
            members = self.audiences.setdefault(audience_id, set())
            if method == "POST":
                members.update(valid)
            else:
                members.difference_update(valid)
            if sid is not None:
                self.sessions[sid] = state
                state.last_seq = session["batch_seq"]
                state.received += len(rows)
                state.closed = session["last_batch_flag"]
            else:
                sid = secrets.randbits(63)
        return {"audience_id": audience_id, "session_id": str(sid), "num_received": len(rows),
                "num_invalid_entries": invalid, "invalid_entry_samples": samples}

    @staticmethod
    def _row_problem(row: tuple, width: int) -> str | None:
        if len(row) != width:
            return f"expected {width} values, got {len(row)}"
        if not all(isinstance(v, str) for v in row):
            return "values must be strings"
        if not any(row):
            return "no value in the row"
        if not all(v == "" or _SHA256.match(v) for v in row):
            return "value is not a SHA-256 hash (64 lowercase hex characters)"
        return None

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(record)
        if self.jsonl_path is not None:
            line = {"at": record.at, "method": record.method, "audience_id": record.audience_id,
                    "schema": record.schema, "rows": len(record.rows), "session": record.session,
                    "status": record.status, "error_code": record.error_code, "scripted": record.scripted}
            if record.response and "num_invalid_entries" in record.response:
                line["num_invalid_entries"] = record.response["num_invalid_entries"]
            with self._lock, self.jsonl_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        log.info("meta server: %s %s rows=%d status=%s", record.method, record.audience_id,
                 len(record.rows), record.status)


def _handler_for(server: MetaAudienceServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lifecycle-meta-server"
        timeout = 30  # idle keep-alive connections are closed after this

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("meta server: " + format, *args)

        def _params(self) -> dict[str, Any]:
            params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if raw and ctype == "application/json":
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise _GraphError(400, 100, "(#100) the JSON body must be an object")
                params.update(body)
            elif raw:
                params.update({k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()})
            auth = self.headers.get("Authorization") or ""
            if "access_token" not in params and auth.split(" ")[0].lower() in ("bearer", "oauth"):
                params["access_token"] = auth.partition(" ")[2].strip()
            return params

        def _serve(self, method: str) -> None:
            try:
                params = self._params()
            except (ValueError, UnicodeDecodeError, _GraphError) as exc:
                err = exc if isinstance(exc, _GraphError) else _GraphError(400, 100, f"(#100) unreadable body: {exc}")
                self._answer(err.status, _error_body(err.code, err.message))
                return
            status, body, _ = server.handle(method, self.path, params)
            if body is None:  # scripted drop: hang up without a word
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._answer(status, body)

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            if "error" in body:
                self.send_header("WWW-Authenticate", 'OAuth "Facebook Platform" "invalid_request"')
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (stdlib hook name)
            self._serve("POST")

        def do_DELETE(self) -> None:  # noqa: N802 (stdlib hook name)
            self._serve("DELETE")

        def do_GET(self) -> None:  # noqa: N802 (stdlib hook name)
            self._answer(400, _error_body(100, "(#100) this local server only speaks POST and DELETE on /users"))

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lifecycle_demo.sinks.meta_server",
                                     description="Local Meta custom-audience API (POST/DELETE /{v}/{audience}/users).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--token", default="test-token", help="the access token it accepts (default test-token)")
    parser.add_argument("--jsonl", type=Path, help="append one JSON line per request to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = MetaAudienceServer(args.host, args.port, access_token=args.token, jsonl_path=args.jsonl).start()
    print(f"meta audience server listening on {server.base_url}", flush=True)
    return serve_until_signalled(server.stop)


if __name__ == "__main__":
    sys.exit(main())
