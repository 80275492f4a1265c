"""The SMS channel against a real local HTTP server speaking Twilio's Messages API (no mocks)."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import links
from lifecycle.channels.base import ChannelUnavailable, Outcome
from lifecycle.channels.sms import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    OutboundSMS,
    SMSChannel,
    normalise_mobile,
    normalise_number,
    send_window,
    sms_segments,
)
from lifecycle_demo.sinks.twilio_server import TwilioServer, twilio_error

from .network import ForwardProxy, TLSFront, self_signed

SENDER = "+15005550006"
TO = "+4915123456789"  # a German mobile
BODY = "Your cart misses you: 10% off until Sunday. Reply STOP to opt out."


@pytest.fixture()
def twilio():
    with TwilioServer() as server:
        yield server


def channel_for(server: TwilioServer, **kw) -> SMSChannel:
    options = {"from_number": SENDER, "timeout": 2.0, "backoff": 0.01, "max_wait": 2.0, "settle": 0.05} | kw
    return SMSChannel(server.base_url, server.account_sid, options.pop("auth_token", server.auth_token), **options)


def sms(key: str = "cart_abandonment:c-1:reminder_1:sms", to: str = TO, body: str = BODY) -> OutboundSMS:
    return OutboundSMS(to=to, body=body, key=key)


def lookups(server: TwilioServer):
    return [r for r in server.requests if r.method == "GET"]


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("0151 23456789", "DE", "+4915123456789"),
        ("+49 151 23456789", None, "+4915123456789"),
        ("+49 (0)151-234 56789", "FR", "+4915123456789"),  # the + wins over the customer's country
        ("07911 123456", "GB", "+447911123456"),
        ("0044 7911 123456", "gb", "+447911123456"),
        ("+44 7911 123456", "GB", "+447911123456"),
        ("07911 123456", "UK", "+447911123456"),  # 'UK' is not ISO 3166, but common
        ("(201) 555-0123", "US", "+12015550123"),  # FIXED_LINE_OR_MOBILE: fine
        ("+1 201 555 0123", None, "+12015550123"),
        ("11 91234-5678", "BR", "+5511912345678"),
        ("+55 11 91234-5678", None, "+5511912345678"),
    ],
)
def test_normalise_valid_mobile_numbers(raw, country, expected):
    assert normalise_number(raw, country) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "country", "problem"),
    [
        (None, "DE", "missing phone"),
        ("", "DE", "missing phone"),
        ("   ", None, "missing phone"),
        ("030 1234567", "DE", "not a mobile number"),  # Berlin landline
        ("+49 30 1234567", "US", "not a mobile number"),
        ("020 7946 0018", "GB", "not a mobile number"),  # London landline
        ("11 3456-7890", "BR", "not a mobile number"),  # São Paulo landline
        ("+1 800 555 0199", None, "not a mobile number"),  # toll free
        ("call me maybe", "DE", "invalid phone number"),
        ("12345", "DE", "invalid phone number"),
        ("0151 23456789", None, "invalid phone number"),  # national format, no country to read it with
        ("+49 151", None, "invalid phone number"),
    ],
)
def test_normalise_rejects(raw, country, problem):
    assert normalise_number(raw, country) == (None, problem)


# ----------------------------------------------------------------------------- segments
def test_normalise_agrees_with_libphonenumbers_validity_in_every_region():
    """One number_type pass stands for is_valid_number + number_type: the same verdict for each
    region's example numbers of every type, as written locally and internationally, with a digit
    too few or too many; the region given with a number is the one its E.164 form parses to."""
    mobile = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE,
                     phonenumbers.PhoneNumberType.TOLL_FREE, phonenumbers.PhoneNumberType.VOIP):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
            for raw, country in ((national, region), (e164, None), (e164[:-1], None), (e164 + "5", None)):
                parsed = phonenumbers.parse(raw, country)
                if not phonenumbers.is_valid_number(parsed):
                    expected = (None, None, "invalid phone number")
                elif phonenumbers.number_type(parsed) not in mobile:
                    expected = (None, None, "not a mobile number")
                else:
                    number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
                    expected = (number, phonenumbers.region_code_for_number(phonenumbers.parse(number)), None)
                assert normalise_mobile(raw, country) == expected, (raw, country)
                assert normalise_number(raw, country) == (expected[0], expected[2])
                checked += 1
    assert checked > 1000


def test_gsm7_single_and_concatenated():
    assert sms_segments("a" * 160) == {"encoding": "GSM-7", "length": 160, "segments": 1}
    assert sms_segments("a" * 161) == {"encoding": "GSM-7", "length": 161, "segments": 2}
    assert sms_segments("a" * 306)["segments"] == 2  # 153 per part
    assert sms_segments("a" * 307)["segments"] == 3
    assert sms_segments("Grüße aus Köln, señor! £5 @ 10:00 ¿sì?")["encoding"] == "GSM-7"
    assert sms_segments("")["segments"] == 1


def test_gsm7_extension_characters_count_two():
    assert sms_segments("€") == {"encoding": "GSM-7", "length": 2, "segments": 1}
    assert sms_segments("[x]{y}~^|\\") == {"encoding": "GSM-7", "length": 18, "segments": 1}
    assert sms_segments("a" * 158 + "€") == {"encoding": "GSM-7", "length": 160, "segments": 1}
    assert sms_segments("a" * 159 + "€") == {"encoding": "GSM-7", "length": 161, "segments": 2}
    assert sms_segments("[" * 80)["segments"] == 1
    # An escape pair is never split between two parts: 152 + '€' does not fit in part one.
    assert sms_segments("a" * 152 + "€" + "a" * 152) == {"encoding": "GSM-7", "length": 306, "segments": 3}


def _segments_char_by_char(body: str) -> dict:
    """The definition, one character at a time (what sms_segments computes from character sets)."""
    gsm = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in body)
    costs = [2 if (ch in GSM7_EXTENSION if gsm else ord(ch) > 0xFFFF) else 1 for ch in body]
    single, multi = (160, 153) if gsm else (70, 67)
    parts, used = 1, 0
    if sum(costs) > single:
        for cost in costs:
            if used + cost > multi:
                parts, used = parts + 1, 0
            used += cost
    return {"encoding": "GSM-7" if gsm else "UCS-2", "length": sum(costs), "segments": parts}


@given(st.text(alphabet=st.sampled_from(sorted(GSM7_BASIC) + sorted(GSM7_EXTENSION) * 4 + ["é", "Ж", "😀", "“"]),
               max_size=400))
def test_segments_match_the_character_by_character_count(body):
    assert sms_segments(body) == _segments_char_by_char(body)
    gsm_only = "".join(ch for ch in body if ch in GSM7_BASIC or ch in GSM7_EXTENSION)
    assert sms_segments(gsm_only) == _segments_char_by_char(gsm_only)


def test_ucs2_counts_utf16_code_units():
    assert sms_segments("Hi 😀") == {"encoding": "UCS-2", "length": 5, "segments": 1}  # emoji: 2 units
    assert sms_segments("ç")["encoding"] == "UCS-2"  # only capital Ç is in GSM 03.38
    assert sms_segments("Привет")["encoding"] == "UCS-2"
    assert sms_segments("a" * 70 + "ê") == {"encoding": "UCS-2", "length": 71, "segments": 2}
    assert sms_segments("é" * 70 + "ê")["length"] == 71
    assert sms_segments("a" * 68 + "😀") == {"encoding": "UCS-2", "length": 70, "segments": 1}
    assert sms_segments("a" * 69 + "😀") == {"encoding": "UCS-2", "length": 71, "segments": 2}
    assert sms_segments("😀" * 67)["segments"] == 3  # 134 units, a surrogate pair never split: 33+33+1
    assert sms_segments("ü" * 134 + "ç")["segments"] == 3  # 135 units: 67 + 67 + 1


# ----------------------------------------------------------------------------- quiet hours
def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_same_instant_tokyo_open_los_angeles_closed():
    now = utc(2026, 11, 20, 6, 0)  # Tokyo 15:00 on the 20th; Los Angeles 22:00 on the 19th
    assert send_window(now, "Asia/Tokyo") == (True, now)
    # Los Angeles: closed until 08:00 PST on the 20th (across midnight) = 16:00 UTC
    assert send_window(now, "America/Los_Angeles") == (False, utc(2026, 11, 20, 16, 0))


def test_same_instant_tokyo_closed_los_angeles_open():
    now = utc(2026, 11, 20, 18, 30)  # Tokyo 03:30 on the 21st; Los Angeles 10:30 on the 20th
    assert send_window(now, "America/Los_Angeles") == (True, now)
    assert send_window(now, "Asia/Tokyo") == (False, utc(2026, 11, 20, 23, 0))  # 08:00 JST on the 21st


def test_window_edges():
    # 08:00 local opens, 21:00 local closes (Tokyo is UTC+9 all year).
    assert send_window(utc(2026, 6, 1, 23, 0), "Asia/Tokyo")[0] is True  # 08:00
    assert send_window(utc(2026, 6, 1, 22, 59, 59), "Asia/Tokyo") == (False, utc(2026, 6, 1, 23, 0))
    assert send_window(utc(2026, 6, 1, 11, 59, 59), "Asia/Tokyo")[0] is True  # 20:59:59
    assert send_window(utc(2026, 6, 1, 12, 0), "Asia/Tokyo") == (False, utc(2026, 6, 1, 23, 0))  # 21:00
    assert send_window(utc(2026, 6, 1, 12, 0), "Asia/Tokyo", start_hour=9, end_hour=22) == (True, utc(2026, 6, 1, 12))
    with pytest.raises(ValueError):
        send_window(utc(2026, 6, 1), "UTC", start_hour=21, end_hour=8)


def test_next_window_across_dst_changes():
    # US spring forward, Sun 8 Mar 2026 02:00: Sat 22:00 PST -> Sun 08:00 PDT = 15:00 UTC, not 16:00
    assert send_window(utc(2026, 3, 8, 6, 0), "America/Los_Angeles") == (False, utc(2026, 3, 8, 15, 0))
    # US fall back, Sun 1 Nov 2026 02:00: Sat 22:00 PDT -> Sun 08:00 PST = 16:00 UTC
    assert send_window(utc(2026, 11, 1, 5, 0), "America/Los_Angeles") == (False, utc(2026, 11, 1, 16, 0))
    # EU, Sun 29 Mar 2026: Berlin 23:30 CET on the 28th -> 08:00 CEST = 06:00 UTC
    assert send_window(utc(2026, 3, 28, 22, 30), "Europe/Berlin") == (False, utc(2026, 3, 29, 6, 0))
    # a window opening inside the DST gap opens at the first existing minute (03:00 PDT)
    assert send_window(utc(2026, 3, 8, 9, 0), "America/Los_Angeles", start_hour=2, end_hour=3) == (
        False, utc(2026, 3, 8, 10, 0))


def test_unknown_or_missing_timezone_means_utc():
    now = utc(2026, 11, 20, 7, 0)
    assert send_window(now, None) == (False, utc(2026, 11, 20, 8, 0))
    assert send_window(now, "Mars/Olympus_Mons") == (False, utc(2026, 11, 20, 8, 0))
    assert send_window(now, "") == (False, utc(2026, 11, 20, 8, 0))
    assert send_window(datetime(2026, 11, 20, 9, 0), None) == (True, utc(2026, 11, 20, 9, 0))  # naive = UTC


# ----------------------------------------------------------------------------- rendering
def test_links_are_signed_only_for_templates_that_show_them(tmp_path, monkeypatch):
    """An SMS template without `links` makes no unsubscribe or stay token (so it renders even
    without a signing key); one that shows them gets working links, as an email does."""
    from types import SimpleNamespace

    from lifecycle.render import TemplateRenderError, render_sms
    from lifecycle.send import template_context

    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "plain.sms.txt").write_text("Hi {{ customer.first_name }}, your cart is saved.")
    (tmp_path / "j" / "optout.sms.txt").write_text(
        "Hi. Stop: {{ links.unsubscribe }} Stay: {{ links['preferences'] }} ({{ links|length }} links)")
    row = SimpleNamespace(customer_id="C-7", first_name="Ana", last_name="", email=None, locale="en_GB",
                          country="DE", timezone="UTC", context={}, coupon_code=None, channel="sms",
                          journey="j", step="plain", kind="marketing")
    key = os.environ["LIFECYCLE_SIGNING_KEY"]
    monkeypatch.delenv("LIFECYCLE_SIGNING_KEY")
    assert render_sms("j/plain", template_context(row), tmp_path) == "Hi Ana, your cart is saved."
    with pytest.raises(TemplateRenderError, match="LIFECYCLE_SIGNING_KEY is not set"):
        render_sms("j/optout", template_context(row), tmp_path)
    monkeypatch.setenv("LIFECYCLE_SIGNING_KEY", key)
    text = render_sms("j/optout", template_context(row), tmp_path)
    unsubscribe = text.split("unsubscribe?t=", 1)[1].split()[0]
    stay = text.split("preferences?t=", 1)[1].split()[0]
    assert links.verify_unsubscribe_token(unsubscribe) == ("C-7", "sms")
    assert links.verify_stay_token(stay) == ("C-7", "sms")
    assert text.endswith("(3 links)")


# ----------------------------------------------------------------------------- delivery
def test_sent_with_the_exact_request_shape(twilio, caplog):
    caplog.set_level(logging.DEBUG)
    message = sms()
    with channel_for(twilio, status_callback="https://hooks.example.com/sms/status") as channel:
        outcome = channel.deliver(message)

    assert outcome.status == "sent"
    [accepted] = twilio.messages
    assert outcome.provider_message_id == accepted["sid"]
    assert accepted["sid"].startswith("SM") and len(accepted["sid"]) == 34
    assert outcome.details == {"encoding": "GSM-7", "length": len(BODY), "segments": 1, "to_country": "DE"}
    assert (accepted["to"], accepted["from"], accepted["body"]) == (TO, SENDER, BODY)

    [post] = twilio.requests
    assert post.method == "POST"
    assert post.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert post.form == {"To": TO, "From": SENDER, "Body": BODY,
                         "StatusCallback": "https://hooks.example.com/sms/status"}
    token = base64.b64encode(f"{twilio.account_sid}:{twilio.auth_token}".encode()).decode()
    assert post.headers["Authorization"] == f"Basic {token}"
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert post.auth_ok
    # the idempotency key is for us: never sent to the provider
    assert message.key not in json.dumps([post.form, post.headers, post.path, post.query])
    # logs carry the key, never the number or the text
    assert message.key in caplog.text
    assert TO not in caplog.text and "cart misses you" not in caplog.text


def test_messaging_service_instead_of_from(twilio):
    body = "Olá! Seu pedido saiu para entrega 🚚"
    with channel_for(twilio, from_number=None, messaging_service_sid="MG" + "1" * 32) as channel:
        outcome = channel.deliver(sms(to="+5511912345678", body=body))
    assert outcome.status == "sent"
    assert outcome.details == {"encoding": "UCS-2", "length": 36, "segments": 1, "to_country": "BR"}
    assert twilio.requests[0].form == {"To": "+5511912345678", "MessagingServiceSid": "MG" + "1" * 32, "Body": body}
    assert twilio.messages[0]["messaging_service_sid"] == "MG" + "1" * 32


def test_channel_needs_exactly_one_sender(twilio):
    with pytest.raises(ValueError):
        SMSChannel(twilio.base_url, twilio.account_sid, twilio.auth_token)
    with pytest.raises(ValueError):
        SMSChannel(twilio.base_url, twilio.account_sid, twilio.auth_token, from_number=SENDER,
                   messaging_service_sid="MG" + "1" * 32)


def test_one_connection_per_batch(twilio):
    with channel_for(twilio) as channel:
        outcomes = [channel.deliver(sms(key=f"k{i}", body=f"Hello {i}")) for i in range(5)]
    assert [o.status for o in outcomes] == ["sent"] * 5
    assert len({o.provider_message_id for o in outcomes}) == 5
    assert len(twilio.messages) == 5
    assert len({r.client for r in twilio.posts()}) == 1  # one kept-alive connection for the batch


def test_recipient_replied_stop_is_failed_and_suppressed(twilio):
    twilio.stop_numbers.add(TO)
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "failed"
    assert outcome.suppress == "provider_opt_out"
    assert outcome.reason.startswith("recipient opted out (21610: ")
    assert twilio.messages == [] and len(twilio.posts()) == 1


def test_invalid_number_is_failed_with_the_number_masked(twilio):
    bad = "+999123456789012345"  # too long for E.164
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms(to=bad))
    assert outcome.status == "failed" and outcome.suppress is None
    assert outcome.reason.startswith("21211: Invalid 'To' Phone Number")
    assert outcome.fallback is True  # the address is unusable: the step may try another channel
    assert bad not in outcome.reason


def test_rate_limited_then_sent_honours_retry_after(twilio):
    twilio.fail_next.append((429, {"Retry-After": "1"}, twilio_error(20429, "Too Many Requests", 429)))
    started = time.monotonic()
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms())
    elapsed = time.monotonic() - started
    assert outcome.status == "sent"
    assert 0.95 <= elapsed < 1.9  # waited the second the server asked for (backoff is 0.01 s)
    assert len(twilio.posts()) == 2 and len(twilio.messages) == 1
    assert twilio.posts()[0].form == twilio.posts()[1].form


def test_unavailable_with_retry_after_exhausted_is_retry(twilio):
    for _ in range(3):
        twilio.fail_next.append((503, {"Retry-After": "30"}, twilio_error(20503, "Service Unavailable", 503)))
    started = time.monotonic()
    with channel_for(twilio, max_attempts=3, max_wait=0.2) as channel:
        outcome = channel.deliver(sms())
    assert time.monotonic() - started < 1.5  # Retry-After: 30 capped at max_wait
    assert outcome == Outcome("retry", "HTTP 503 (20503: Service Unavailable) after 3 attempts")
    assert len(twilio.posts()) == 3  # max_attempts POSTs in total
    assert lookups(twilio) == [] and twilio.messages == []


def test_rate_limited_without_retry_after_backs_off(twilio):
    twilio.fail_next.extend([(429, {}, twilio_error(20429, "Too Many Requests", 429))] * 2)
    with channel_for(twilio, max_attempts=2) as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "retry" and "429" in outcome.reason
    assert len(twilio.posts()) == 2


def test_accepted_then_500_is_found_by_lookup(twilio):
    twilio.accept_then_fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms())
    [accepted] = twilio.messages  # exactly one: never POSTed again
    assert outcome.status == "sent"
    assert outcome.provider_message_id == accepted["sid"]
    assert outcome.details["looked_up"] is True
    assert len(twilio.posts()) == 1
    [lookup] = lookups(twilio)
    assert lookup.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert lookup.query["To"] == TO and lookup.query["From"] == SENDER and lookup.auth_ok


def test_500_without_accepting_is_looked_up_and_never_resent(twilio):
    # Absent from the listing is not proof of absence (listings lag, bodies get rewritten),
    # so the outcome is recorded as unknown rather than retried: at most once wins.
    twilio.fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "unknown"
    assert outcome.reason.startswith("HTTP 500") and "not re-sent" in outcome.reason
    assert twilio.messages == []  # still zero
    assert len(twilio.posts()) == 1 and len(lookups(twilio)) == 1


def test_lookup_ignores_an_identical_message_already_sent_in_the_batch(twilio):
    with channel_for(twilio) as channel:
        first = channel.deliver(sms(key="k1"))
        twilio.fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
        second = channel.deliver(sms(key="k2"))  # same number, same text
    assert first.status == "sent"
    assert second.status == "unknown"  # the first message is not taken for the second (nor re-sent)
    assert len(twilio.messages) == 1


def test_connection_dropped_after_accepting_is_found(twilio):
    twilio.drop_next = 1
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "sent"
    assert outcome.provider_message_id == twilio.messages[0]["sid"]
    assert len(twilio.posts()) == 1 and len(twilio.messages) == 1


def test_timeout_after_accepting_is_found(twilio):
    twilio.slow_next.append(1.0)
    with channel_for(twilio, timeout=0.3) as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "sent"
    assert len(twilio.posts()) == 1 and len(twilio.messages) == 1


def test_lookup_failing_is_unknown(twilio):
    twilio.accept_then_fail_next.append((500, {}, twilio_error(20500, "Internal Server Error", 500)))
    twilio.fail_next_lookup.append((503, {}, twilio_error(20503, "Service Unavailable", 503)))
    with channel_for(twilio) as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "unknown"
    assert "lookup failed" in outcome.reason
    assert len(twilio.posts()) == 1 and len(twilio.messages) == 1  # recorded as unknown, not re-sent


def test_lookup_pages_through_the_listing(twilio):
    with channel_for(twilio, lookup_page_size=2) as channel:
        for i in range(5):
            channel.deliver(sms(key=f"k{i}", body=f"Message {i}"))
        # a fresh batch (nothing known) asks whether 'Message 0', the oldest, went out
        twilio.requests.clear()
    with channel_for(twilio, lookup_page_size=2) as channel:
        found = channel.reconcile(sms(body="Message 0"), datetime.now(UTC))
        missing = channel.reconcile(sms(body="never sent"), datetime.now(UTC))
    assert found.status == "sent" and found.provider_message_id == twilio.messages[0]["sid"]
    assert missing.status == "retry"
    assert [r.query.get("Page", "0") for r in lookups(twilio)] == ["0", "1", "2"] * 2
    with channel_for(twilio, lookup_page_size=2, lookup_pages=2) as channel:
        assert channel.reconcile(sms(body="never sent"), datetime.now(UTC)).status == "unknown"  # gave up
        # and only messages created since the claim (less a minute) count
        assert channel.reconcile(sms(body="Message 0"), datetime.now(UTC) + timedelta(minutes=5)).status != "sent"


def test_wrong_token_is_failed_with_20003(twilio):
    with channel_for(twilio, auth_token="not-the-token") as channel:
        outcome = channel.deliver(sms())
    assert outcome.status == "failed"
    assert outcome.reason.startswith("20003: ")
    assert twilio.messages == []
    assert twilio.requests[0].auth_ok is False


def test_server_down_is_channel_unavailable():
    server = TwilioServer().start()
    channel = channel_for(server)
    server.stop()
    with channel, pytest.raises(ChannelUnavailable):
        channel.deliver(sms())


def test_server_gone_between_two_messages_is_channel_unavailable(twilio):
    with channel_for(twilio) as channel:
        assert channel.deliver(sms(key="k1")).status == "sent"
        twilio.stop()  # the kept-alive connection is cut too
        with pytest.raises(ChannelUnavailable):
            channel.deliver(sms(key="k2", body="second"))
    assert len(twilio.messages) == 1


# ----------------------------------------------------------------------------- requests in flight
def test_concurrent_requests_keep_each_numbers_order_and_send_each_message_once(twilio):
    """Four requests in flight (lifecycle.send.deliver_all): outcomes come back in the window's
    order, each message is accepted once, and one number's messages reach the provider one after
    another in that order (an order confirmation is not overtaken by its shipping notice)."""
    from lifecycle.send import deliver_all

    numbers = [f"+49151234567{n:02d}" for n in (0, 0, 1, 0, 2, 1, 3, 4, 0, 5, 6, 2, 7, 8, 1, 9)]
    window = [sms(key=f"k{i}", to=number, body=f"message {i}") for i, number in enumerate(numbers)]
    twilio.slow_next.extend([0.1] * len(window))  # each answer takes a while: requests overlap
    with channel_for(twilio, concurrency=4) as channel:
        outcomes = deliver_all(channel, window)
    assert [o.status for o in outcomes] == ["sent"] * len(window)
    by_sid = {m["sid"]: m["body"] for m in twilio.messages}
    assert [by_sid[o.provider_message_id] for o in outcomes] == [m.body for m in window]
    assert sorted(by_sid.values()) == sorted(m.body for m in window)  # once each
    for number in set(numbers):
        posts = [r for r in twilio.posts() if r.form["To"] == number]
        assert [r.form["Body"] for r in posts] == [m.body for m in window if m.to == number]
        gaps = [(b.at - a.at).total_seconds() for a, b in zip(posts, posts[1:], strict=False)]
        assert all(gap >= 0.09 for gap in gaps), (number, gaps)  # the next waited for the answer
    assert 1 < len({r.client for r in twilio.posts()}) <= 4  # in flight at once, within the pool


def test_retry_after_holds_every_request_in_flight(twilio):
    """A 429 with Retry-After to one request stops the others too: after the answer, no request
    leaves until the wait is over (bar those already on their way); every message goes out once."""
    from lifecycle.send import deliver_all

    twilio.fail_next.append((429, {"Retry-After": "2"}, twilio_error(20429, "Too Many Requests", 429)))
    window = [sms(key=f"k{i}", to=f"+49151234567{i:02d}", body=f"message {i}") for i in range(12)]
    started = time.monotonic()
    with channel_for(twilio, concurrency=4) as channel:
        outcomes = deliver_all(channel, window)
    assert time.monotonic() - started >= 2
    assert [o.status for o in outcomes] == ["sent"] * 12 and len(twilio.messages) == 12
    posts = twilio.posts()
    assert len(posts) == 13  # one refused, then posted again
    refused = posts[0].at
    later = [(r.at - refused).total_seconds() for r in posts[1:]]
    assert not [t for t in later if 0.5 < t < 1.9], later  # held: nothing left in between
    assert len([t for t in later if t >= 1.9]) >= 12 - 3 - 4  # most of the window waited


def _planted_texts(engine, n: int, as_of: datetime) -> dict:
    """n planned cart_abandonment texts, one batch, for customers with a German mobile number and
    SMS consent: what plan_messages leaves for a send task. The batch's descriptor."""
    import sqlalchemy as sa

    from lifecycle import schema

    schema.create_shop_schema(engine)
    schema.migrate(engine)
    context = json.dumps({"cart_id": 1, "cart_total": 117.5, "currency": "EUR", "items": [],
                          "cart_url": "https://shop.example.com/cart/1"})
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, phone, first_name, last_name, country, timezone, locale, "
            "created_at) SELECT i, 'c' || i || '@example.com', '+4915112' || lpad(i::text, 6, '0'), 'Ana', 'Silva', "
            "'DE', 'Europe/Berlin', 'en_GB', :t FROM generate_series(1, :n) i"), {"n": n, "t": as_of})
        conn.execute(sa.text("INSERT INTO shop.consents (customer_id, channel, status, updated_at) "
                             "SELECT i, 'sms', 'opted_in', :t FROM generate_series(1, :n) i"), {"n": n, "t": as_of})
        conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
            "enrolled_run_id, context) SELECT 'cart_abandonment', 'k' || i, i, :t, :t, 'r', CAST(:c AS jsonb) "
            "FROM generate_series(1, :n) i"), {"n": n, "t": as_of - timedelta(hours=2), "c": context})
        conn.execute(sa.text(
            "INSERT INTO lifecycle.messages (idempotency_key, journey, enrollment_id, customer_id, step, channel, "
            "template, kind, status, due_at, planned_for, planned_run_id, run_id, batch_no) "
            "SELECT 'cart_abandonment:' || e.enrollment_key || ':reminder_2:sms', e.journey, e.enrollment_id, "
            "e.customer_id, 'reminder_2', 'sms', 'cart_abandonment/reminder_2', 'marketing', 'planned', :due, :t, "
            "'r', 'r', 0 FROM lifecycle.enrollments e"), {"due": as_of - timedelta(hours=1), "t": as_of})
    return {"journey": "cart_abandonment", "run_id": "r", "batch": 0, "channel": "sms", "as_of": as_of.isoformat()}


