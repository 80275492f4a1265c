"""The shop's return mailbox: mail-client unsubscribes, bounces and complaints that arrive by mail.

Every marketing email advertises `List-Unsubscribe: <https://...>, <mailto:unsubscribe@DOMAIN?
subject=unsubscribe%20TOKEN>`; bounces (DSNs) and feedback-loop complaints arrive at the same
domain after the SMTP session has ended. Deliver that mail to a maildir (any MTA or fetchmail can)
and point LIFECYCLE_MAILDIR at it; the `lifecycle_mailbox` DAG (built when the variable is set)
reads `new/` every 10 minutes:

    Subject "unsubscribe TOKEN"      the token's (customer, channel) suppressed, reason
                                     unsubscribe, source mailto (as a click on the link would)
    DSN (RFC 3464), Action failed,   hard_bounce on email for the customer the returned message
    Status 5.0/5.1/5.2.x, 5.4.4      was sent to; 5.2.2 (mailbox full), 5.7.x (policy, spam
                                     filters) and delays are not about the address: counted only
    ARF (RFC 5965) Feedback-Type     complaint on email
    abuse

The customer is read from the returned message: the signed token of its List-Unsubscribe header,
else its Message-ID (derived from the message's idempotency key, see channels/email.py), never
from an address in the report, which anyone can write. Each handled message moves to `cur/` with
the Seen flag once its suppression is committed; one that cannot be used moves there Flagged,
for a person, and the reason is logged with its file name. A database error leaves the message in
`new/` for the next run: writing a suppression twice is harmless.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from pathlib import Path

import sqlalchemy as sa

from lifecycle.config import SHOP
from lifecycle.links import verify_unsubscribe_token
from lifecycle.warehouse import task_engine

log = logging.getLogger(__name__)

MAILDIR_ENV = "LIFECYCLE_MAILDIR"
MAILBOX_DAG_ID = "lifecycle_mailbox"

_UNSUBSCRIBE_SUBJECT = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_\-=]{20,})", re.I)
_LINK_TOKEN = re.compile(r"[?&]t=([A-Za-z0-9_\-=]+)")
_MESSAGE_ID = re.compile(r"<([0-9a-f]{32})@lifecycle\.([^>\s]+)>")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")

# RFC 3463 subjects that say the address or mailbox is gone: 0 other/undefined (what many MTAs
# use for "user unknown"), 1 addressing, 2 mailbox. 5.2.2 (full) usually clears; 5.4.4 is "no
# route": the domain has no mail server.
_NOT_HARD = {"5.2.2"}
_HARD_EXTRA = {"5.4.4"}

# One pass over the email messages for all of a run's digests (about 1 s per million rows):
# the Message-ID is a hash of the idempotency key, so it cannot be looked up by an index.
MESSAGES_BY_DIGEST_SQL = sa.text(
    """
    SELECT DISTINCT ON (digest) digest, customer_id, channel
      FROM (SELECT left(encode(sha256(convert_to(idempotency_key, 'UTF8')), 'hex'), 32) AS digest,
                   customer_id, channel, message_id
              FROM lifecycle.messages
             WHERE channel = 'email' AND mode = 'live') m
     WHERE digest = ANY(CAST(:digests AS text[]))
     ORDER BY digest, message_id
    """
)


@dataclass(frozen=True)
class Finding:
    """What one piece of mail asks for. `action` is unsubscribe / hard_bounce / complaint (a
    suppression to write), ignore (understood, nothing to do) or unusable (for a person)."""

    action: str
    detail: str
    subject: tuple[str, str] | None = None  # (customer_id, channel) when the mail names it itself
    digest: str | None = None  # the returned message's Message-ID digest, to look up


@dataclass
class MailboxReport:
    unsubscribes: int = 0
    hard_bounces: int = 0
    complaints: int = 0
    already_suppressed: int = 0
    ignored: int = 0
    unusable: list[str] = field(default_factory=list)  # "file: why"

    def line(self) -> str:
        return (f"mailbox: unsubscribes {self.unsubscribes}, hard bounces {self.hard_bounces}, "
                f"complaints {self.complaints}, already suppressed {self.already_suppressed}, "
                f"ignored {self.ignored}, unusable {len(self.unusable)} (left flagged in cur/)")


# ---------------------------------------------------------------------------- reading one mail
def parse(raw: bytes) -> Message:
    return BytesParser(policy=policy.default).parsebytes(raw)


def classify(msg: Message) -> Finding:
    """What `msg` asks for, without touching the database."""
    if msg.get_content_type() == "multipart/report":
        report_type = (msg.get_param("report-type") or "").lower()
        if report_type == "delivery-status":
            return _classify_dsn(msg)
        if report_type == "feedback-report":
            return _classify_arf(msg)
        return Finding("unusable", f"a multipart/report of type {report_type or '(none)'}")
    match = _UNSUBSCRIBE_SUBJECT.search(str(msg.get("Subject", "")))
    if match is None:
        return Finding("unusable", "neither an unsubscribe request, a DSN nor an ARF report")
    subject = verify_unsubscribe_token(match.group(1))
    if subject is None:
        return Finding("unusable", "unsubscribe request with an invalid or cut-off token")
    return Finding("unsubscribe", "mailto unsubscribe", subject=subject)


def _classify_dsn(msg: Message) -> Finding:
    blocks = _report_blocks(msg, "message/delivery-status")
    if blocks is None:
        return Finding("unusable", "DSN without a message/delivery-status part")
    recipients = [b for b in blocks[1:] if b.get("Action") or b.get("Status")]
    if not recipients:
        return Finding("unusable", "DSN without per-recipient Action/Status fields")
    hard = [b for b in recipients if _is_hard_bounce(b)]
    if not hard:
        statuses = ", ".join(f"{b.get('Action', '?')} {b.get('Status', '?')}" for b in recipients)
        return Finding("ignore", f"DSN not a hard bounce ({statuses})")
    status = str(hard[0].get("Status", "")).strip()
    return _about_original(msg, Finding("hard_bounce", f"DSN {hard[0].get('Action')} {status}"))


def _is_hard_bounce(block: Message) -> bool:
    if str(block.get("Action", "")).strip().lower() != "failed":
        return False
    match = _STATUS.search(str(block.get("Status", "")))
    if match is None:
        return False
    code = ".".join(match.groups())
    return code in _HARD_EXTRA or (match.group(1) == "5" and match.group(2) in ("0", "1", "2")
                                   and code not in _NOT_HARD)


def _classify_arf(msg: Message) -> Finding:
    blocks = _report_blocks(msg, "message/feedback-report")
    if not blocks:
        return Finding("unusable", "ARF report without a message/feedback-report part")
    feedback_type = str(blocks[0].get("Feedback-Type", "")).strip().lower()
    if feedback_type != "abuse":
        return Finding("ignore", f"ARF feedback type {feedback_type or '(none)'}, not a complaint")
    return _about_original(msg, Finding("complaint", "ARF abuse report"))


def _report_blocks(msg: Message, content_type: str) -> list[Message] | None:
    """The header blocks of the report's machine-readable part (RFC 3464 / 5965)."""
    for part in msg.iter_parts():
        if part.get_content_type() != content_type:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            return payload
        text = payload if isinstance(payload, str) else ""
        return [HeaderParser(policy=policy.default).parsestr(block.strip() + "\n")
                for block in re.split(r"\r?\n\r?\n", text) if block.strip()]
    return None


