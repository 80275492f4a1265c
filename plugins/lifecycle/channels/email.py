"""Email over SMTP: one connection per batch, every SMTP reply classified.

Configured by an Airflow SMTP connection (`lifecycle_smtp`); the smtp provider's SmtpHook
opens each session from it (extras `from_email`, `disable_ssl`, `disable_tls`, `timeout`,
`retry_limit`, `ssl_context`, `auth_type`: see channels/smtp_hook.py). The envelope is
driven step by step (MAIL, RCPT, DATA) so that a rejected recipient, a transient 4xx and a
connection lost mid-DATA are told apart:

    connect, TLS, AUTH  ChannelUnavailable: the task fails, every message stays planned
    MAIL FROM not 250   ChannelUnavailable too: the server refuses our sender (account,
                        credentials, reputation), not this message; nothing is burnt
    RCPT 5xx            failed, hard bounce (the address is suppressed)
    RCPT/DATA 4xx       retry later (the message goes back to planned)
    DATA 5xx            failed
    lost before DATA    retry (the server never had the message)
    lost during DATA    unknown (it may have been accepted: never re-sent blindly)
"""

from __future__ import annotations

import hashlib
import json
import re
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formataddr, formatdate

from lifecycle.channels.base import ChannelUnavailable, Outcome
from lifecycle.config import SHOP, SMTP_CONN_ID

QUEUE_ID = re.compile(r"queued as\s+(\S+)", re.I)
# RFC 5322 allows 998-character lines. The default 78 makes the email package RFC 2047-encode a
# long List-Unsubscribe header (its URLs cannot be folded), which mailbox providers then ignore.
WIRE_POLICY = SMTP_POLICY.clone(max_line_length=998)
# What email.policy refuses in a header value (To, Subject, ...): every character str.splitlines()
# breaks on. Found by composing a message with each code point of U+0000-U+20FF, U+2028/9 in the
# To and Subject (tests/channels/test_email.py re-checks the set with Hypothesis); bodies take them all.
HEADER_BREAKS = "\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029"


@dataclass(frozen=True)
class OutboundEmail:
    to: str
    subject: str
    text: str
    html: str
    message_id: str  # the Message-ID header, derived from the idempotency key
    headers: dict[str, str] = field(default_factory=dict)


