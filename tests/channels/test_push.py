"""Web push over real HTTP: PushChannel (py_vapid, our RFC 8291 encryption, urllib3) against the local push service.

No mocks: the service verifies the VAPID JWT (ES256), decrypts the RFC 8291 body with the
subscription's private key, and answers with the statuses a push service uses.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from lifecycle.channels.base import ChannelUnavailable
from lifecycle.channels.http_client import NotSent
from lifecycle.channels.push import MAX_PAYLOAD_BYTES, OutboundPush, PushChannel
from lifecycle_demo.sinks.push_server import PushServer, demo_key_lookup

from .network import ForwardProxy, TLSFront, self_signed

SUBJECT = "mailto:push-ops@shop.example.com"
PAYLOAD = {"title": "Still thinking it over?", "body": "Your Merino Hoodie is waiting — ünïcode ok",
           "url": "https://shop.example.com/cart?utm_source=push", "icon": "https://cdn.shop.example.com/i.png",
           "tag": "cart-42"}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def vapid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: ec.EllipticCurvePrivateKey, fmt=serialization.PrivateFormat.PKCS8) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def raw_b64(key: ec.EllipticCurvePrivateKey) -> str:
    return b64(key.private_numbers().private_value.to_bytes(32, "big"))


@pytest.fixture()
def push():
    with PushServer() as server:
        yield server
    assert server.rejected == [] or all(r.status not in (401, 403) for r in server.rejected), server.rejected


@pytest.fixture()
def channel(vapid_key):
    with PushChannel(pem(vapid_key), SUBJECT, timeout=5) as ch:
        yield ch


def outbound(subscription: dict, payload: dict = PAYLOAD, **kw) -> OutboundPush:
    return OutboundPush(subscription["endpoint"], subscription["keys"]["p256dh"], subscription["keys"]["auth"],
                        payload, key=kw.pop("key", "cart_abandonment:42:reminder_1:push"), **kw)


def test_delivers_the_encrypted_payload_with_a_valid_vapid_token(push, channel):
    subscription = push.register("alice")
    before = time.time()
    outcome = channel.deliver(outbound(subscription, ttl=3600, urgency="high"))

    assert outcome.status == "sent", outcome
    [received] = push.received
    assert outcome.provider_message_id.startswith(f"{push.origin}/m/")
    assert received.token == "alice"
    assert received.payload_json == json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False)
    assert received.payload == PAYLOAD
    assert received.headers["content-encoding"] == "aes128gcm"
    assert received.headers["ttl"] == "3600" and received.headers["urgency"] == "high"
    assert received.headers["authorization"].startswith("vapid t=")
    claims = received.claims
    assert claims["aud"] == push.origin == f"http://127.0.0.1:{push.port}"
    assert claims["sub"] == SUBJECT
    assert before < claims["exp"] <= time.time() + 12 * 3600 + 1  # at most 12 h, well inside RFC 8292's 24 h
    assert push.rejected == []


def test_encryption_reproduces_rfc_8291s_example_and_http_ece():
    """RFC 8291 Appendix A: the same keys, auth secret and salt give the RFC's very body; and
    with fresh keys, the body http_ece (what pywebpush uses) makes, and decrypts."""
    import http_ece

    from lifecycle.channels.push import encrypt

    def raw(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    server_key = ec.derive_private_key(int.from_bytes(raw("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"),
                                       ec.SECP256R1())
    receiver = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw(
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"))
    body = encrypt(b"When I grow up, I want to be a watermelon", receiver, raw("BTBZMqHH6r4Tts7J_aSIgg"),
                   key=server_key, salt=raw("DGv6ra1nlYgDCS1FRnbzlw"))
    assert b64(body) == ("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6"
                         "TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulc"
                         "y4a-fN")

    browser, auth = ec.generate_private_key(ec.SECP256R1()), b"0123456789abcdef"
    payload = json.dumps(PAYLOAD, ensure_ascii=False).encode()
    key, salt = ec.generate_private_key(ec.SECP256R1()), bytes(range(16))
    ours = encrypt(payload, browser.public_key(), auth, key=key, salt=salt)
    point = browser.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert ours == http_ece.encrypt(payload, salt=salt, private_key=key, dh=point, auth_secret=auth,
                                    version="aes128gcm")
    assert http_ece.decrypt(encrypt(payload, browser.public_key(), auth), private_key=browser, auth_secret=auth,
                            version="aes128gcm") == payload
    assert encrypt(payload, browser.public_key(), auth)[:16] != encrypt(payload, browser.public_key(), auth)[:16]


def test_defaults_ttl_one_day_and_normal_urgency(push, channel):
    channel.deliver(outbound(push.register("bob")))
    [received] = push.received
    assert received.headers["ttl"] == "86400" and received.headers["urgency"] == "normal"


@pytest.mark.parametrize("key_format", ["pem_pkcs8", "pem_sec1", "pem_escaped_newlines", "raw_base64url",
                                        "der_base64url"])
def test_vapid_private_key_formats(push, vapid_key, key_format):
    key = {
        "pem_pkcs8": pem(vapid_key),
        "pem_sec1": pem(vapid_key, serialization.PrivateFormat.TraditionalOpenSSL),
        "pem_escaped_newlines": pem(vapid_key).replace("\n", "\\n"),  # pasted into a one-line field
        "raw_base64url": raw_b64(vapid_key),
        "der_base64url": b64(vapid_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())),
    }[key_format]
    channel = PushChannel(key, SUBJECT)
    public = vapid_key.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
    assert channel.application_server_key == b64(public)
    # a subscription made with this applicationServerKey only takes pushes signed by it
    subscription = push.register(application_server_key=channel.application_server_key)
    with channel:
        assert channel.deliver(outbound(subscription)).status == "sent"
    assert len(push.received) == 1


def test_vapid_py_generated_keys_work(push):
    vapid = Vapid()
    vapid.generate_keys()  # what `vapid --gen` writes to private_key.pem
    with PushChannel(vapid.private_pem().decode(), "https://shop.example.com/contact") as channel:
        assert channel.deliver(outbound(push.register())).status == "sent"
    assert push.received[0].claims["sub"] == "https://shop.example.com/contact"


@pytest.mark.parametrize("style", ["login_and_pem", "extra_subject_and_raw_key"])
def test_from_airflow_reads_the_connection(push, vapid_key, monkeypatch, style):
    conn = {"conn_type": "generic", "login": SUBJECT, "password": pem(vapid_key)}
    if style == "extra_subject_and_raw_key":
        conn = {"conn_type": "generic", "password": raw_b64(vapid_key),
                "extra": {"subject": "https://shop.example.com", "timeout": 3}}
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_PUSH", json.dumps(conn))
    with PushChannel.from_airflow() as channel:
        assert channel.deliver(outbound(push.register())).status == "sent"
    assert push.received[0].claims["sub"] == (conn.get("login") or conn["extra"]["subject"])
    assert channel.timeout == (3.0 if "extra" in conn else 10.0)


def test_from_airflow_without_a_key_or_subject_says_so(monkeypatch, vapid_key):
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_PUSH", json.dumps({"conn_type": "generic", "login": SUBJECT}))
    with pytest.raises(ValueError, match="VAPID private key"):
        PushChannel.from_airflow()
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_PUSH", json.dumps({"conn_type": "generic", "password": pem(vapid_key)}))
    with pytest.raises(ValueError, match="subject"):
        PushChannel.from_airflow()


def test_bad_keys_and_subjects_are_refused_at_construction(vapid_key):
    with pytest.raises(ValueError, match="not a PEM, DER or raw base64url") as info:
        PushChannel("not-a-key", SUBJECT)
    assert "not-a-key" not in str(info.value.__cause__ or "")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        PushChannel(pem(p384), SUBJECT)
    for subject in ("push-ops@shop.example.com", "http://shop.example.com", ""):
        with pytest.raises(ValueError, match="subject"):
            PushChannel(pem(vapid_key), subject)


def test_a_subscription_for_another_vapid_key_is_refused(push, channel):
    other = PushChannel(raw_b64(ec.generate_private_key(ec.SECP256R1())), SUBJECT)
    subscription = push.register(application_server_key=other.application_server_key)
    outcome = channel.deliver(outbound(subscription))
    assert outcome.status == "failed" and "VAPID" in outcome.reason and outcome.revoke is None
    assert [r.status for r in push.rejected] == [403]
    push.rejected.clear()  # expected here; the fixture asserts no other 401/403


@pytest.mark.parametrize(("script", "status"), [("gone", 410), ("not_found", 404)])
def test_gone_subscription_revokes_exactly_that_endpoint(push, channel, script, status):
    gone, alive = push.register("gone-one"), push.register("still-here")
    getattr(push, script).add("gone-one")

    outcome = channel.deliver(outbound(gone))
    assert outcome.status == "failed"
    assert outcome.reason == f"subscription gone ({status})"
    assert outcome.revoke == gone["endpoint"] == f"{push.origin}/push/gone-one"
    assert outcome.fallback is True
    assert channel.deliver(outbound(alive)).status == "sent"
    assert [r.token for r in push.received] == ["still-here"]


def test_unknown_subscription_is_gone_too(push, channel):
    subscription = push.register("known")
    unknown = dict(subscription, endpoint=push.endpoint("never-registered"))
    outcome = channel.deliver(outbound(unknown))
    assert (outcome.status, outcome.revoke, outcome.fallback) == ("failed", push.endpoint("never-registered"), True)


@pytest.mark.parametrize(("scripted", "retry_after"), [(429, None), ((429, 30), 30), (500, None), (503, None)])
def test_throttling_and_server_errors_are_retried(push, channel, scripted, retry_after):
    subscription = push.register()
    push.fail_next.append(scripted)
    outcome = channel.deliver(outbound(subscription))
    status = scripted[0] if isinstance(scripted, tuple) else scripted
    assert outcome.status == "retry" and str(status) in outcome.reason
    assert outcome.revoke is None and outcome.fallback is False
    assert outcome.details.get("retry_after") == retry_after
    assert push.received == []
    assert channel.deliver(outbound(subscription)).status == "sent"  # the next attempt goes through


@pytest.mark.parametrize("scripted", [400, 413])
def test_bad_request_and_too_large_fail(push, channel, scripted):
    push.fail_next.append(scripted)
    outcome = channel.deliver(outbound(push.register()))
    assert outcome.status == "failed" and str(scripted) in outcome.reason and outcome.revoke is None


def test_payload_limit_is_checked_before_any_request(push, channel):
    subscription = push.register()
    overhead = len(json.dumps({**PAYLOAD, "body": ""}, separators=(",", ":"), ensure_ascii=False).encode())
    fits = {**PAYLOAD, "body": "x" * (MAX_PAYLOAD_BYTES - overhead)}
    too_big = {**PAYLOAD, "body": "x" * (MAX_PAYLOAD_BYTES - overhead + 1)}

    outcome = channel.deliver(outbound(subscription, too_big))
    assert outcome.status == "failed" and "too large" in outcome.reason
    assert str(MAX_PAYLOAD_BYTES + 1) in outcome.reason
    assert push.requests == 0

    assert channel.deliver(outbound(subscription, fits)).status == "sent"  # exactly 4096 bytes on the wire
    assert int(push.received[0].headers["content-length"]) == 4096
    assert push.received[0].payload == fits


@pytest.mark.parametrize(("change", "reason"), [
    ({"urgency": "urgent"}, "urgency"),
    ({"ttl": -1}, "TTL"),
    ({"payload": {"title": "no body or url"}}, "lacks body, url"),
    ({"payload": {**PAYLOAD, "when": datetime(2026, 1, 1)}}, "JSON"),
    ({"p256dh": "AAAA"}, "subscription keys"),
    ({"auth": b64(b"short")}, "subscription keys"),
    ({"endpoint": "ftp://push.example.net/x"}, "endpoint"),
    ({"endpoint": "http://93.184.216.34/push/x"}, "plain http"),  # public: http only with allow_http
])
def test_invalid_messages_fail_without_a_request(push, channel, change, reason):
    fields = outbound(push.register()).__dict__ | change
    outcome = channel.deliver(OutboundPush(**fields))
    assert outcome.status == "failed" and reason in outcome.reason
    assert push.requests == 0


def test_push_service_down_is_channel_unavailable(vapid_key):
    server = PushServer().start()
    subscription = server.register()
    server.stop()
    with PushChannel(pem(vapid_key), SUBJECT, timeout=2) as channel, pytest.raises(ChannelUnavailable):
        channel.deliver(outbound(subscription))


def test_no_reply_is_unknown_never_a_retry(push, vapid_key):
    """The request went out and no answer came: the service may have it."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    accept = threading.Thread(target=lambda: held.append(listener.accept()), daemon=True)
    accept.start()
    subscription = dict(push.register(), endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}/push/x")
    try:
        with PushChannel(pem(vapid_key), SUBJECT, timeout=0.5) as channel:
            outcome = channel.deliver(outbound(subscription))
        assert outcome.status == "unknown", outcome
    finally:
        accept.join(2)
        for conn, _ in held:
            conn.close()
        listener.close()