def _original_headers(msg: Message) -> Message | None:
    """The returned message's headers: a message/rfc822 or text/rfc822-headers part."""
    for part in msg.iter_parts():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            return payload[0] if isinstance(payload, list) and payload else None
        if kind in ("text/rfc822-headers", "message/global-headers"):
            return HeaderParser(policy=policy.default).parsestr(part.get_content())
    return None


def _about_original(msg: Message, finding: Finding) -> Finding:
    """`finding` with whom it concerns, read from the returned message."""
    original = _original_headers(msg)
    if original is None:
        return Finding("unusable", f"{finding.detail}: the returned message's headers are missing")
    for token in _LINK_TOKEN.findall(str(original.get("List-Unsubscribe", ""))):
        subject = verify_unsubscribe_token(token)
        if subject is not None:
            return Finding(finding.action, finding.detail, subject=(subject[0], "email"))
    match = _MESSAGE_ID.search(str(original.get("Message-ID", "")))
    if match and match.group(2).lower() == SHOP["from_email"].split("@")[-1].lower():
        return Finding(finding.action, finding.detail, digest=match.group(1))
    return Finding("unusable", f"{finding.detail}: the returned message is not one of ours "
                               "(no valid unsubscribe token, no lifecycle Message-ID)")


# ---------------------------------------------------------------------------- recording
def record(conn: sa.Connection, finding: Finding) -> bool | None:
    """Write the finding's suppression: True if new, False if one was already active, None when
    it names no customer (a returned message not in lifecycle.messages)."""
    # Imported here, not at the top: dag_factory imports this module while parsing DAG files,
    # which must not load the engine (its SQL files included).
    from lifecycle.suppression import record_suppression, record_unsubscribe

    if finding.subject is None:
        return None
    customer_id, channel = finding.subject
    if finding.action == "unsubscribe":
        return record_unsubscribe(conn, customer_id, channel, "mailto")
    source = "mailbox:dsn" if finding.action == "hard_bounce" else "mailbox:arf"
    return record_suppression(conn, customer_id, channel, finding.action, source)


