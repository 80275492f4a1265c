"""The email channel on the wire: the raw bytes a mailbox provider receives over SMTP."""

from __future__ import annotations

import email
import re
from email import policy

from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.channels.email import _BREAKS, EmailChannel, OutboundEmail, message_id_for
from lifecycle.links import links_for, verify_unsubscribe_token


def test_one_click_unsubscribe_headers_arrive_unencoded(smtp_server):
    links = links_for(123456, "email")
    headers = {
        "List-Unsubscribe": f"<{links['unsubscribe']}>, <{links['unsubscribe_mailto']}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    message = OutboundEmail(to="someone@example.com", subject="Still thinking it over?", text="Hi\n",
                            html="<p>Hi</p>", message_id=message_id_for("j:1:s:email"), headers=headers)
    with EmailChannel("127.0.0.1", smtp_server.port) as channel:
        outcome = channel.deliver(message)
    assert outcome.status == "sent"

    raw = smtp_server.messages[0].data
    header = re.search(rb"^List-Unsubscribe: ([^\r\n]*)\r\n", raw, re.M).group(1).decode()
    assert "=?" not in header  # RFC 8058: plain URLs in angle brackets, no RFC 2047 encoding
    assert len(header) > 78 and header == headers["List-Unsubscribe"]
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    https = re.match(r"<(https://[^>]+)>", header).group(1)
    assert verify_unsubscribe_token(https.split("t=", 1)[1]) == ("123456", "email")  # ids travel as strings
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Message-ID"] == message.message_id and parsed["Date"]
    assert parsed.get_body(("plain",)).get_content().strip() == "Hi"


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=12), place=st.sampled_from(["to", "subject", "header"]))
def test_header_problem_predicts_exactly_what_compose_refuses(name, place):
    """HEADER_BREAKS is the set email.policy refuses in a header, checked against the real
    composer over arbitrary text: header_problem() says so iff compose() raises (bodies take anything).
    The text sits inside the value: a break at its very end is stripped by the policy, not refused."""
    from lifecycle.channels.email import OutboundEmail, compose, header_problem

    to = f"a{name}b@example.com" if place == "to" else "a@example.com"
    message = OutboundEmail(to=to, subject=f"Hi {name}!" if place == "subject" else "Hi", text=name, html=name,
                            message_id="<1@x>", headers={"X-Name": f"v{name}w"} if place == "header" else {})
    try:
        compose(message, "shop@example.com", "Shop")
        refused = False
    except ValueError:
        refused = True
    assert refused == (header_problem(message) is not None)


def _parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=policy.default)


@settings(max_examples=40, deadline=None)
@given(subject=st.text(min_size=1, max_size=120).filter(lambda s: s.strip() and not _BREAKS.search(s)),
       text=st.text(max_size=300), html=st.text(max_size=300), long_line=st.booleans(),
       name=st.sampled_from(["Northwind Goods", "Café Ünïcode", 'Shop "Quoted", Ltd']))
def test_hand_built_wire_bytes_read_back_as_the_email_package_writes_them(subject, text, html, long_line, name):
    """compose() builds the wire bytes by hand (about 20x faster than EmailMessage with
    policy.SMTP); a mail client parsing them sees what it sees in the email package's message:
    the same headers, the same text and HTML (long lines included), every line within 998 bytes."""
    from lifecycle.channels.email import OutboundEmail, compose, compose_with_email_package

    if long_line:
        html = html + "<p>" + "x" * 1500 + "é</p>"
    message = OutboundEmail(to="ana@example.com", subject=subject, text=text, html=html,
                            message_id="<abc@lifecycle.shop.example.com>",
                            headers={"X-Lifecycle-Journey": "j", "List-Unsubscribe": "<https://x/u?t=" + "a" * 200 + ">"})
    ours, reference = (_parsed(c(message, "hello@shop.example.com", name))
                       for c in (compose, compose_with_email_package))
    for header in ("From", "To", "Subject", "Message-ID", "X-Lifecycle-Journey", "List-Unsubscribe", "MIME-Version"):
        assert ours[header] == reference[header], header
    assert ours.get_content_type() == reference.get_content_type() == "multipart/alternative"
    for kind in ("plain", "html"):
        assert ours.get_body((kind,)).get_content() == reference.get_body((kind,)).get_content()
    raw = compose(message, "hello@shop.example.com", name)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998 and b"\n" not in raw.replace(b"\r\n", b"")


def test_a_window_is_pipelined_and_every_recipient_gets_its_own_outcome(smtp_server):
    """RFC 2920: the server offers PIPELINING, MAIL/RCPT/DATA go in one write; a refused
    recipient, a 451 at the end of DATA and a header that cannot be composed each get their
    own outcome, and the messages around them go out."""
    smtp_server.reject["gone@example.com"] = "550 5.1.1 no such user"
    smtp_server.fail_nth[2] = "451 4.3.0 try again later"  # the 2nd DATA the server sees
    to = ["a@example.com", "b@example.com", "gone@example.com", "c@example.com", "d@example.com", "e@example.com"]
    messages = [OutboundEmail(to=t, subject="Line\u2028break" if t == "d@example.com" else f"Hi {t}",
                              text=".starts with a dot\n", html="<p>x</p>", message_id=f"<{i}@x>")
                for i, t in enumerate(to)]
    with EmailChannel("127.0.0.1", smtp_server.port) as channel:
        assert channel._pipelining
        outcomes = channel.deliver_many(messages)
    assert [o.status for o in outcomes] == ["sent", "retry", "failed", "sent", "failed", "sent"]
    assert outcomes[2].suppress == "hard_bounce" and "550 5.1.1" in outcomes[2].reason
    assert outcomes[4].reason == "cannot compose the email: Subject contains U+2028, a line break email headers cannot carry"
    assert received(smtp_server) == ["a@example.com", "c@example.com", "e@example.com"]
    assert smtp_server.messages[0].message().get_body(("plain",)).get_content().rstrip() == ".starts with a dot"


