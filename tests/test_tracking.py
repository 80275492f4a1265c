"""Tracked opens and clicks (lifecycle.tracking, lifecycle.links' tracking tokens), through the
real web service.

The pure parts (tokens, rewriting, who fetched it) are checked directly; the rest runs
`python -m lifecycle.web_service` as its own process against the module's shop, after a real
cart_abandonment interval has sent its emails to a real SMTP server (aiosmtpd): the links in the
parsed emails are followed over HTTP and the lifecycle.engagement rows read back.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re
from collections import Counter
from datetime import timedelta
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle
from test_unsubscribe_service import PLUGINS, web_service_process

from lifecycle import links
from lifecycle.channels.email import EmailChannel, OutboundEmail, message_id_for
from lifecycle.channels.push import OutboundPush
from lifecycle.channels.sms import OutboundSMS, sms_segments
from lifecycle.config import SEGMENTS_DIR, SHOP
from lifecycle.replay import run_interval
from lifecycle.spec import SpecError, load_spec
from lifecycle.tracking import classify, track_html, track_outbound, track_text, untrack

SPEC = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
BASE = SHOP["base_url"]  # https://shop.example.com: the shop's web front routes /c/ and /o/ to the service
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
IPHONE_MAIL = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"


# ----------------------------------------------------------------------------- tokens
def test_tokens_round_trip_and_name_the_message_and_target():
    assert links.verify_open_token(links.open_token(42)) == 42
    assert links.verify_open_token(links.open_token(2**62)) == 2**62
    shop_link = f"{BASE}/cart/123456?utm_source=lifecycle&utm_medium=sms"
    token = links.click_token(987654, shop_link)
    assert links.verify_click_token(token) == (987654, shop_link)
    # a shop link keeps only its path: an SMS's cart link stays short enough for its segment
    assert len(links.click_token(987654, f"{BASE}/cart/123456")) <= 40
    foreign = "https://blog.example.org/care-guide?x=1&y=%C3%A9#part-2"
    assert links.verify_click_token(links.click_token(7, foreign)) == (7, foreign)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)  # safe in a path, no padding


def test_a_token_verifies_only_as_what_it_was_signed_for(monkeypatch):
    click, opened = links.click_token(5, f"{BASE}/p/X"), links.open_token(5)
    assert links.verify_open_token(click) is None and links.verify_click_token(opened) is None
    assert links.verify_unsubscribe_token(click) is None and links.verify_stay_token(opened) is None
    assert links.verify_click_token(links.unsubscribe_token(5, "email")) is None
    for i in range(len(click)):  # any character changed: refused
        other = "A" if click[i] != "A" else "B"
        assert links.verify_click_token(click[:i] + other + click[i + 1:]) is None, i
    assert links.verify_click_token(click + "A") is None and links.verify_click_token(click[:-1]) is None
    assert links.verify_click_token(click + "=") is None and links.verify_click_token("") is None
    monkeypatch.setenv("LIFECYCLE_SIGNING_KEY", "another-key-" + "x7Qp2Lm9Zr4Tw8Ks3Hd6Vb1Nc5Jf0Gy")
    assert links.verify_click_token(click) is None and links.verify_open_token(opened) is None


def test_tokens_are_the_documented_mac_so_links_already_sent_keep_working():
    """HMAC-SHA256 under HMAC(signing key, TRACKING_LABEL), cut to 80 bits: computed here from
    the definition, independently of the keyed copy the send task uses."""
    key = os.environ["LIFECYCLE_SIGNING_KEY"]
    tracking_key = hmac.new(key.encode(), links.TRACKING_LABEL, hashlib.sha256).digest()
    for body in (links.OPEN + links._varint(42), links.CLICK_IN_SHOP + links._varint(2**40) + b"/cart/7?x=1",
                 links.CLICK + links._varint(3) + "https://blog.example.org/é".encode()):
        mac = hmac.new(tracking_key, body, hashlib.sha256).digest()[:links.MAC_BYTES]
        expected = base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
        assert links._seal(body, None) == expected == links._seal(body, key)
    assert links.verify_open_token(links._seal(links.OPEN + links._varint(42), None)) == 42


def _forge(message_id: int, url: str, mac_of: str) -> str:
    """A token whose body names `url` but carries the MAC of the genuine token `mac_of`."""
    raw = base64.urlsafe_b64decode(mac_of + "=" * (-len(mac_of) % 4))
    body = links.CLICK + links._varint(message_id) + url.encode()
    return base64.urlsafe_b64encode(body + raw[-links.MAC_BYTES:]).rstrip(b"=").decode()


def test_another_url_or_message_under_a_genuine_signature_is_refused():
    genuine = links.click_token(5, "https://partner.example.net/offer")
    assert links.verify_click_token(_forge(5, "https://evil.example/phish", genuine)) is None
    assert links.verify_click_token(_forge(6, "https://partner.example.net/offer", genuine)) is None


# ----------------------------------------------------------------------------- rewriting
HTML = """<html><body>
<a class="brand" href="https://shop.example.com/?utm_source=lifecycle&amp;utm_campaign=x">Shop</a>
<a href='https://shop.example.com/p/LIN-01?utm_source=lifecycle&amp;utm_content=a'><img src="https://cdn.shop.example.com/i.jpg"></a>
<a href="#top">top</a> <a href="mailto:help@shop.example.com">mail</a> <a href="tel:+441234">call</a>
<a href="https://shop.example.com/unsubscribe?t=TOKEN">Unsubscribe</a>
<a href="https://shop.example.com/preferences?t=STAY">Email preferences</a>
<A HREF="HTTPS://partner.example.net/x">partner</A>
</BODY></html>"""


class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.hrefs.append(attrs.get("href"))
        elif tag == "img":
            self.images.append(attrs)


def anchors(html: str) -> _Anchors:
    parser = _Anchors()
    parser.feed(html)
    return parser


def test_track_html_wraps_shop_and_other_links_and_adds_the_pixel():
    out = anchors(track_html(HTML, 31, BASE))
    tracked = [h for h in out.hrefs if h.startswith(f"{BASE}/c/")]
    targets = [links.verify_click_token(urlsplit(h).path.removeprefix("/c/")) for h in tracked]
    assert targets == [
        (31, "https://shop.example.com/?utm_source=lifecycle&utm_campaign=x"),  # &amp; read as the client reads it
        (31, "https://shop.example.com/p/LIN-01?utm_source=lifecycle&utm_content=a"),
        (31, "HTTPS://partner.example.net/x"),
    ]
    assert [h for h in out.hrefs if h not in tracked] == [
        "#top", "mailto:help@shop.example.com", "tel:+441234",
        "https://shop.example.com/unsubscribe?t=TOKEN", "https://shop.example.com/preferences?t=STAY",
    ]
    pixel = out.images[-1]
    assert pixel["width"] == pixel["height"] == "1" and pixel["alt"] == ""
    assert links.verify_open_token(urlsplit(pixel["src"]).path.removeprefix("/o/").removesuffix(".gif")) == 31
    assert out.images[0]["src"] == "https://cdn.shop.example.com/i.jpg"  # images are not links
    rewritten = track_html(HTML, 31, BASE)
    assert rewritten.index('width="1" height="1"') < rewritten.index("</BODY>")  # inside the body
    assert untrack(rewritten).count("https://shop.example.com/p/LIN-01?utm_source=lifecycle&utm_content=a") == 1
    assert track_html("<p>no body tag</p>", 1, BASE).endswith('.gif" width="1" height="1" alt="" '
                                                              'style="display:block;border:0;width:1px;height:1px;overflow:hidden">')


def test_track_text_keeps_punctuation_and_the_unsubscribe_link():
    text = ("See https://shop.example.com/p/A. Or (https://shop.example.com/cart/1?x=1&y=2), "
            "https://en.wikipedia.org/wiki/Linen_(fabric)!\n"
            "Unsubscribe: https://shop.example.com/unsubscribe?t=TOK\nmailto:help@shop.example.com")
    out = track_text(text, 8, BASE)
    assert out.count(f"{BASE}/c/") == 3
    assert f"{BASE}/unsubscribe?t=TOK" in out and "mailto:help@shop.example.com" in out
    assert re.search(r"/c/[A-Za-z0-9_-]+\. Or \(", out) and re.search(r"/c/[A-Za-z0-9_-]+\), ", out)
    assert untrack(out) == text
    assert track_text(out, 8, BASE) == out  # already tracked links are left alone


def test_every_shipped_email_template_tracks_and_untracks_exactly():
    """Each template's rendered HTML and text: every web link but the unsubscribe and
    preferences links goes through /c/, one pixel, and `untrack` gives back the rendered message."""
    from test_render import EXPECTED_TEMPLATES, make_context

    from lifecycle.render import render_email

    checked = 0
    for template in sorted(EXPECTED_TEMPLATES):
        rendered = render_email(template, make_context(template))
        html, text = track_html(rendered.html, 12, BASE), track_text(rendered.text, 12, BASE)
        assert untrack(html, html=True) == rendered.html, template
        assert untrack(text) == rendered.text, template
        found = anchors(html)
        web = [h for h in found.hrefs if h.lower().startswith(("http://", "https://"))]
        assert all(h.startswith(f"{BASE}/c/") or urlsplit(h).path in ("/unsubscribe", "/preferences") for h in web)
        assert sum(h.startswith(f"{BASE}/c/") for h in web) >= 1, template
        assert sum(i.get("width") == "1" for i in found.images) == 1, template
        checked += 1
    assert checked >= 30


def _row(channel: str, kind: str = "marketing", step: str = "reminder_2") -> SimpleNamespace:
    return SimpleNamespace(message_id=77, channel=channel, kind=kind, step=step, journey="cart_abandonment")


def test_sms_and_push_links_go_through_the_redirect():
    body = "Northwind Goods: your cart (€123.45) is still saved. Checkout: https://shop.example.com/cart/123456 Reply STOP to opt out."
    sms = track_outbound(_row("sms"), SPEC, OutboundSMS(to="+447700900123", body=body, key="k"))
    (link,) = re.findall(rf"{re.escape(BASE)}/c/\S+", sms.body)
    assert links.verify_click_token(link.rsplit("/", 1)[1]) == (77, "https://shop.example.com/cart/123456")
    assert sms_segments(sms.body)["segments"] == 1  # still one GSM-7 segment
    push = OutboundPush(endpoint="https://push.example/x", p256dh="p", auth="a", key="k",
                        payload={"title": "T", "body": "B", "url": "https://shop.example.com/p/X"})
    tracked = track_outbound(_row("push", step="reminder_1"), SPEC, push)
    assert tracked.payload["url"].startswith(f"{BASE}/c/") and untrack(tracked.payload["url"]) == "https://shop.example.com/p/X"
    assert tracked.payload["title"] == "T"


def test_transactional_messages_and_tracking_false_are_not_tracked():
    email = OutboundEmail(to="a@example.com", subject="S", text="https://shop.example.com/p/A",
                          html="<body><a href='https://shop.example.com/p/A'>A</a></body>", message_id="<m>")
    assert track_outbound(_row("email", kind="transactional"), SPEC, email) is email
    off = dataclasses.replace(SPEC, steps=tuple(dataclasses.replace(s, tracking=False) for s in SPEC.steps))
    assert track_outbound(_row("email"), off, email) is email
    assert track_outbound(_row("email"), SPEC, email) != email


def test_the_tracking_key_in_segment_headers(tmp_path):
    source = (SEGMENTS_DIR / "cart_abandonment.sql").read_text()
    marker = "template: cart_abandonment/reminder_2}"  # a step written in flow style
    assert marker in source
    path = tmp_path / "cart_abandonment.sql"
    path.write_text(source.replace(marker, marker[:-1] + ", tracking: false}", 1))
    spec = load_spec(path)
    assert [s.tracking for s in spec.steps] == [True, False] + [True] * (len(spec.steps) - 2)
    assert all(e.tracking for e in spec.exits)
    path.write_text(source.replace(marker, marker[:-1] + ", tracking: 'no'}", 1))
    with pytest.raises(SpecError, match=r"steps\[1\] \(reminder_2\)\.tracking: true or false, got 'no'"):
        load_spec(path)


# ----------------------------------------------------------------------------- who fetched it
@pytest.mark.parametrize(("kind", "method", "ua", "client", "expected"), [
    ("open", "GET", IPHONE_MAIL, "203.0.113.9", "human"),
    ("open", "GET", "Mozilla/5.0", "203.0.113.9", "privacy_proxy"),  # Apple MPP's prefetch
    ("open", "GET", None, "203.0.113.9", "privacy_proxy"),
    ("open", "GET", IPHONE_MAIL, "17.58.63.10", "privacy_proxy"),  # from Apple's network
    ("open", "GET", IPHONE_MAIL, "::ffff:17.58.63.10", "privacy_proxy"),
    ("open", "GET", "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
     "66.249.84.1", "privacy_proxy"),
    ("open", "GET", "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", None, "privacy_proxy"),
    ("open", "GET", "Mozilla/5.0 (compatible; Barracuda Sentinel)", None, "scanner"),
    ("click", "GET", CHROME, "203.0.113.9", "human"),
    ("click", "GET", CHROME, "17.58.63.10", "human"),  # Apple's network clicks are people (Private Relay)
    ("click", "HEAD", CHROME, None, "scanner"),
    ("click", "GET", "Mozilla/5.0 (compatible; Microsoft Defender SafeLinks)", None, "scanner"),
    ("click", "GET", "Proofpoint URL Defense", None, "scanner"),
    ("click", "GET", "Mimecast URL Protect", None, "scanner"),
    ("click", "GET", None, None, "bot"),
    ("click", "GET", "curl/8.5.0", None, "bot"),
    ("click", "GET", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", None, "bot"),
    ("click", "GET", "Slackbot-LinkExpanding 1.0", None, "bot"),
])
def test_classify(kind, method, ua, client, expected):
    assert classify(kind, method, ua, client) == expected


# ----------------------------------------------------------------------------- through the service
@pytest.fixture(scope="module")
def sent(shop_db, tmp_path_factory):
    """One real cart_abandonment hour: emails on a real SMTP server (and their messages rows),
    then the web service on the same warehouse."""
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    smtp = RecordingSMTPServer()
    smtp.start()
    try:
        run_interval(engine, SPEC, anchor - timedelta(hours=1), anchor,
                     lambda name: EmailChannel("127.0.0.1", smtp.port))
        emails = [m.message() for m in smtp.messages]
    finally:
        smtp.stop()
    with engine.connect() as conn:
        by_header = {message_id_for(key): (mid, cid) for mid, key, cid in conn.execute(sa.text(
            "SELECT message_id, idempotency_key, customer_id::bigint FROM lifecycle.messages WHERE status = 'sent'"))}
    assert len(emails) >= 2
    log_path = tmp_path_factory.mktemp("tracking") / "service.log"
    with web_service_process(engine, log_path) as service:
        yield SimpleNamespace(engine=engine, emails=emails, by_header=by_header, service=service, planted=planted)


@pytest.fixture()
def clean(sent):
    with sent.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM lifecycle.engagement"))
    return sent


def engagement(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT message_id, journey, step, channel, customer_id, kind, url, agent_class, is_human "
            "FROM lifecycle.engagement ORDER BY engagement_id"))]


def parts(message) -> tuple[str, str]:
    found = {p.get_content_type(): p.get_content() for p in message.walk() if not p.is_multipart()}
    return found["text/plain"], found["text/html"]


def local(url: str) -> str:
    """The service's path for a link that points at the shop's web front."""
    parts_ = urlsplit(url)
    assert f"{parts_.scheme}://{parts_.netloc}" == BASE
    return parts_.path + (f"?{parts_.query}" if parts_.query else "")


def test_an_emails_links_all_point_at_the_redirect_and_a_click_lands_its_row(clean):
    engine, service = clean.engine, clean.service
    case = clean.planted["cart_recent"]
    (email,) = [m for m in clean.emails if m["To"] == case.email]
    message_id, customer_id = clean.by_header[email["Message-ID"]]
    text, html = parts(email)
    found = anchors(html)
    web = [h for h in found.hrefs if h.startswith(("http://", "https://"))]
    own = [h for h in web if urlsplit(h).path in ("/unsubscribe", "/preferences")]
    assert len(own) == 2 and len(web) > 3
    assert all(h.startswith(f"{BASE}/c/") for h in web if h not in own)
    assert [u for u in re.findall(r"https?://\S+", text) if "/c/" not in u and "/unsubscribe" not in u
            and "/preferences" not in u] == []
    assert email["List-Unsubscribe"].startswith(f"<{BASE}/unsubscribe?t=")  # RFC 8058 untouched
    (pixel,) = [i["src"] for i in found.images if i.get("width") == "1"]

    product = next(h for h in web if "/p/" in untrack(h))
    response = service.client.get(local(product), headers={"User-Agent": CHROME})
    assert response.status_code == 302 and response.headers["location"] == untrack(product)
    assert urlsplit(response.headers["location"]).netloc == urlsplit(BASE).netloc
    assert engagement(engine) == [
        (message_id, "cart_abandonment", "reminder_1", "email", str(customer_id), "click", untrack(product), "human", True),
        (message_id, "cart_abandonment", "reminder_1", "email", str(customer_id), "open", None, "human", True),
    ]  # a human click counts as the open none was recorded for

    assert service.client.get(local(pixel), headers={"User-Agent": IPHONE_MAIL}).status_code == 200
    assert service.client.get(local(product), headers={"User-Agent": CHROME}).status_code == 302
    kinds = [(r[5], r[7]) for r in engagement(engine)]
    assert kinds[2:] == [("open", "human"), ("click", "human")]  # every request a row; no second implied open


def test_the_pixel_is_a_real_gif_that_is_never_cached_and_mpp_is_not_human(clean):
    engine, service = clean.engine, clean.service
    message_id = next(iter(clean.by_header.values()))[0]
    path = f"/o/{links.open_token(message_id)}.gif"
    response = service.client.get(path, headers={"User-Agent": "Mozilla/5.0"})  # Apple MPP's prefetch
    body = response.content
    assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    assert body[:6] == b"GIF89a" and int.from_bytes(body[6:8], "little") == int.from_bytes(body[8:10], "little") == 1
    assert body.endswith(b";") and len(body) == 42
    assert "no-store" in response.headers["cache-control"] and "no-cache" in response.headers["cache-control"]
    assert response.headers["pragma"] == "no-cache" and response.headers["expires"] == "0"
    service.client.get(path, headers={"User-Agent": IPHONE_MAIL, "X-Forwarded-For": "17.58.63.10"})  # Apple's proxy
    service.client.get(path, headers={"User-Agent": IPHONE_MAIL})
    assert [(r[0], r[5], r[7], r[8]) for r in engagement(engine)] == [
        (message_id, "open", "privacy_proxy", False), (message_id, "open", "privacy_proxy", False),
        (message_id, "open", "human", True)]


def test_scanner_clicks_are_recorded_as_scanners_and_imply_no_open(clean):
    engine, service = clean.engine, clean.service
    message_id = next(iter(clean.by_header.values()))[0]
    path = f"/c/{links.click_token(message_id, f'{BASE}/cart/1')}"
    assert service.client.head(path, headers={"User-Agent": CHROME}).status_code == 302
    safe_links = service.client.get(path, headers={"User-Agent": "Microsoft Defender SafeLinks"})
    assert safe_links.status_code == 302 and safe_links.headers["location"] == f"{BASE}/cart/1"
    assert service.client.get(path).status_code == 302  # no User-Agent: a bot
    assert [(r[5], r[7]) for r in engagement(engine)] == [("click", "scanner"), ("click", "scanner"), ("click", "bot")]


def test_tampered_tokens_and_foreign_urls_get_400_and_no_row(clean):
    engine, service = clean.engine, clean.service
    message_id = next(iter(clean.by_header.values()))[0]
    genuine = links.click_token(message_id, f"{BASE}/cart/1")
    forged = _forge(message_id, "https://evil.example/phish", links.click_token(message_id, "https://partner.example.net/a"))
    other_key = hmac.new(b"not our key", b"x", hashlib.sha256).hexdigest()
    for path in (f"/c/{forged}", f"/c/{genuine[:-2]}", f"/c/{genuine}A", f"/c/{links.open_token(message_id)}",
                 f"/o/{genuine}.gif", f"/o/{links.open_token(message_id)[:-1]}.gif", f"/c/{other_key}", "/c/x" * 400):
        response = service.client.get(path, headers={"User-Agent": CHROME})
        assert response.status_code in (400, 404), path
        assert "location" not in response.headers
    assert service.client.get(f"/c/{forged}").status_code == 400
    # the target is never read from the request: a url parameter changes nothing
    redirect = service.client.get(f"/c/{genuine}", params={"url": "https://evil.example/"},
                                  headers={"User-Agent": CHROME})
    assert redirect.headers["location"] == f"{BASE}/cart/1"
    assert [(r[5], r[6]) for r in engagement(engine)] == [("click", f"{BASE}/cart/1"), ("open", None)]
    log = clean.service.log_path.read_text()
    assert genuine not in log and forged not in log and "GET /c/- 400" in log and "GET /c/- 302" in log


def test_a_token_for_a_message_that_no_longer_exists_still_redirects_and_writes_nothing(clean):
    response = clean.service.client.get(f"/c/{links.click_token(10**12, f'{BASE}/p/X')}",
                                        headers={"User-Agent": CHROME})
    assert response.status_code == 302 and response.headers["location"] == f"{BASE}/p/X"
    assert engagement(clean.engine) == []


def test_the_demo_readers_make_real_requests_the_service_classifies(clean, tmp_path):
    """lifecycle demo's simulated readers, on this module's emails, through the service as the
    demo starts it: seeded (the same requests twice), and every class of reader ends up in
    lifecycle.engagement as the service judged it."""
    from lifecycle_demo import engagement as readers

    outbox = tmp_path / "outbox"
    outbox.mkdir()
    for i, message in enumerate(clean.emails):
        (outbox / f"{i:04}.eml").write_bytes(message.as_bytes())
    sms = tmp_path / "sms.jsonl"
    sms.write_text(json.dumps({"body": track_text(f"Checkout: {BASE}/cart/1", next(iter(clean.by_header.values()))[0],
                                                  BASE)}) + "\n")
    likely = readers.Readers(open_rate=0.6, click_rate=0.6, apple_mail_share=0.4, scanned_share=0.3,
                             sms_click_rate=1.0)  # a small outbox: make every kind of reader likely
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    url = clean.engine.url.render_as_string(hide_password=False)
    with readers.web_service(url, env, tmp_path / "service.log") as port:  # the demo's own launcher
        first = readers.simulate(port, outbox, sms, tmp_path / "none.jsonl", 3, likely)
        rows = engagement(clean.engine)
        again = readers.simulate(port, outbox, sms, tmp_path / "none.jsonl", 3, likely)
    assert first == again and first["opens"] and first["email clicks"] and first["SMS clicks"] == 1
    classes = Counter((r[5], r[7]) for r in rows)
    assert classes[("open", "privacy_proxy")] == first["Mail Privacy Protection prefetches"]
    assert classes[("click", "scanner")] == first["scanner requests"]
    assert classes[("click", "human")] == first["email clicks"] + first["SMS clicks"]
    assert classes[("open", "human")] >= first["opens"]  # plus the opens human clicks imply
    assert "cart_abandonment" in readers.engagement_table(clean.engine)


def test_tracking_false_sends_the_email_untracked(shop_db, smtp_server):
    engine, planted, anchor = shop_db
    off = dataclasses.replace(SPEC, steps=tuple(dataclasses.replace(s, tracking=False) for s in SPEC.steps))
    reset_lifecycle(engine)
    run_interval(engine, off, anchor - timedelta(hours=1), anchor, lambda name: EmailChannel("127.0.0.1", smtp_server.port))
    assert smtp_server.messages
    for received in smtp_server.messages:
        text, html = parts(received.message())
        assert "/c/" not in html and "/o/" not in html and "/c/" not in text
        assert any("/p/" in h for h in anchors(html).hrefs)