def message_id_for(idempotency_key: str) -> str:
    """Stable per intended message, so a receiving system can spot any duplicate."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}@lifecycle.{SHOP['from_email'].split('@')[-1]}>"


def header_problem(message: OutboundEmail) -> str | None:
    """Why `compose` would refuse this message (a header holding a line break), naming the
    header and the character; None when it composes."""
    fields = {"To": message.to, "Subject": message.subject, **message.headers}
    for name, value in fields.items():
        bad = next((ch for ch in value if ch in HEADER_BREAKS), None)
        if bad is not None:
            return f"{name} contains U+{ord(bad):04X}, a line break email headers cannot carry"
    return None


def compose(message: OutboundEmail, from_email: str, from_name: str) -> bytes:
    msg = EmailMessage(policy=WIRE_POLICY)
    msg["From"] = formataddr((from_name, from_email))
    msg["To"] = message.to
    msg["Subject"] = message.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message.message_id
    for name, value in message.headers.items():
        msg[name] = value
    msg.set_content(message.text)
    msg.add_alternative(message.html, subtype="html")
    return msg.as_bytes()


class EmailChannel:
    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        login: str | None = None,
        password: str | None = None,
        use_ssl: bool = False,
        starttls: bool = False,
        timeout: int = 30,
        from_email: str = SHOP["from_email"],
        from_name: str = SHOP["name"],
        **extra,
    ):
        """Send through the SMTP server at host:port, described as an Airflow SMTP connection:
        `extra` takes the smtp provider's other extras (`retry_limit`, `ssl_context`, `auth_type`).
        `from_airflow` reads a configured connection instead."""
        from airflow.sdk import Connection

        extra = {"disable_ssl": not use_ssl, "disable_tls": not starttls, "timeout": timeout,
                 "from_email": from_email, **extra}
        self._configure(Connection(conn_id="email_channel", conn_type="smtp", host=host, port=port,
                                   login=login, password=password, extra=json.dumps(extra)), from_name)

    @classmethod
    def from_airflow(cls, conn_id: str = SMTP_CONN_ID) -> EmailChannel:
        """The channel of the Airflow SMTP connection `conn_id`, read once: its fields and extras
        mean what they mean to the smtp provider's SmtpHook, which opens every session."""
        from airflow.sdk import BaseHook

        channel = cls.__new__(cls)
        channel._configure(BaseHook.get_connection(conn_id), SHOP["name"])
        return channel

    def _configure(self, connection, from_name: str) -> None:
        from lifecycle.channels.smtp_hook import ConnectionSmtpHook

        hook = ConnectionSmtpHook(connection)
        self.connection, self.from_name = connection, from_name
        self.from_email = hook.from_email or SHOP["from_email"]
        self.server = f"{hook.host}:{hook.port or (465 if hook.use_ssl else 25)}"  # as errors name it
        self._smtp: smtplib.SMTP | None = None

    # one SMTP session per batch ------------------------------------------------
    def __enter__(self) -> EmailChannel:
        self._connect()
        return self

    def __exit__(self, *exc) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None

    def _connect(self) -> None:
        from lifecycle.channels.smtp_hook import AirflowException, ConnectionSmtpHook

        try:
            self._smtp = ConnectionSmtpHook(self.connection).open()
        except (AirflowException, RuntimeError, smtplib.SMTPException, OSError) as exc:
            raise ChannelUnavailable(f"SMTP server {self.server} unavailable: {exc}") from exc

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None

    def deliver(self, message: OutboundEmail) -> Outcome:
        if self._smtp is None:
            self._connect()
        smtp = self._smtp
        if not message.to.isascii():  # no SMTPUTF8 here: refuse before the server sees anything
            return Outcome("failed", "invalid address: non-ASCII characters need SMTPUTF8, not supported")
        try:
            raw = compose(message, self.from_email, self.from_name)
        except (ValueError, TypeError) as exc:  # nothing was sent: a per-message failure, never unknown
            return Outcome("failed", f"cannot compose the email: {header_problem(message) or exc}")
        try:
            code, reply = smtp.mail(self.from_email)
            if code != 250:
                self._refused_sender(code, reply)
            code, reply = smtp.rcpt(message.to)
            if code not in (250, 251):
                return self._rejected("RCPT", code, reply)
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            return Outcome("retry", f"connection lost before DATA: {exc}")
        try:
            code, reply = smtp.data(raw)
        except smtplib.SMTPDataError as exc:  # DATA refused before the content was sent
            return self._rejected("DATA", exc.smtp_code, exc.smtp_error)
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            return Outcome("unknown", f"connection lost during DATA: {exc}")
        if code != 250:
            return self._rejected("DATA", code, reply)
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        queued = QUEUE_ID.search(text)
        return Outcome("sent", provider_message_id=queued.group(1) if queued else message.message_id)

    def _refused_sender(self, code: int, reply: bytes | str) -> None:
        """MAIL FROM refused: our account or sender, the same for every message. Fail the task
        and leave the batch planned (ChannelUnavailable) instead of failing every recipient."""
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        self._drop()
        raise ChannelUnavailable(
            f"SMTP server {self.server} refused our sender {self.from_email} at MAIL FROM "
            f"({code} {text}); check the lifecycle_smtp connection and the account: the messages stay planned"
        )

    def _rejected(self, stage: str, code: int, reply: bytes | str) -> Outcome:
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        try:
            self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()
        reason = f"SMTP {stage} {code} {text}".strip()
        if 400 <= code < 500:
            return Outcome("retry", reason)
        if stage == "RCPT":
            return Outcome("failed", f"hard bounce: {reason}", suppress="hard_bounce")
        return Outcome("failed", reason)