def test_a_redirect_is_failed_and_not_followed(push, channel):
    """A push service answers; one that sends the POST elsewhere is not followed."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    target = push.register("alice")

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 (http.server's method name)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(307)
            self.send_header("Location", target["endpoint"])
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        outcome = channel.deliver(outbound(dict(target, endpoint=f"{origin}/push/alice")))
    finally:
        server.shutdown()
        server.server_close()
    assert outcome.status == "failed" and outcome.reason == f"push service {origin} redirected the request"
    assert push.requests == 0


def test_requests_go_through_the_environments_proxy_unless_no_proxy_names_the_host(push, channel, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with PushChannel(pem(channel.vapid.private_key), SUBJECT, timeout=5) as through_proxy:
            assert through_proxy.deliver(outbound(push.register("alice"))).status == "sent"
        assert proxy.seen == [("POST", push.endpoint("alice"))]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with PushChannel(pem(channel.vapid.private_key), SUBJECT, timeout=5) as direct:
            assert direct.deliver(outbound(push.register("bob"))).status == "sent"
        assert len(proxy.seen) == 1
    assert [r.token for r in push.received] == ["alice", "bob"]


def test_tls_is_verified_against_requests_ca_bundle(push, vapid_key, tmp_path, monkeypatch):
    """An https push service (a TLS front before the local one): a certificate the channel cannot
    verify fails the handshake before the request starts (channel unavailable, nothing recorded
    as unknown); trusted through REQUESTS_CA_BUNDLE, as requests trusted it, the request arrives.
    The local service checks the VAPID audience as http, so it answers 403 to the https one."""
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    cert, key = self_signed(tmp_path)
    with TLSFront(push.port, cert, key) as front:
        subscription = dict(push.register("alice"), endpoint=f"https://localhost:{front.port}/push/alice")
        with PushChannel(pem(vapid_key), SUBJECT, timeout=5, allow_private=True) as channel, \
                pytest.raises(ChannelUnavailable, match="SSLError"):
            channel.deliver(outbound(subscription))
        assert push.requests == 0
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        with PushChannel(pem(vapid_key), SUBJECT, timeout=5, allow_private=True) as channel:
            outcome = channel.deliver(outbound(subscription))
    assert push.requests == 1 and [r.status for r in push.rejected] == [403]
    assert outcome.status == "failed" and "VAPID" in outcome.reason
    push.rejected.clear()  # expected here; the fixture asserts no other 401/403


def test_concurrent_requests_classify_each_message_and_keep_each_subscriptions_order(push, vapid_key):
    """Four requests in flight (lifecycle.send.deliver_all): each outcome is its own message's,
    in the window's order; one subscription's messages arrive in order; none is sent twice."""
    from lifecycle.send import deliver_all

    subscriptions = [push.register(f"sub-{n}") for n in range(6)]
    push.gone.add("sub-5")
    push.fail_next.append((429, 7))
    order = [0, 1, 0, 2, 3, 0, 4, 1, 5, 2, 0, 3]
    window = [outbound(subscriptions[n], {**PAYLOAD, "tag": f"m{i}"}, key=f"k{i}") for i, n in enumerate(order)]
    with PushChannel(pem(vapid_key), SUBJECT, timeout=5, concurrency=4) as channel:
        outcomes = deliver_all(channel, window)
    assert outcomes[8].status == "failed" and outcomes[8].revoke == subscriptions[5]["endpoint"]
    throttled = [i for i, o in enumerate(outcomes) if o.status == "retry"]
    assert len(throttled) == 1 and outcomes[throttled[0]].details == {"http_status": 429, "retry_after": 7}
    sent = [i for i, o in enumerate(outcomes) if o.status == "sent"]
    assert sorted(sent + throttled + [8]) == list(range(len(window)))
    assert sorted(r.payload["tag"] for r in push.received) == sorted(f"m{i}" for i in sent)  # once each
    for n in range(5):
        arrived = [r.payload["tag"] for r in push.received if r.token == f"sub-{n}"]
        assert arrived == [f"m{i}" for i in sent if order[i] == n]
    assert len({o.provider_message_id for o in outcomes if o.status == "sent"}) == len(sent)


def test_vapid_token_is_reused_per_push_service(push, channel):
    for _ in range(3):
        assert channel.deliver(outbound(push.register())).status == "sent"
    assert len({r.headers["authorization"] for r in push.received}) == 1
    with PushServer() as other:
        assert channel.deliver(outbound(other.register())).status == "sent"
        assert other.received[0].claims["aud"] == other.origin != push.origin


def test_logs_carry_neither_the_endpoint_token_nor_the_payload(push, channel, caplog):
    caplog.set_level(logging.DEBUG)
    push.gone.add("secret-token-gone")
    channel.deliver(outbound(push.register("secret-token-sent")))
    channel.deliver(outbound(push.register("secret-token-gone")))
    channel.deliver(outbound(push.register("secret-token-big"), {**PAYLOAD, "body": "x" * 5000}))
    assert "cart_abandonment:42:reminder_1:push" in caplog.text
    lifecycle_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("lifecycle.channels"))
    assert "secret-token" not in lifecycle_logs and PAYLOAD["title"] not in lifecycle_logs


# ------------------------------------------------------------------------- the push service itself


def signed(claims: dict, key=None) -> dict[str, str]:
    vapid = Vapid(private_key=key or ec.generate_private_key(ec.SECP256R1()), conf={"no-strict": True})
    return vapid.sign(claims)


@pytest.mark.parametrize(("claims", "status", "reason"), [
    ({"aud": "http://evil.example.com", "sub": SUBJECT}, 403, "aud"),
    ({"sub": SUBJECT, "exp": 1}, 403, "expired"),
    ({"sub": SUBJECT, "exp": "in25h"}, 403, "24 h"),
    ({"sub": "push-ops@shop.example.com"}, 403, "sub"),
    (None, 401, "no Authorization"),
])
def test_the_push_service_rejects_bad_vapid(push, claims, status, reason):
    """The service really checks the JWT, so the fixture's 'never 401/403' means something."""
    subscription = push.register("t")
    headers = {"TTL": "60", "Content-Encoding": "aes128gcm"}
    if claims is not None:
        claims = {"aud": push.origin, "exp": int(time.time()) + 3600} | claims
        if claims["exp"] == "in25h":
            claims["exp"] = int(time.time()) + 25 * 3600
        headers |= signed(claims)
    response = requests.post(subscription["endpoint"], data=b"\0" * 100, headers=headers, timeout=5)
    assert response.status_code == status
    assert reason in push.rejected[-1].reason
    push.rejected.clear()