def test_a_send_task_with_requests_in_flight_records_each_text_once(twilio, scratch_engine):
    """send_batch with four requests in flight, a 429 (Retry-After), an answer lost after the
    provider took the message and a slow answer: every text ends recorded as sent, the lost one
    found by a lookup, none sent twice, the window's claim and record as without concurrency."""
    import sqlalchemy as sa

    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.send import send_batch
    from lifecycle.spec import load_spec

    noon = datetime(2026, 11, 20, 12, tzinfo=UTC)
    batch = _planted_texts(scratch_engine, 60, noon)
    twilio.fail_next.append((429, {"Retry-After": "1"}, twilio_error(20429, "Too Many Requests", 429)))
    twilio.drop_next = 1
    twilio.slow_next.append(0.3)
    spec = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
    counts = send_batch(scratch_engine, spec, batch, lambda name: channel_for(twilio, concurrency=4),
                        clock=lambda: noon)

    assert counts.get("sent") == 60 and not {k: n for k, n in counts.items() if k != "sent" and n}
    with scratch_engine.connect() as conn:
        recorded = conn.execute(sa.text("SELECT status, provider_message_id, payload FROM lifecycle.messages")).all()
    assert {status for status, _, _ in recorded} == {"sent"}
    assert sorted(sid for _, sid, _ in recorded) == sorted(m["sid"] for m in twilio.messages)  # each once
    assert len(twilio.messages) == 60 and len(twilio.posts()) == 61  # the 429, then posted again
    assert sum(1 for _, _, payload in recorded if payload.get("looked_up")) == 1  # the lost answer
    assert {payload["to_country"] for _, _, payload in recorded} == {"DE"}