def with_customers(engine: sa.Engine, findings: list[Finding]) -> list[Finding]:
    """The findings, those known only by their returned Message-ID given their (customer, channel)."""
    digests = sorted({f.digest for f in findings if f.subject is None and f.digest})
    if not digests:
        return findings
    with engine.connect() as conn:
        found = {row.digest: (row.customer_id, row.channel)
                 for row in conn.execute(MESSAGES_BY_DIGEST_SQL, {"digests": digests})}
    return [replace(f, subject=found.get(f.digest)) if f.subject is None and f.digest else f for f in findings]


def read_maildir(path: str | os.PathLike, engine: sa.Engine) -> MailboxReport:
    """Handle every message in `path`/new (see the module's docstring) and move it to cur/."""
    root = Path(path)
    new, cur = root / "new", root / "cur"
    if not new.is_dir() or not cur.is_dir():
        raise FileNotFoundError(f"{root} is not a maildir (it needs new/ and cur/): set {MAILDIR_ENV} to one")
    entries = [e for e in sorted(new.iterdir()) if not e.name.startswith(".") and e.is_file()]
    findings = with_customers(engine, [_classify_file(entry) for entry in entries])
    report = MailboxReport()
    for entry, finding in zip(entries, findings, strict=True):
        if _apply(engine, finding, report):
            _move(entry, cur, "S")
            continue
        reason = finding.detail if finding.action == "unusable" else \
            f"{finding.detail}: the returned message is not in lifecycle.messages"
        report.unusable.append(f"{entry.name}: {reason}")
        log.warning("mailbox %s: %s; moved to cur/ flagged, nothing recorded", entry.name, reason)
        _move(entry, cur, "F")
    log.info(report.line())
    return report


def _classify_file(entry: Path) -> Finding:
    try:
        return classify(parse(entry.read_bytes()))
    except Exception as exc:  # malformed mail from anyone: that one message goes to a person, the rest go on
        return Finding("unusable", f"unreadable mail: {type(exc).__name__}: {exc}")


def _apply(engine: sa.Engine, finding: Finding, report: MailboxReport) -> bool:
    """Record the finding and count it; False when it could not be used."""
    if finding.action == "ignore":
        report.ignored += 1
        return True
    if finding.action == "unusable":
        return False
    with engine.begin() as conn:
        written = record(conn, finding)
    if written is None:
        return False
    if not written:
        report.already_suppressed += 1
    elif finding.action == "unsubscribe":
        report.unsubscribes += 1
    elif finding.action == "hard_bounce":
        report.hard_bounces += 1
    else:
        report.complaints += 1
    return True


def _move(entry: Path, cur: Path, flag: str) -> None:
    """new/NAME -> cur/NAME:2,FLAG (the maildir way to say "seen" or "flagged")."""
    entry.rename(cur / f"{entry.name.split(':2,', 1)[0]}:2,{flag}")


# ---------------------------------------------------------------------------- the DAG
def build_mailbox_dag():
    """Every 10 minutes, read the maildir LIFECYCLE_MAILDIR names (read in the task, not here)."""
    from airflow.sdk import dag, task
    from pendulum import datetime as pendulum_datetime

    @dag(dag_id=MAILBOX_DAG_ID, description="Unsubscribes, bounces and complaints that arrive by mail",
         schedule=timedelta(minutes=10), start_date=pendulum_datetime(2026, 1, 1, tz="UTC"), catchup=False,
         max_active_runs=1, tags=["lifecycle", "mailbox"])
    def mailbox():
        @task(retries=2, retry_delay=timedelta(minutes=1))
        def read_mailbox() -> dict:
            report = read_maildir(os.environ[MAILDIR_ENV], task_engine())
            return {"unsubscribes": report.unsubscribes, "hard_bounces": report.hard_bounces,
                    "complaints": report.complaints, "already_suppressed": report.already_suppressed,
                    "ignored": report.ignored, "unusable": report.unusable}

        read_mailbox()

    return mailbox()