def test_the_push_service_rejects_a_forged_signature(push, channel):
    subscription = push.register("t")
    auth = channel.vapid_headers(push.origin)["Authorization"]
    impostor = signed({"aud": push.origin, "sub": SUBJECT, "exp": int(time.time()) + 60})["Authorization"]
    forged = auth.split(",k=")[0] + ",k=" + impostor.split(",k=")[1]  # our token, someone else's key
    response = requests.post(subscription["endpoint"], data=b"\0" * 100, timeout=5,
                             headers={"TTL": "60", "Content-Encoding": "aes128gcm", "Authorization": forged})
    assert response.status_code == 403 and "signature" in push.rejected[-1].reason
    push.rejected.clear()


# ------------------------------------------------------------------------- the demo shop's subscriptions


def test_demo_shop_subscriptions_decrypt_with_their_derived_keys(scratch_engine, vapid_key, tmp_path):
    from lifecycle_demo.demo_shop import generate, push_subscription_keys

    seed = 5
    generate(scratch_engine, datetime(2026, 11, 20, tzinfo=UTC), customers=500, seed=seed)
    with scratch_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT subscription_id, endpoint, p256dh, auth FROM shop.push_subscriptions "
                                    "ORDER BY subscription_id LIMIT 3")).all()
    assert len(rows) == 3
    for subscription_id, _, p256dh, auth in rows:
        private_key, auth_secret = push_subscription_keys(subscription_id, seed)
        public = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                       serialization.PublicFormat.UncompressedPoint)
        assert (b64(public), b64(auth_secret)) == (p256dh, auth)

    outbox = tmp_path / "push.jsonl"
    with PushServer(key_lookup=demo_key_lookup(scratch_engine, seed), jsonl_path=outbox) as server, \
            PushChannel(pem(vapid_key), SUBJECT) as channel:
        for subscription_id, endpoint, p256dh, auth in rows:
            token = endpoint.rsplit("/", 1)[1]  # the demo points the shop's endpoints at its push service
            payload = {**PAYLOAD, "tag": f"sub-{subscription_id}"}
            assert channel.deliver(OutboundPush(server.endpoint(token), p256dh, auth, payload, key="k")).status == "sent"
        missing = channel.deliver(OutboundPush(server.endpoint("no-such-token"), rows[0][2], rows[0][3], PAYLOAD, "k"))
        assert missing.revoke == server.endpoint("no-such-token")
    assert [r.payload["tag"] for r in server.received] == [f"sub-{r[0]}" for r in rows]
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [line["payload"]["tag"] for line in lines] == [f"sub-{r[0]}" for r in rows]
    assert {line["urgency"] for line in lines} == {"normal"}


