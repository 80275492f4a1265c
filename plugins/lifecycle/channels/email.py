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

A window of messages goes out with `deliver_many`: where the server offers PIPELINING (RFC 2920)
a message's content is followed by the next message's MAIL, RCPT and DATA without waiting for a
reply, one round trip per message, and the replies are read in order, so each reply still
belongs to exactly one message (the same table applies; a message's content is only sent after
its DATA got 354). The wire bytes are built by
hand (`compose`): the headers the batch shares once, each header a message brings checked for
the line breaks email.policy refuses (HEADER_BREAKS); the email package only checks that rule.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import smtplib
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import Header
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
_BREAKS = re.compile(f"[{re.escape(HEADER_BREAKS)}]")
_LOST = (TimeoutError, smtplib.SMTPServerDisconnected, OSError)  # the session is gone


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
        bad = _BREAKS.search(value)
        if bad is not None:
            return f"{name} contains U+{ord(bad.group()):04X}, a line break email headers cannot carry"
    return None


def compose_with_email_package(message: OutboundEmail, from_email: str, from_name: str) -> bytes:
    """The reference composer (EmailMessage, policy.SMTP): what `compose` must stay equivalent to
    (tests parse both back and compare). About 20x slower, so the sender does not use it."""
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

_PLAIN_HEADER = re.compile(r"[\x20-\x7e\t]{0,900}")  # sent as is; anything else is RFC 2047-encoded
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII without ':'
MAX_LINE = 998  # RFC 5322 line limit (bytes, without CRLF)


def _header(name: str, value: str) -> bytes:
    if _PLAIN_HEADER.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}\r\n".encode("ascii")


@functools.lru_cache(maxsize=64)
def _shared_headers(from_email: str, from_name: str) -> bytes:
    """What every message of a sender shares (From), built and validated once."""
    sender = formataddr((from_name, from_email))
    if _BREAKS.search(sender):
        raise ValueError(f"From contains a line break email headers cannot carry: {sender!r}")
    return _header("From", sender)


def _part(subtype: str, text: str) -> bytes:
    """One text part, encoded as the email package would choose: 7bit or 8bit when every line
    fits in 998 bytes, base64 otherwise (no line of the wire is ever longer)."""
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= MAX_LINE:
        cte = "7bit" if text.isascii() else "8bit"
        body = b"\r\n".join(lines) + b"\r\n"
    else:
        cte = "base64"
        body = base64.encodebytes(b"\r\n".join(lines) + b"\r\n").replace(b"\n", b"\r\n")
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
            .encode("ascii") + body)


