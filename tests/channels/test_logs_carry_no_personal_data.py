"""No email address, phone number or token in any log line, on every channel's failure paths.

Each channel talks to its real local server (aiosmtpd, the Twilio-, web-push- and Graph-shaped
HTTP servers) while every logger is captured at DEBUG; then the captured lines are searched for
the addresses, numbers and tokens the test used. Lines logged by the test servers themselves are
left out: in production they are the provider's, not ours.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lifecycle.audiences import AudienceAPIError, MetaAudienceClient, hash_email
from lifecycle.channels.base import ChannelUnavailable
from lifecycle.channels.email import EmailChannel, OutboundEmail
from lifecycle.channels.push import OutboundPush, PushChannel
from lifecycle.channels.sms import OutboundSMS, SMSChannel
from lifecycle_demo.sinks.meta_server import MetaAudienceServer
from lifecycle_demo.sinks.push_server import PushServer
from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer
from lifecycle_demo.sinks.twilio_server import TwilioServer, twilio_error

SERVER_LOGGERS = ("mail.log", "lifecycle_demo.sinks")  # the local provider servers log what they receive
PHONE = "+4915123456789"
EMAIL = "ann.private@example.org"
BOUNCING = "gone.private@example.org"


def our_lines(caplog) -> str:
    return "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records if not r.name.startswith(SERVER_LOGGERS))


def assert_absent(text: str, secrets: list[str]) -> None:
    leaked = [s for s in secrets if s and s.lower() in text.lower()]
    assert not leaked, f"{leaked} found in the logs:\n{text}"


@pytest.fixture(autouse=True)
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def test_email_failure_paths(caplog):
    message = OutboundEmail(to=EMAIL, subject="Hi Ann", text="t", html="<p>h</p>", message_id="<1@x>")
    with RecordingSMTPServer(reject={BOUNCING: "550 5.1.1 no such user"}, fail_nth={1: "451 4.3.0 later"},
                             credentials=("shop", "smtp-secret-password")) as server:
        with EmailChannel("127.0.0.1", server.port, login="shop", password="smtp-secret-password") as channel:
            assert channel.deliver(message).status == "retry"  # DATA 451
            assert channel.deliver(OutboundEmail(**{**message.__dict__, "to": BOUNCING})).status == "failed"
            server.handler.mail_reply = "553 5.7.1 sender refused"
            with pytest.raises(ChannelUnavailable):
                channel.deliver(message)
        with pytest.raises(ChannelUnavailable):
            EmailChannel("127.0.0.1", server.port, login="shop", password="wrong-secret-password").__enter__()
    assert_absent(our_lines(caplog), [EMAIL, BOUNCING, "smtp-secret-password", "wrong-secret-password"])


def test_sms_failure_paths_including_the_lookup_after_an_uncertain_5xx(caplog):
    with TwilioServer() as twilio:
        channel = SMSChannel(twilio.base_url, twilio.account_sid, twilio.auth_token, from_number="+15005550006",
                             timeout=2.0, backoff=0.01, max_wait=1.0, settle=0.01)
        with channel:
            twilio.fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
            assert channel.deliver(OutboundSMS(PHONE, "Your code", key="j:1:s:sms")).status == "unknown"
            twilio.accept_then_fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
            assert channel.deliver(OutboundSMS(PHONE, "Your code", key="j:2:s:sms")).status == "sent"
            twilio.fail_next.append((400, {}, twilio_error(21211, f"The 'To' number {PHONE} is not valid", 400)))
            assert channel.deliver(OutboundSMS(PHONE, "Your code", key="j:3:s:sms")).status == "failed"
        auth_token = twilio.auth_token
    assert "looking the message up" in our_lines(caplog)  # the lookup ran
    assert_absent(our_lines(caplog), [PHONE, quote(PHONE), PHONE.lstrip("+"), auth_token, "Your code"])


def test_push_failure_paths(caplog):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    payload = {"title": "T", "body": "private body text", "url": "https://shop.example.com/c"}
    with PushServer() as push, PushChannel(pem, "mailto:ops@shop.example.com", timeout=5) as channel:
        live = push.register("live-subscription-token-0123456789")
        gone = dict(live, endpoint=push.endpoint("gone-subscription-token-0123456789"))

        def message(sub):
            return OutboundPush(sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"], payload, key="j:1:s:push")

        push.fail_next.append(500)
        assert channel.deliver(message(live)).status == "retry"
        assert channel.deliver(message(gone)).status == "failed"
        assert channel.deliver(message(live)).status == "sent"
    assert_absent(our_lines(caplog), ["live-subscription-token-0123456789", "gone-subscription-token-0123456789",
                                      live["keys"]["auth"], "private body text"])


def test_audience_failure_paths(caplog):
    token = "EAAmeta-secret-access-token-0123456789"
    with MetaAudienceServer(access_token=token) as meta:
        meta.fail_next(status=503, times=10)
        with MetaAudienceClient(meta.base_url, "v21.0", token, 10.0, backoff=0.01, max_retries=2) as client, \
                pytest.raises(AudienceAPIError):
            client.add("23850000000000001", [[hash_email(EMAIL), ""]])
        with MetaAudienceClient(meta.base_url, "v21.0", "wrong-" + token, 10.0, backoff=0.01) as client, \
                pytest.raises(AudienceAPIError):
            client.remove("23850000000000001", [[hash_email(EMAIL), ""]])
    assert_absent(our_lines(caplog), [token, EMAIL, hash_email(EMAIL)])