# Endpoints are customer-supplied: the worker must not be made to call internal services --------
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]"])
def test_endpoints_on_loopback_are_refused_without_a_request(push, vapid_key, host):
    """https to the (listening) local push service: refused before any connection is made."""
    subscription = dict(push.register("alice"), endpoint=f"https://{host}:{push.port}/push/alice")
    with PushChannel(pem(vapid_key), SUBJECT, timeout=2, allow_private=False) as channel:
        outcome = channel.deliver(outbound(subscription))
    assert outcome.status == "failed" and outcome.fallback is True and outcome.revoke is None
    assert "non-public address" in outcome.reason and "LIFECYCLE_PUSH_ALLOW_PRIVATE" in outcome.reason
    assert "/push/alice" not in outcome.reason  # the token stays out of the recorded reason
    assert push.requests == 0


@pytest.mark.parametrize("endpoint", [
    "https://10.1.2.3/push/x", "https://192.168.0.10/push/x", "https://172.16.5.4/push/x",
    "https://169.254.169.254/latest/meta-data/", "https://100.64.0.1/push/x", "https://0.0.0.0/push/x",
    "https://240.0.0.1/push/x", "https://224.0.0.1/push/x", "https://[fe80::1]/push/x", "https://[fc00::1]/push/x",
])
def test_endpoints_on_private_link_local_or_reserved_addresses_are_refused(push, vapid_key, endpoint):
    with PushChannel(pem(vapid_key), SUBJECT, timeout=0.5, allow_private=False) as channel:
        outcome = channel.deliver(outbound(dict(push.register(), endpoint=endpoint)))
    assert outcome.status == "failed" and "non-public address" in outcome.reason, outcome


