"""A real local SMTP server for the demo and the tests (aiosmtpd, in a background thread).

Two uses, one handler:

- **The demo's outbox** (``EmlSink`` / ``start_sink``): every message the engine sends
  is written, byte for byte as received, to
  ``<outbox>/<UTC timestamp>_<n>_<recipient>.eml``; open it in any mail client.
  CLI: ``python -m lifecycle_demo.sinks.smtp_server --outbox DIR --port N`` runs until killed.
- **Tests** (``RecordingSMTPServer``): keeps messages in memory
  (``.messages``: ``(mail_from, rcpt_tos, data)``) and can answer with SMTP errors over a
  real SMTP conversation, to simulate a provider's failures::

      with RecordingSMTPServer(reject={"bad@example.com": "550 5.1.1 no such user"},
                               fail_nth={3: "451 4.3.0 try again later"}) as smtp:
          ...  # smtplib.SMTP("127.0.0.1", smtp.port)

  ``reject`` refuses a recipient at RCPT TO every time (smtplib raises
  ``SMTPRecipientsRefused`` when no recipient is left). ``fail_nth`` answers the Nth
  DATA of the server's lifetime (1-based, counting failed attempts too) with the given
  reply, once: a retry is a new attempt and goes through (smtplib raises
  ``SMTPDataError``). Both dicts can be changed while the server runs. ``mail_reply``
  (e.g. ``"553 5.7.1 sender not allowed"``) refuses every MAIL FROM while it is set, as a
  provider refuses a blocked account; ``credentials=(login, password)`` makes the server offer
  AUTH and refuse any other login (plain text, localhost only: tests).

The server speaks plain SMTP on localhost: no TLS, no AUTH unless ``credentials`` are given
(an Airflow SMTP connection pointing at it needs ``disable_tls``/``disable_ssl``).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import itertools
import logging
import os
import re
import sys
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import NamedTuple

from aiosmtpd.controller import Controller

from lifecycle_demo.sinks.serving import serve_until_signalled

log = logging.getLogger(__name__)

__all__ = [
    "EmlSink",
    "ReceivedMessage",
    "RecordingSMTPServer",
    "SinkHandler",
    "eml_filename",
    "start_sink",
]

SERVER_HOSTNAME = "lifecycle-smtp-sink"  # skip aiosmtpd's socket.getfqdn() lookup, which can be slow


class ReceivedMessage(NamedTuple):
    """One accepted message: envelope sender, envelope recipients, raw DATA bytes."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def message(self) -> EmailMessage:
        """The data parsed with the ``email`` package (modern policy)."""
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


def _sanitise(address: str, limit: int = 80) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9@._+-]", "_", address.strip("<> ")) or "unknown"
    return cleaned.strip(".")[:limit] or "unknown"


def eml_filename(n: int, rcpt_tos: list[str], when: datetime | None = None) -> str:
    """``<UTC timestamp>_<n>_<sanitised first recipient>[+k].eml`` (sorts by arrival)."""
    when = when or datetime.now(UTC)
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    rcpt = _sanitise(rcpt_tos[0]) if rcpt_tos else "unknown"
    if len(rcpt_tos) > 1:
        rcpt += f"+{len(rcpt_tos) - 1}"
    return f"{stamp}_{n:06d}_{rcpt}.eml"


