"""The return mailbox (issue 10 item 12): mail-client unsubscribes (the List-Unsubscribe mailto),
DSNs (RFC 3464) and ARF complaints (RFC 5965) read from a real maildir into real suppressions.

Samples are built with the email package in the shapes MTAs and feedback loops send (multipart/
report with a message/delivery-status or message/feedback-report part and the returned message),
written as files into new/, and parsed back from bytes by lifecycle.mailbox.
"""

from __future__ import annotations

import os
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from itertools import count
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle.channels.email import message_id_for
from lifecycle.config import SHOP
from lifecycle.links import links_for, unsubscribe_token
from lifecycle.mailbox import MAILBOX_DAG_ID, MAILDIR_ENV, read_maildir

DOMAIN = SHOP["from_email"].split("@")[-1]
_names = count()


@pytest.fixture()
def maildir(tmp_path) -> Path:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    return tmp_path


@pytest.fixture()
def shop(shop_db):
    engine = shop_db[0]
    reset_lifecycle(engine)
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT customer_id FROM shop.customers ORDER BY customer_id LIMIT 5")).scalars()
        yield engine, list(ids)


def deliver(maildir: Path, msg: Message) -> str:
    """Drop a message into new/ as an MTA's local delivery does (unique name, no info suffix)."""
    name = f"1765000000.M{next(_names)}P{os.getpid()}.mx"
    (maildir / "new" / name).write_bytes(msg.as_bytes())
    return name


def suppressions(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT customer_id, channel, reason, source FROM lifecycle.suppressions "
            "WHERE lifted_at IS NULL ORDER BY customer_id, channel"))]


def sent_email(engine, customer_id: int, key: str, kind: str = "transactional") -> str:
    """A sent lifecycle.messages row; returns the Message-ID its email carried."""
    with engine.begin() as conn:
        enrollment = conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
            "enrolled_run_id) VALUES ('order_notifications', :key, :c, now(), now(), 'r1') RETURNING enrollment_id"),
            {"key": key, "c": customer_id}).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO lifecycle.messages (idempotency_key, journey, enrollment_id, customer_id, step, channel, "
            "kind, status, due_at, planned_for, planned_run_id, sent_at) VALUES (:ik, 'order_notifications', :e, "
            ":c, 'notice', 'email', :kind, 'sent', now(), now(), 'r1', now())"),
            {"ik": f"order_notifications:{key}:notice:email", "e": enrollment, "c": customer_id, "kind": kind})
    return message_id_for(f"order_notifications:{key}:notice:email")


