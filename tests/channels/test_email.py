"""The email channel on the wire: the raw bytes a mailbox provider receives over SMTP."""

from __future__ import annotations

import email
import re
from email import policy

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