class SinkHandler:
    """aiosmtpd handler: accept (or refuse, as told), then store each message.

    outbox: directory to write ``.eml`` files to (None: don't write files).
    keep: also keep messages in memory in ``.messages``.
    reject: {recipient address: SMTP reply} refused at RCPT TO, every time.
    fail_nth: {n: SMTP reply} for the nth DATA attempt (1-based), applied once.
    """

    def __init__(
        self,
        outbox: Path | str | None = None,
        *,
        keep: bool = False,
        reject: dict[str, str] | None = None,
        fail_nth: dict[int, str] | None = None,
    ) -> None:
        self.outbox = Path(outbox) if outbox is not None else None
        if self.outbox is not None:
            self.outbox.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.reject: dict[str, str] = dict(reject or {})
        self.fail_nth: dict[int, str] = dict(fail_nth or {})
        self.mail_reply: str | None = None  # set: refuse every MAIL FROM with this reply
        self.messages: list[ReceivedMessage] = []
        self.files: list[Path] = []
        # (what, detail, reply) for every refusal, to help tests explain themselves.
        self.refusals: list[tuple[str, str, str]] = []
        self.data_attempts = 0
        self._accepted = itertools.count(1)
        self._lock = threading.Lock()

    def _rejection(self, address: str) -> str | None:
        wanted = address.strip("<> ").lower()
        for addr, reply in self.reject.items():
            if addr.strip("<> ").lower() == wanted:
                return reply
        return None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802 (aiosmtpd hook name)
        # aiosmtpd reads commands one line at a time from a buffered stream and answers each in
        # order, which is all RFC 2920 asks of a server: offer PIPELINING, as real MTAs do.
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802 (aiosmtpd hook name)
        if self.mail_reply is not None:
            self.refusals.append(("MAIL", address, self.mail_reply))
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd hook name)
        reply = self._rejection(address)
        if reply is not None:
            self.refusals.append(("RCPT", address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
        with self._lock:
            self.data_attempts += 1
            attempt = self.data_attempts
            reply = self.fail_nth.pop(attempt, None)
        if reply is not None:
            self.refusals.append(("DATA", str(attempt), reply))
            return reply
        data: bytes = envelope.original_content or b""
        received = ReceivedMessage(envelope.mail_from or "", list(envelope.rcpt_tos), data)
        n = next(self._accepted)
        if self.outbox is not None:
            path = self.outbox / eml_filename(n, received.rcpt_tos)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # a watcher never sees half a file
            self.files.append(path)
            log.info("smtp sink: message %d written to %s", n, path.name)
        if self.keep:
            self.messages.append(received)
        return "250 Message accepted for delivery"


class _Controller(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (a free port the OS picks)."""

    def _trigger_server(self):
        if self.server is not None and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _controller(handler: SinkHandler, host: str, port: int, **smtp_params) -> _Controller:
    return _Controller(handler, hostname=host, port=port, server_hostname=SERVER_HOSTNAME, ready_timeout=10.0,
                       **smtp_params)


def _password_check(login: str, password: str):
    """aiosmtpd authenticator accepting exactly one login (AUTH PLAIN/LOGIN)."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == login.encode()
              and auth_data.password == password.encode())
        return AuthResult(success=ok, handled=False)

    return authenticate


def start_sink(outbox: Path | str, host: str = "127.0.0.1", port: int = 0) -> tuple[Controller, int]:
    """Start an SMTP server writing each message to ``outbox`` as .eml; return (controller, port).

    Stop it with ``controller.stop()``. ``port=0`` picks a free port.
    """
    controller = _controller(SinkHandler(outbox), host, port)
    controller.start()
    return controller, controller.port


class _ServerBase:
    def __init__(self, handler: SinkHandler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self._requested_port = port
        self._controller: _Controller | None = None
        self.smtp_params: dict = {}

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("SMTP server not started")
        return self._controller.port

    def start(self):
        if self._controller is not None:
            raise RuntimeError("SMTP server already started")
        controller = _controller(self.handler, self.host, self._requested_port, **self.smtp_params)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class EmlSink(_ServerBase):
    """The demo's mail catcher: every message becomes an .eml file in ``outbox``.

    ``with EmlSink(outbox) as sink: ... sink.port ... sink.files``
    """

    def __init__(self, outbox: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(SinkHandler(outbox), host, port)
        self.outbox = Path(outbox)

    @property
    def files(self) -> list[Path]:
        return list(self.handler.files)


class RecordingSMTPServer(_ServerBase):
    """SMTP server for tests: messages in memory, scripted failures; see module docstring.

    outbox: optionally also write .eml files (handy when debugging a test).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reject: dict[str, str] | None = None,
        fail_nth: dict[int, str] | None = None,
        outbox: Path | str | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(SinkHandler(outbox, keep=True, reject=reject, fail_nth=fail_nth), host, port)
        if credentials is not None:
            self.smtp_params = {"authenticator": _password_check(*credentials), "auth_require_tls": False}

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages

    @property
    def reject(self) -> dict[str, str]:
        return self.handler.reject

    @property
    def fail_nth(self) -> dict[int, str]:
        return self.handler.fail_nth

    @property
    def refusals(self) -> list[tuple[str, str, str]]:
        return self.handler.refusals

    @property
    def data_attempts(self) -> int:
        return self.handler.data_attempts

    def clear(self) -> None:
        self.handler.messages.clear()
        self.handler.refusals.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived (for senders in other threads/processes)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} messages, got {len(self.messages)} within {timeout}s")
            time.sleep(0.02)
        return list(self.messages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle_demo.sinks.smtp_server",
        description="Local SMTP server: writes every message it receives to OUTBOX as an .eml file.",
    )
    parser.add_argument(
        "--outbox", type=Path, required=True, help="directory for the .eml files (created if missing)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=1025, help="port to listen on; 0 picks a free one (default 1025)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command at INFO

    controller, port = start_sink(args.outbox, args.host, args.port)
    print(
        f"smtp sink listening on {args.host}:{port}, writing .eml files to {args.outbox.resolve()}",
        flush=True,
    )
    return serve_until_signalled(controller.stop)


if __name__ == "__main__":
    sys.exit(main())