def test_tls_is_verified_against_ssl_cert_file(twilio, tmp_path, monkeypatch):
    """Over https (a TLS front before the server): a certificate the channel cannot verify fails
    the handshake, before the request starts, so the channel is unavailable (nothing is recorded
    as unknown); trusted through SSL_CERT_FILE, as httpx trusted it, the message goes out."""
    cert, key = self_signed(tmp_path)
    with TLSFront(twilio.port, cert, key) as front:
        base_url = f"https://localhost:{front.port}"
        with SMSChannel(base_url, twilio.account_sid, twilio.auth_token, from_number=SENDER) as channel, \
                pytest.raises(ChannelUnavailable, match="unavailable"):
            channel.deliver(sms())
        deadline = time.monotonic() + 5
        while not front.failed_handshakes and time.monotonic() < deadline:  # the front's own thread
            time.sleep(0.01)
        assert front.failed_handshakes == 1 and front.handshakes == 0 and twilio.requests == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with SMSChannel(base_url, twilio.account_sid, twilio.auth_token, from_number=SENDER) as channel:
            outcomes = [channel.deliver(sms(key=f"k{i}", body=f"Hello {i}")) for i in range(3)]
    assert [o.status for o in outcomes] == ["sent"] * 3 and len(twilio.messages) == 3
    assert front.handshakes == 1  # one kept-alive TLS connection for the batch


