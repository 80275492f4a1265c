"""The email channel on the wire: the raw bytes a mailbox provider receives over SMTP."""

from __future__ import annotations

import email
import re
from email import policy

from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.channels.email import EmailChannel, OutboundEmail, message_id_for
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