def test_plain_http_to_the_local_push_service_needs_allow_private(push, vapid_key, monkeypatch):
    subscription = push.register("alice")  # http://127.0.0.1:port/push/alice
    monkeypatch.delenv("LIFECYCLE_PUSH_ALLOW_PRIVATE")
    with PushChannel(pem(vapid_key), SUBJECT, timeout=2) as channel:
        refused = channel.deliver(outbound(subscription))
    assert refused.status == "failed" and "plain http" in refused.reason
    assert push.requests == 0

    monkeypatch.setenv("LIFECYCLE_PUSH_ALLOW_PRIVATE", "1")
    with PushChannel(pem(vapid_key), SUBJECT, timeout=2) as channel:
        assert channel.deliver(outbound(subscription)).status == "sent"
    assert [r.token for r in push.received] == ["alice"]


def test_allow_private_from_the_connection_extra(push, vapid_key, monkeypatch):
    monkeypatch.delenv("LIFECYCLE_PUSH_ALLOW_PRIVATE")
    conn = {"conn_type": "generic", "login": SUBJECT, "password": pem(vapid_key), "extra": {"allow_private": True}}
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_PUSH", json.dumps(conn))
    with PushChannel.from_airflow() as channel:
        assert channel.deliver(outbound(push.register())).status == "sent"