def test_requests_go_through_the_environments_proxy_unless_no_proxy_names_the_host(twilio, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with channel_for(twilio) as channel:
            assert channel.deliver(sms()).status == "sent"
        assert proxy.seen == [("POST", twilio.base_url + twilio.messages_path)]
        monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
        with channel_for(twilio) as channel:
            assert channel.deliver(sms(key="k2", body="direct")).status == "sent"
        assert len(proxy.seen) == 1
    assert len(twilio.messages) == 2


def test_from_airflow_connection(twilio, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMS", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": twilio.port, "schema": "http",
        "login": twilio.account_sid, "password": twilio.auth_token,
        "extra": {"from": SENDER, "status_callback": "https://hooks.example.com/sms"},
    }))
    channel = SMSChannel.from_airflow("lifecycle_sms")
    assert channel.base_url == twilio.base_url
    with channel:
        assert channel.deliver(sms()).status == "sent"
    assert twilio.requests[0].form["StatusCallback"] == "https://hooks.example.com/sms"


# ----------------------------------------------------------------------------- the server itself
def test_server_validates_like_twilio(twilio):
    auth = (twilio.account_sid, twilio.auth_token)
    url = twilio.base_url + twilio.messages_path
    cases = [
        ({"From": SENDER, "Body": "x"}, 21604),
        ({"To": "0151 23456789", "From": SENDER, "Body": "x"}, 21211),
        ({"To": TO, "Body": "x"}, 21603),
        ({"To": TO, "From": SENDER, "MessagingServiceSid": "MG" + "1" * 32, "Body": "x"}, 21603),
        ({"To": TO, "From": SENDER}, 21602),
        ({"To": TO, "From": SENDER, "Body": "x" * 1601}, 21617),
    ]
    with httpx.Client(auth=auth) as client:
        for form, code in cases:
            response = client.post(url, data=form)
            assert response.status_code == 400, form
            assert response.json() == twilio_error(code, response.json()["message"], 400)
        response = client.post(url, data={"To": TO, "From": SENDER, "Body": "x"}, auth=("AC" + "f" * 32, "nope"))
        assert response.status_code == 401 and response.json()["code"] == 20003
        assert response.json()["more_info"] == "https://www.twilio.com/docs/errors/20003"
        other = url.replace(twilio.account_sid, "AC" + "f" * 32)
        assert client.post(other, data={"To": TO, "From": SENDER, "Body": "x"}).status_code == 404

        created = client.post(url, data={"To": TO, "From": SENDER, "Body": "€" * 81})
        assert created.status_code == 201
        resource = created.json()
        assert resource["status"] == "queued" and resource["num_segments"] == "2"
        assert resource["account_sid"] == twilio.account_sid and resource["date_sent"] is None
        assert resource["uri"] == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages/{resource['sid']}.json"
        assert datetime.strptime(resource["date_created"], "%a, %d %b %Y %H:%M:%S %z")
        fetched = client.get(twilio.base_url + resource["uri"]).json()
        assert fetched["sid"] == resource["sid"] and fetched["status"] == "sent"
    assert twilio.messages == [fetched]