def test_without_pipelining_each_command_waits_for_its_reply(smtp_server):
    async def plain_ehlo(server, session, envelope, hostname, responses):  # a server that does not offer it
        session.host_name = hostname
        return responses

    smtp_server.handler.handle_EHLO = plain_ehlo
    smtp_server.reject["gone@example.com"] = "550 5.1.1 no such user"
    messages = [OutboundEmail(to=t, subject="Hi", text="x\n", html="<p>x</p>", message_id=f"<{t}>")
                for t in ("a@example.com", "gone@example.com", "b@example.com")]
    with EmailChannel("127.0.0.1", smtp_server.port) as channel:
        assert not channel._pipelining
        outcomes = channel.deliver_many(messages)
    assert [o.status for o in outcomes] == ["sent", "failed", "sent"]
    assert received(smtp_server) == ["a@example.com", "b@example.com"]


def test_a_sender_refused_mid_window_leaves_the_rest_unattempted(smtp_server):
    """MAIL FROM refused: our account, not the message. That message and the rest of the window
    come back as ChannelUnavailable (the send task releases them to planned), not as failures."""
    from lifecycle.channels.base import ChannelUnavailable

    messages = [OutboundEmail(to=f"{n}@example.com", subject="Hi", text="x\n", html="<p>x</p>", message_id=f"<{n}@x>")
                for n in "abc"]
    with EmailChannel("127.0.0.1", smtp_server.port) as channel:
        first = channel.deliver_many(messages[:1])
        smtp_server.handler.mail_reply = "553 5.7.1 sender not allowed"
        rest = channel.deliver_many(messages[1:])
    assert first[0].status == "sent"
    assert all(isinstance(r, ChannelUnavailable) for r in rest) and "refused our sender" in str(rest[0])
    assert received(smtp_server) == ["a@example.com"]


def received(server) -> list[str]:
    return [rcpt for m in server.messages for rcpt in m.rcpt_tos]


def test_a_pipelined_window_costs_one_round_trip_per_message(smtp_server):
    """A message's content and the next message's MAIL, RCPT and DATA are written without a reply
    read in between; then the content's reply and the envelope's three. One wait per message,
    and no content before its 354."""
    messages = [OutboundEmail(to=f"{n}@example.com", subject="Hi", text="x\n", html="<p>x</p>", message_id=f"<{n}@x>")
                for n in "abcd"]
    events: list[str] = []
    with EmailChannel("127.0.0.1", smtp_server.port) as channel:
        smtp = channel._smtp
        send, getreply = smtp.send, smtp.getreply

        def recorded_send(data):
            events.append(data.decode().split("\r\n")[1].removeprefix("RCPT TO:") if data.startswith(b"MAIL FROM")
                          else "content")
            return send(data)

        def recorded_reply():
            code, text = getreply()
            events.append(str(code))
            return code, text

        smtp.send, smtp.getreply = recorded_send, recorded_reply
        outcomes = channel.deliver_many(messages)
        smtp.send, smtp.getreply = send, getreply
    assert [o.status for o in outcomes] == ["sent"] * 4
    envelope = ["250", "250", "354"]
    assert events == ["<a@example.com>", *envelope,
                      "content", "<b@example.com>", "250", *envelope,
                      "content", "<c@example.com>", "250", *envelope,
                      "content", "<d@example.com>", "250", *envelope,
                      "content", "250"]
    assert received(smtp_server) == [f"{n}@example.com" for n in "abcd"]


def test_a_connection_lost_after_a_pipelined_content_leaves_that_one_unknown_and_sends_the_next_once(smtp_server):
    """The server takes the 2nd message and drops the connection before answering: that message
    is `unknown` (never sent again), the 3rd, whose envelope followed its content but never its
    own content, goes out once on a new connection."""
    accept = smtp_server.handler.handle_DATA

    async def drop_after_second(server, session, envelope):
        reply = await accept(server, session, envelope)
        if smtp_server.data_attempts == 2:
            server.transport.close()
        return reply

    smtp_server.handler.handle_DATA = drop_after_second
    messages = [OutboundEmail(to=f"{n}@example.com", subject="Hi", text="x\n", html="<p>x</p>", message_id=f"<{n}@x>")
                for n in "abc"]
    with EmailChannel("127.0.0.1", smtp_server.port) as channel:
        outcomes = channel.deliver_many(messages)
    assert [o.status for o in outcomes] == ["sent", "unknown", "sent"]
    assert outcomes[1].reason.startswith("connection lost during DATA")
    assert received(smtp_server) == ["a@example.com", "b@example.com", "c@example.com"]