def compose(message: OutboundEmail, from_email: str, from_name: str, *, date: str | None = None) -> bytes:
    """The message as it goes on the wire (CRLF line ends; SMTP dot-stuffing is the sender's).

    Raises ValueError (naming the header and the character) for a header value holding a line
    break email headers cannot carry, exactly where the email package would refuse it.
    `date` (RFC 5322) lets a batch format the clock once per window."""
    problem = header_problem(message)
    if problem:
        raise ValueError(problem)
    head = [_shared_headers(from_email, from_name), _header("To", message.to), _header("Subject", message.subject),
            _header("Date", date or formatdate(usegmt=True)), _header("Message-ID", message.message_id)]
    for name, value in message.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        head.append(_header(name, value))
    text, html = _part("plain", message.text), _part("html", message.html)
    boundary = f"=_lc_{secrets.token_hex(12)}"
    while boundary.encode() in text or boundary.encode() in html:  # pragma: no cover - 96 random bits
        boundary = f"=_lc_{secrets.token_hex(12)}"
    b = boundary.encode("ascii")
    head.append(b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="' + b + b'"\r\n\r\n')
    return b"".join([*head, b"--", b, b"\r\n", text, b"\r\n--", b, b"\r\n", html, b"\r\n--", b, b"--\r\n"])


def _dot_stuffed(raw: bytes) -> bytes:
    """DATA's content: lines starting with '.' doubled, ended by CRLF.CRLF (RFC 5321 4.5.2).
    `compose` ends every line with CRLF, so a plain replace finds every line start (a tenth of
    the time of smtplib's multi-line regex); anything else takes that regex."""
    if raw.count(b"\n") != raw.count(b"\r\n"):  # pragma: no cover - compose never makes bare line ends
        stuffed = re.sub(rb"(?m)^\.", b"..", raw)
    else:
        stuffed = (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..")
    return stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n")


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
        try:  # each write is a whole command group or message: never held back waiting for an ACK
            self._smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):  # not a TCP socket
            pass

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None

    def deliver(self, message: OutboundEmail) -> Outcome:
        (result,) = self.deliver_many([message])
        if isinstance(result, ChannelUnavailable):
            raise result
        return result

    def deliver_many(self, messages: Sequence[OutboundEmail]) -> list[Outcome | ChannelUnavailable]:
        """Each message's outcome, in order. Once the channel is unavailable (the session cannot
        be opened, the server refuses our sender), that message and the rest get the
        ChannelUnavailable instead: nothing of theirs reached the server."""
        date = formatdate(usegmt=True)  # one clock reading per window
        results: list[Outcome | ChannelUnavailable | None] = [None] * len(messages)
        # (position, message, its DATA content once composed): composed as it comes up, while
        # the server reads the message before it
        queue: deque[tuple[int, OutboundEmail, bytes | None]] = deque((i, m, None) for i, m in enumerate(messages))
        try:
            while queue:
                if self._smtp is None:
                    self._connect()
                if self._pipelining:
                    self._pipeline(queue, results, date)
                else:
                    ready = self._next_ready(queue, results, date)
                    if ready is not None:
                        results[ready[0]] = self._deliver_stepwise(ready[1], ready[2])
        except ChannelUnavailable as exc:
            return [exc if result is None else result for result in results]
        return results  # type: ignore[return-value]

    def _next_ready(self, queue: deque, results: list, date: str) -> tuple[int, OutboundEmail, bytes] | None:
        """The next message of the queue with its DATA content composed; those that cannot be
        composed get their outcome on the way (nothing of them reaches the server)."""
        while queue:
            i, message, data = queue.popleft()
            if data is not None:
                return i, message, data
            if not message.to.isascii():  # no SMTPUTF8 here
                results[i] = Outcome("failed", "invalid address: non-ASCII characters need SMTPUTF8, not supported")
                continue
            try:
                return i, message, _dot_stuffed(compose(message, self.from_email, self.from_name, date=date))
            except (ValueError, TypeError) as exc:  # a per-message failure, never unknown
                results[i] = Outcome("failed", f"cannot compose the email: {header_problem(message) or exc}")
        return None

    def _envelope_bytes(self, to: str) -> bytes:
        return (f"MAIL FROM:{smtplib.quoteaddr(self.from_email)}\r\nRCPT TO:{smtplib.quoteaddr(to)}\r\n"
                "DATA\r\n").encode("ascii")

    def _pipeline(self, queue: deque, results: list, date: str) -> None:
        """Send the queue over this session, one round trip per message (RFC 2920): a message's
        content, then the next message's MAIL, RCPT and DATA, written without waiting in between
        (the next message is composed meanwhile, while the server reads the content); then the
        replies, in order: the content's, and the next envelope's three. Each reply still belongs
        to exactly one message, and a content is only sent after its DATA got 354. Returns when
        the queue is done or the connection was lost (the caller reconnects: a message whose
        envelope went out but not its content is attempted again, as if new)."""
        smtp = self._smtp
        current = self._next_ready(queue, results, date)
        if current is not None and not self._send_envelope(smtp, current, queue, results):
            return
        while current is not None:
            i, message, data = current
            try:
                refused = self._refused_envelope(smtp, *(smtp.getreply() for _ in range(3)))  # our sender
            except _LOST as exc:  # refused raises ChannelUnavailable
                self._drop()
                results[i] = Outcome("retry", f"connection lost before DATA: {exc}")
                return
            if refused is not None:
                results[i] = refused
                if self._smtp is None:  # the RSET after the refusal failed: reconnect for the rest
                    return
                current = self._next_ready(queue, results, date)
                if current is not None and not self._send_envelope(smtp, current, queue, results):
                    return
                continue
            following = None
            try:
                smtp.send(data)
                following = self._next_ready(queue, results, date)
                if following is not None:
                    smtp.send(self._envelope_bytes(following[1].to))
                code, reply = smtp.getreply()
            except _LOST as exc:
                self._drop()
                results[i] = Outcome("unknown", f"connection lost during DATA: {exc}")
                if following is not None:  # never got its content: attempted again on a new session
                    queue.appendleft(following)
                return
            # The end of the content ends the transaction whatever its reply (RFC 5321 4.1.1.4):
            # no RSET, which would land in the next message's envelope already on its way.
            results[i] = self._accepted(message, code, reply, reset=False)
            current = following

    def _send_envelope(self, smtp: smtplib.SMTP, ready: tuple, queue: deque, results: list) -> bool:
        """Write a message's MAIL, RCPT and DATA; False when the session is lost (that message
        will be retried)."""
        try:
            smtp.send(self._envelope_bytes(ready[1].to))
            return True
        except _LOST as exc:
            self._drop()
            results[ready[0]] = Outcome("retry", f"connection lost before DATA: {exc}")
            return False

    def _refused_envelope(self, smtp: smtplib.SMTP, mail: tuple, rcpt: tuple, data: tuple) -> Outcome | None:
        """The outcome when MAIL/RCPT/DATA did not end in 354 (the session reset for the next
        message), None when the content may go. MAIL refused raises ChannelUnavailable."""
        (mail_code, mail_reply), (rcpt_code, rcpt_reply), (code, reply) = mail, rcpt, data
        if code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
            # DATA accepted although MAIL or RCPT was not: end it empty, never send content
            smtp.send(b".\r\n")
            smtp.getreply()
        if mail_code != 250:
            self._refused_sender(mail_code, mail_reply)
        if rcpt_code not in (250, 251):
            return self._rejected("RCPT", rcpt_code, rcpt_reply)
        if code != 354:  # DATA refused before the content was sent
            return self._rejected("DATA", code, reply)
        return None

    def _deliver_stepwise(self, message: OutboundEmail, data: bytes) -> Outcome:
        """MAIL, RCPT, DATA each waiting for its reply (a server without PIPELINING)."""
        smtp = self._smtp
        try:
            code, reply = self._envelope(smtp, message.to)
        except _LOST as exc:
            self._drop()
            return Outcome("retry", f"connection lost before DATA: {exc}")
        if isinstance(code, Outcome):
            return code
        try:
            if code != 354:  # DATA refused before the content was sent
                return self._rejected("DATA", code, reply)
            smtp.send(data)
            code, reply = smtp.getreply()
        except _LOST as exc:
            self._drop()
            return Outcome("unknown", f"connection lost during DATA: {exc}")
        return self._accepted(message, code, reply)

    def _accepted(self, message: OutboundEmail, code: int, reply: bytes | str, reset: bool = True) -> Outcome:
        """The outcome of the reply to a message's content."""
        if code != 250:
            return self._rejected("DATA", code, reply, reset=reset)
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        queued = QUEUE_ID.search(text)
        return Outcome("sent", provider_message_id=queued.group(1) if queued else message.message_id)

    @property
    def _pipelining(self) -> bool:
        return self._smtp is not None and self._smtp.has_extn("pipelining")

    def _envelope(self, smtp: smtplib.SMTP, to: str):
        """MAIL, RCPT, DATA one by one: (DATA's code, reply), or (an Outcome, None) when refused."""
        code, reply = smtp.mail(self.from_email)
        if code != 250:
            self._refused_sender(code, reply)
        code, reply = smtp.rcpt(to)
        if code not in (250, 251):
            return self._rejected("RCPT", code, reply), None
        smtp.putcmd("data")
        return smtp.getreply()

    def _refused_sender(self, code: int, reply: bytes | str) -> None:
        """MAIL FROM refused: our account or sender, the same for every message. Fail the task
        and leave the batch planned (ChannelUnavailable) instead of failing every recipient."""
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        self._drop()
        raise ChannelUnavailable(
            f"SMTP server {self.server} refused our sender {self.from_email} at MAIL FROM "
            f"({code} {text}); check the lifecycle_smtp connection and the account: the messages stay planned"
        )

    def _rejected(self, stage: str, code: int, reply: bytes | str, reset: bool = True) -> Outcome:
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        if reset:
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