def test_server_lists_with_twilio_filters(twilio):
    auth = (twilio.account_sid, twilio.auth_token)
    url = twilio.base_url + twilio.messages_path
    today = datetime.now(UTC).date()
    with httpx.Client(auth=auth) as client:
        for to in (TO, TO, "+447911123456"):
            assert client.post(url, data={"To": to, "From": SENDER, "Body": "hi"}).status_code == 201
        listed = client.get(url, params={"To": TO}).json()
        assert [m["to"] for m in listed["messages"]] == [TO, TO]
        assert listed["page"] == 0 and listed["next_page_uri"] is None
        assert listed["messages"][0]["sid"] == twilio.messages[1]["sid"]  # newest first
        # the query string Twilio's docs show, literally: DateSent>=YYYY-MM-DD
        raw = client.get(f"{url}?DateSent>={today.isoformat()}").json()
        assert len(raw["messages"]) == 3
        later = client.get(url, params={"DateSent>": (today + timedelta(days=1)).isoformat()}).json()
        assert later["messages"] == []
        paged = client.get(url, params={"PageSize": 2}).json()
        assert len(paged["messages"]) == 2 and paged["next_page_uri"]
        rest = client.get(twilio.base_url + paged["next_page_uri"]).json()
        assert len(rest["messages"]) == 1 and rest["next_page_uri"] is None
        assert client.get(url, params={"From": "+15550000000"}).json()["messages"] == []


def test_jsonl_outbox_and_cli(tmp_path):
    outbox = tmp_path / "sms.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifecycle_demo.sinks.twilio_server", "--port", "0", "--jsonl", str(outbox),
         "--account-sid", "AC" + "a" * 32, "--auth-token", "secret"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        banner = proc.stdout.readline()
        base_url = banner.split(" on ", 1)[1].split()[0]
        with SMSChannel(base_url, "AC" + "a" * 32, "secret", from_number="Northwind") as channel:
            outcome = channel.deliver(sms())
        assert outcome.status == "sent"
        [line] = outbox.read_text().splitlines()
        record = json.loads(line)
        assert record["sid"] == outcome.provider_message_id
        assert (record["to"], record["from"], record["body"]) == (TO, "Northwind", BODY)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