def original(message_id: str, list_unsubscribe: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{SHOP['name']} <{SHOP['from_email']}>"
    msg["To"] = "customer@example.net"
    msg["Subject"] = "Your order has shipped"
    msg["Message-ID"] = message_id
    if list_unsubscribe:
        msg["List-Unsubscribe"] = list_unsubscribe
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content("Your parcel is on its way.")
    return msg


def header_block(**fields: str) -> Message:
    block = Message()
    for name, value in fields.items():
        block[name.replace("_", "-")] = value
    return block


def dsn(returned: EmailMessage, action: str = "failed", status: str = "5.1.1",
        diagnostic: str = "smtp; 550 5.1.1 <customer@example.net>: Recipient address rejected: User unknown",
        headers_only: bool = True) -> MIMEMultipart:
    """A Postfix-style bounce: explanation, delivery status, the returned message's headers."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.net (Mail Delivery System)"
    report["To"] = f"bounces@{DOMAIN}"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Auto-Submitted"] = "auto-replied"
    report.attach(MIMEText("This is the mail system at host mx.example.net.\n\nI'm sorry to have to inform you "
                           "that your message could not be delivered to one or more recipients.\n"))
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([
        header_block(Reporting_MTA="dns; mx.example.net", Arrival_Date="Sun, 6 Dec 2026 10:00:00 +0000"),
        header_block(Final_Recipient="rfc822; customer@example.net", Original_Recipient="rfc822;customer@example.net",
                     Action=action, Status=status, Remote_MTA="dns; mail.example.net", Diagnostic_Code=diagnostic),
    ])
    report.attach(status_part)
    if headers_only:
        head = "".join(f"{k}: {v}\n" for k, v in returned.items())
        report.attach(MIMEText(head, "rfc822-headers"))
    else:
        report.attach(MIMEMessage(returned))
    return report


def arf(returned: EmailMessage, feedback_type: str = "abuse") -> MIMEMultipart:
    """A feedback-loop complaint (RFC 5965): explanation, the feedback report, the message."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "fbl@mailbox-provider.example"
    report["To"] = f"abuse@{DOMAIN}"
    report["Subject"] = "FW: Your order has shipped"
    report.attach(MIMEText("This is an email abuse report for an email message received from IP 192.0.2.1.\n"))
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload([header_block(Feedback_Type=feedback_type, User_Agent="SomeGenerator/1.0", Version="1",
                                       Original_Mail_From=f"<bounces@{DOMAIN}>", Arrival_Date="Sun, 6 Dec 2026 "
                                       "10:00:00 +0000", Reported_Domain=DOMAIN, Source_IP="192.0.2.1")])
    report.attach(feedback)
    report.attach(MIMEMessage(returned))
    return report


def mailto_unsubscribe(customer_id: int, channel: str = "email") -> EmailMessage:
    """What a mail client sends for the List-Unsubscribe mailto: To and Subject from the URL."""
    url = urlsplit(links_for(customer_id, channel)["unsubscribe_mailto"])
    msg = EmailMessage()
    msg["From"] = "customer@example.net"
    msg["To"] = url.path
    msg["Subject"] = parse_qs(url.query)["subject"][0]
    msg.set_content("This message was automatically generated by Gmail.")
    return msg


def files(maildir: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (maildir / sub).iterdir())


def test_mail_client_unsubscribe_is_recorded_and_the_mail_marked_seen(shop, maildir):
    engine, (alice, bob, *_) = shop
    name = deliver(maildir, mailto_unsubscribe(alice))
    sms = deliver(maildir, mailto_unsubscribe(bob, "sms"))

    report = read_maildir(maildir, engine)

    assert suppressions(engine) == [(alice, "email", "unsubscribe", "mailto"), (bob, "sms", "unsubscribe", "mailto")]
    assert (report.unsubscribes, report.unusable) == (2, [])
    assert files(maildir, "new") == []
    assert files(maildir, "cur") == sorted([f"{name}:2,S", f"{sms}:2,S"])


def test_hard_bounce_dsn_suppresses_the_customer_the_returned_message_went_to(shop, maildir):
    engine, (alice, *_) = shop
    message_id = sent_email(engine, alice, "order-1001")  # transactional: no unsubscribe token in it
    deliver(maildir, dsn(original(message_id)))

    report = read_maildir(maildir, engine)

    assert suppressions(engine) == [(alice, "email", "hard_bounce", "mailbox:dsn")]
    assert report.hard_bounces == 1


def test_hard_bounce_read_from_the_returned_unsubscribe_token_and_full_message(shop, maildir):
    engine, (_, bob, *_) = shop
    token_link = f"<{SHOP['base_url']}/unsubscribe?t={unsubscribe_token(bob, 'email')}>"
    deliver(maildir, dsn(original("<not-ours@elsewhere.example>", token_link), status="5.2.1", headers_only=False))
    read_maildir(maildir, engine)
    assert suppressions(engine) == [(bob, "email", "hard_bounce", "mailbox:dsn")]


@pytest.mark.parametrize(("action", "status"), [("delayed", "4.2.2"), ("failed", "5.7.1"), ("failed", "5.2.2"),
                                                ("failed", "4.4.7")])
def test_delays_and_refusals_not_about_the_address_suppress_nothing(shop, maildir, action, status):
    engine, (alice, *_) = shop
    name = deliver(maildir, dsn(original(sent_email(engine, alice, "order-1002")), action, status,
                                diagnostic=f"smtp; 550 {status} message refused"))
    report = read_maildir(maildir, engine)
    assert suppressions(engine) == []
    assert (report.ignored, report.unusable) == (1, [])
    assert files(maildir, "cur") == [f"{name}:2,S"]  # understood: not left for a person


def test_arf_abuse_complaint_suppresses_and_outranks_an_unsubscribe(shop, maildir):
    engine, (alice, bob, *_) = shop
    deliver(maildir, mailto_unsubscribe(alice))
    read_maildir(maildir, engine)
    token_link = f"<{SHOP['base_url']}/unsubscribe?t={unsubscribe_token(alice, 'email')}>"
    deliver(maildir, arf(original(message_id_for("cart_abandonment:x:reminder_1:email"), token_link)))
    deliver(maildir, arf(original(sent_email(engine, bob, "order-1003", kind="marketing"))))

    report = read_maildir(maildir, engine)

    # a complaint blocks transactional mail too: it replaces the marketing-only unsubscribe
    assert suppressions(engine) == [(alice, "email", "complaint", "mailbox:arf"),
                                    (bob, "email", "complaint", "mailbox:arf")]
    assert report.complaints == 2


def test_arf_other_than_abuse_is_ignored(shop, maildir):
    engine, (alice, *_) = shop
    deliver(maildir, arf(original(sent_email(engine, alice, "order-1004")), feedback_type="not-spam"))
    assert read_maildir(maildir, engine).ignored == 1
    assert suppressions(engine) == []


def test_unusable_mail_is_flagged_for_a_person_and_the_rest_is_handled(shop, maildir, caplog):
    engine, (alice, bob, *_) = shop
    chatter = EmailMessage()
    chatter["Subject"] = "Where is my order?"
    chatter.set_content("Hello, I ordered last week...")
    forged = mailto_unsubscribe(alice)
    forged.replace_header("Subject", "unsubscribe " + "A" * 100)
    unknown_bounce = dsn(original(message_id_for("order_notifications:never-sent:notice:email")))
    foreign_bounce = dsn(original("<abc@other-sender.example>"))
    names = [deliver(maildir, m) for m in (chatter, forged, unknown_bounce, foreign_bounce)]
    (maildir / "new" / "garbage").write_bytes(b"\x00\xff not a mail at all")
    good = deliver(maildir, mailto_unsubscribe(bob))

    report = read_maildir(maildir, engine)

    assert suppressions(engine) == [(bob, "email", "unsubscribe", "mailto")]
    assert files(maildir, "new") == []
    assert sorted(files(maildir, "cur")) == sorted([f"{n}:2,F" for n in [*names, "garbage"]] + [f"{good}:2,S"])
    why = dict(line.split(": ", 1) for line in report.unusable)
    assert "neither an unsubscribe request" in why[names[0]]
    assert "invalid or cut-off token" in why[names[1]]
    assert "not in lifecycle.messages" in why[names[2]]
    assert "not one of ours" in why[names[3]]
    assert all(name in caplog.text for name in names)


def test_a_second_read_finds_nothing_new(shop, maildir):
    engine, (alice, *_) = shop
    deliver(maildir, mailto_unsubscribe(alice))
    assert read_maildir(maildir, engine).unsubscribes == 1
    again = read_maildir(maildir, engine)
    assert (again.unsubscribes, again.already_suppressed, again.unusable) == (0, 0, [])


def test_not_a_maildir_says_what_to_set(tmp_path, shop):
    with pytest.raises(FileNotFoundError, match=f"not a maildir.*{MAILDIR_ENV}"):
        read_maildir(tmp_path / "nowhere", shop[0])


def test_the_mailbox_dag_exists_only_where_a_maildir_is_configured(monkeypatch, maildir):
    from lifecycle.dag_factory import build_dags

    monkeypatch.delenv(MAILDIR_ENV, raising=False)
    assert MAILBOX_DAG_ID not in build_dags()
    monkeypatch.setenv(MAILDIR_ENV, str(maildir))
    dag = build_dags()[MAILBOX_DAG_ID]
    assert [t.task_id for t in dag.tasks] == ["read_mailbox"]


@pytest.mark.slow  # runs a DAG through Airflow (dag.test)
def test_airflow_runs_the_mailbox_dag(shop, maildir, airflow_db, monkeypatch):
    from lifecycle.dag_factory import build_dags
    from lifecycle.warehouse import airflow_conn_json

    engine, (alice, bob, *_) = shop
    monkeypatch.setenv(MAILDIR_ENV, str(maildir))
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE",
                       airflow_conn_json(engine.url.render_as_string(hide_password=False)))
    deliver(maildir, mailto_unsubscribe(alice))
    deliver(maildir, dsn(original(sent_email(engine, bob, "order-2001"))))

    assert build_dags()[MAILBOX_DAG_ID].test().state == "success"

    assert suppressions(engine) == [(alice, "email", "unsubscribe", "mailto"), (bob, "email", "hard_bounce",
                                                                                 "mailbox:dsn")]
    assert files(maildir, "new") == []