def test_a_name_that_does_not_resolve_is_retried_without_a_request(push, vapid_key):
    subscription = dict(push.register(), endpoint="https://push.invalid/push/x")
    with PushChannel(pem(vapid_key), SUBJECT, allow_private=False) as channel:
        outcome = channel.deliver(outbound(subscription))
    assert outcome.status == "retry" and "did not resolve" in outcome.reason


def test_a_push_service_name_is_looked_up_once_per_batch(push, vapid_key, monkeypatch):
    """A batch's subscriptions sit on a handful of push services: the endpoint check looks each
    name up once per batch, not once per message (the connection still checks the address it
    reaches, test_the_address_connected_to_is_checked_too)."""
    from lifecycle.channels import push as push_module

    looked_up = []
    lookup = push_module._addresses
    monkeypatch.setattr(push_module, "_addresses", lambda host, port: (looked_up.append(host), lookup(host, port))[1])
    by_name = [dict(s, endpoint=s["endpoint"].replace("127.0.0.1", "localhost")) for s in map(push.register, "abc")]
    with PushChannel(pem(vapid_key), SUBJECT, timeout=5, allow_private=True) as channel:
        outcomes = [channel.deliver(outbound(s)) for s in by_name]
    with PushChannel(pem(vapid_key), SUBJECT, timeout=5, allow_private=True) as channel:  # the next batch
        outcomes.append(channel.deliver(outbound(by_name[0])))
    assert [o.status for o in outcomes] == ["sent"] * 4 and len(push.received) == 4
    assert looked_up == ["localhost", "localhost"]


def test_the_address_connected_to_is_checked_too(push, vapid_key):
    """DNS can answer the request differently from the check before it (rebinding): the
    connection itself refuses a non-public peer. Here the check is passed by going around it,
    straight to the channel's connection pools, whose connection lands on the loopback push service."""
    endpoint = push.endpoint("alice")
    with PushChannel(pem(vapid_key), SUBJECT, timeout=2, allow_private=False, allow_http=True) as channel:
        with pytest.raises(NotSent) as info:
            channel._pools(endpoint, push.origin).request("POST", endpoint, headers={}, body=b"x", timeout=2)
        outcome = channel._not_sent(push.origin, info.value.error)
    assert outcome.status == "failed" and "non-public address 127.0.0.1" in outcome.reason
    assert push.requests == 0
