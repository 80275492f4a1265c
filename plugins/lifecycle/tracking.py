"""Tracked opens and clicks: links rewritten through our own redirect, an open pixel, and who
fetched them.

At send time (lifecycle.send calls `track_outbound` once, after the dry-run branch: a dry run
delivers nothing, so it tracks nothing) every *marketing* message's links go through the web
service (lifecycle.web_service), which the shop's web front routes like /unsubscribe:

    email  each ``<a href>`` of the HTML part and each URL of the text part -> ``<shop>/c/<token>``,
           and a 1x1 pixel ``<shop>/o/<token>.gif`` just before ``</body>``
    SMS    each URL of the body -> ``/c/<token>``
    push   the click action (the payload's ``url``) -> ``/c/<token>``

Not rewritten: the unsubscribe and preferences links (RFC 8058 and the stay choice answer there
themselves, and a scanner fetching them must not count as a click), ``mailto:``, ``tel:``,
anchors and any other non-http(s) link, and links already tracked. Transactional messages
(order and shipping notices) are never tracked. A step (or an exit's ``then:``) with
``tracking: false`` turns it off for its template.

Tokens (lifecycle.links): signed, naming the message and, for a click, the target URL, so the
redirect goes only where the message pointed (no open redirect). Each request writes one
lifecycle.engagement row with the message's journey, mode, step, channel and customer.

Who fetched it (`classify`), first rule that matches:

    1. HEAD request                                  scanner   (browsers and mail clients GET)
    2. User-Agent names a security scanner           scanner   (Microsoft Defender / Safe Links,
       (SCANNER_MARKERS)                                        Proofpoint, Mimecast, Barracuda, ...)
    3. open: an image proxy's User-Agent             privacy_proxy (Google image proxy, Yahoo)
    4. open: Apple Mail Privacy Protection           privacy_proxy: a client address in Apple's
                                                     17.0.0.0/8, or a User-Agent that is exactly
                                                     "Mozilla/5.0" or missing (MPP's prefetch)
    5. click without a User-Agent                    bot
    6. User-Agent of a tool, crawler or preview      bot       (BOT_MARKERS: curl, python-, ...bot)
    7. anything else                                 human

Only ``human`` rows count in funnels. The client address comes from the connection, or from
X-Forwarded-For when the web front is a trusted proxy (uvicorn's --forwarded-allow-ips); it is
used for the rule and never stored, nor is the User-Agent.

A human click also records a human open of the message when none was recorded yet (a click
proves the message was read: images were blocked, the click came from the text part, or an
Apple MPP prefetch was the only open). Every request is its own row: repeated opens and clicks
are kept; funnels count distinct messages.
"""

from __future__ import annotations

import base64
import functools
import html as html_lib
import ipaddress
import logging
import re
from dataclasses import replace
from datetime import datetime
from typing import Any

import markupsafe
import sqlalchemy as sa

from lifecycle.config import SHOP
from lifecycle.links import click_token, open_token, signing_key, verify_click_token
from lifecycle.model import AgentClass, EngagementKind
from lifecycle.sql import query

log = logging.getLogger(__name__)
RECORD_SQL = query("record_engagement")
_LOCK_CLASS = 7_412_012  # pg_advisory_xact_lock(class, message): one implied open per message

# A transparent 1x1 GIF (42 bytes), answered by /o/<token>.gif.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# The pixel must be fetched on every open, never from a cache between us and the reader.
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
            "Pragma": "no-cache", "Expires": "0"}

# The open pixel, just before </body>.
PIXEL_TAG = ('<img src="{src}" width="1" height="1" alt="" '
             'style="display:block;border:0;width:1px;height:1px;overflow:hidden">')
# Paths of the web service that are never wrapped (see the module doc).
UNTRACKED_PATHS = ("/unsubscribe", "/preferences", "/c/", "/o/")

_HREF = re.compile(r"""(<a\b[^>]*?\shref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.I | re.S)
_URL = re.compile(r"""https?://[^\s<>"'`{}|\\^\[\]]+""", re.I)
_BODY_END = re.compile(r"</body\s*>", re.I)
_TRAILING = ".,;:!?'\""  # sentence punctuation after a URL in text is not part of it


# ----------------------------------------------------------------------------- rewriting
def _base(base_url: str) -> str:
    return base_url.rstrip("/")


@functools.lru_cache(maxsize=8)
def _untracked(base_url: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(exact URLs, URL prefixes) of the service's own pages under `base_url`."""
    base = _base(base_url)
    exact = tuple(f"{base}{p.rstrip('/')}" for p in UNTRACKED_PATHS)
    prefixes = tuple(f"{base}{p}" for p in UNTRACKED_PATHS) + tuple(f"{e}?" for e in exact)
    return exact, prefixes


def is_trackable(url: str, base_url: str) -> bool:
    """An http(s) link that is not one of the service's own pages (unsubscribe, preferences,
    a tracked link)."""
    if not url[:8].lower().startswith(("http://", "https://")):
        return False
    exact, prefixes = _untracked(base_url)
    return url not in exact and not url.startswith(prefixes)


# The rewriting functions take `key` (the signing key) once for all of a message's links; left
# out, each token reads it from the settings.
def track_url(url: str, message_id: int, base_url: str, *, key: str | None = None) -> str:
    """`url` through the click redirect (unchanged when it is not to be tracked)."""
    if not is_trackable(url, base_url):
        return url
    return f"{_base(base_url)}/c/{click_token(message_id, url, base_url, key=key)}"


def pixel_url(message_id: int, base_url: str, *, key: str | None = None) -> str:
    return f"{_base(base_url)}/o/{open_token(message_id, key=key)}.gif"


def track_html(html: str, message_id: int, base_url: str, *, key: str | None = None) -> str:
    """Every ``<a href>`` http(s) link through /c/ and the open pixel before ``</body>`` (at the
    end when there is none). Attribute values are HTML-unescaped to get the URL the reader's
    client would open (``&amp;`` in a query string)."""

    def href(match: re.Match) -> str:
        value = match.group(2) if match.group(2) is not None else match.group(3)
        url = html_lib.unescape(value).strip()
        tracked = track_url(url, message_id, base_url, key=key)
        if tracked == url:
            return match.group(0)
        quote = '"' if match.group(2) is not None else "'"
        return f"{match.group(1)}{quote}{html_lib.escape(tracked)}{quote}"

    rewritten = _HREF.sub(href, html)
    pixel = PIXEL_TAG.format(src=html_lib.escape(pixel_url(message_id, base_url, key=key)))
    ends = list(_BODY_END.finditer(rewritten))
    if not ends:
        return rewritten + pixel
    at = ends[-1].start()
    return rewritten[:at] + pixel + rewritten[at:]


def _split_trailing(url: str) -> tuple[str, str]:
    """A URL found in text and the punctuation after it that belongs to the sentence (a closing
    parenthesis too, unless the URL opened one)."""
    end = len(url)
    while end and (url[end - 1] in _TRAILING or (url[end - 1] == ")" and url[:end].count("(") < url[:end].count(")"))):
        end -= 1
    return url[:end], url[end:]


def track_text(text: str, message_id: int, base_url: str, *, key: str | None = None) -> str:
    """Every http(s) URL of a text part or SMS body through /c/ (the sentence's punctuation
    after it stays outside the link)."""

    def one(match: re.Match) -> str:
        url, after = _split_trailing(match.group(0))
        return track_url(url, message_id, base_url, key=key) + after

    return _URL.sub(one, text)


def untrack(text: str, base_url: str | None = None, *, html: bool = False) -> str:
    """`text` (a text part, an SMS, a URL; an HTML part with ``html=True``) as it was before
    tracking: every tracked link that verifies replaced by its target (HTML-escaped as the
    templates escape it) and the open pixel removed. For previews and tests:
    ``untrack(track_html(h, ...), html=True) == h`` for a rendered template's HTML."""
    base = _base(base_url or SHOP["base_url"])
    link = re.compile(re.escape(base) + r"/c/([A-Za-z0-9_-]+)")

    def one(match: re.Match) -> str:
        verified = verify_click_token(match.group(1), base)
        if not verified:
            return match.group(0)
        return str(markupsafe.escape(verified[1])) if html else verified[1]

    if html:
        pixel = re.escape(PIXEL_TAG).replace(re.escape("{src}"), re.escape(base) + r"/o/[A-Za-z0-9_-]+\.gif")
        text = re.sub(pixel, "", text)
    return link.sub(one, text)


# ----------------------------------------------------------------------------- at send time
def tracking_on(spec: Any, step: str) -> bool:
    """False when the message's step (or exit message) says ``tracking: false``."""
    for s in spec.steps:
        if s.name == step:
            return s.tracking
    for e in spec.exits:
        if e.message_step == step:
            return e.tracking
    return True


def track_outbound(row: Any, spec: Any, outbound: Any, base_url: str | None = None, *, key: str | None = None) -> Any:
    """The message about to be delivered with its links tracked (see the module doc); the same
    object when it is not tracked (transactional, `tracking: false`, a channel without links).
    It runs on a claimed message, so it never raises: should rewriting fail, the message goes
    out untracked (logged) rather than leave a claim whose outcome looks unknown."""
    if row.kind != "marketing" or not tracking_on(spec, row.step):
        return outbound
    try:
        return _tracked(row, outbound, base_url or SHOP["base_url"], key)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.error("message %s (%s/%s) goes out untracked: %s: %s", row.message_id, row.journey, row.step,
                  type(exc).__name__, exc)
        return outbound


def _tracked(row: Any, outbound: Any, base: str, key: str | None = None) -> Any:
    key = key or signing_key()  # given by a send task that checked it once for the batch
    if row.channel == "email":
        return replace(outbound, html=track_html(outbound.html, row.message_id, base, key=key),
                       text=track_text(outbound.text, row.message_id, base, key=key))
    if row.channel == "sms":
        return replace(outbound, body=track_text(outbound.body, row.message_id, base, key=key))
    if row.channel == "push" and isinstance(outbound.payload.get("url"), str):
        return replace(outbound, payload={**outbound.payload,
                                          "url": track_url(outbound.payload["url"], row.message_id, base, key=key)})
    return outbound


# ----------------------------------------------------------------------------- who fetched it
SCANNER_MARKERS = (
    "safelinks", "safe links", "microsoft defender", "defender for office", "ms-office-atp", "atp scanner",
    "proofpoint", "ppops", "mimecast", "barracuda", "symantec", "messagelabs", "ironport", "cisco secure email",
    "forcepoint", "websense", "fireeye", "trellix", "trend micro", "trendmicro", "sophos", "zscaler",
    "bitdefender", "check point", "checkpoint", "appriver", "vadesecure", "vade secure", "cloudmark",
    "spamtitan", "hornetsecurity", "sonicwall", "fortimail", "fortiguard", "libraesva", "securence",
)
IMAGE_PROXY_MARKERS = ("googleimageproxy", "ggpht.com", "yahoomailproxy")
BOT_MARKERS = (
    "bot", "crawl", "spider", "slurp", "curl/", "wget/", "python-", "python/", "aiohttp", "httpx", "go-http-client",
    "java/", "okhttp", "libwww", "httpclient", "headlesschrome", "phantomjs", "scrapy", "facebookexternalhit",
    "whatsapp", "preview", "monitor", "checker",
)
APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
MPP_USER_AGENTS = ("", "mozilla/5.0")  # what Apple's prefetching proxy sends (bare, or nothing)


def _in_apple_network(client: str | None) -> bool:
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address in APPLE_NETWORK


def classify(kind: str, method: str, user_agent: str | None, client: str | None = None) -> AgentClass:
    """Who made this request to the pixel (kind 'open') or the redirect ('click'): the rules of
    the module doc, in order."""
    ua = (user_agent or "").strip().lower()
    if method.upper() == "HEAD" or any(m in ua for m in SCANNER_MARKERS):
        return AgentClass.SCANNER
    if kind == EngagementKind.OPEN:
        if any(m in ua for m in IMAGE_PROXY_MARKERS) or ua in MPP_USER_AGENTS or _in_apple_network(client):
            return AgentClass.PRIVACY_PROXY
    elif not ua:
        return AgentClass.BOT
    if any(m in ua for m in BOT_MARKERS):
        return AgentClass.BOT
    return AgentClass.HUMAN


# ----------------------------------------------------------------------------- recording
def record(conn: sa.Connection, message_id: int, kind: str, agent_class: str, occurred_at: datetime,
           url: str | None = None) -> tuple[int, int]:
    """Write the request's lifecycle.engagement row (and a human click's implied open): returns
    (rows recorded, implied opens); (0, 0) when the message does not exist. Run it in a
    transaction: the per-message lock holds until it ends."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, CAST(:m % 2147483647 AS integer))"),
                 {"k": _LOCK_CLASS, "m": message_id})
    row = conn.execute(sa.text(RECORD_SQL), {"message_id": message_id, "kind": str(kind), "url": url,
                                             "agent_class": str(agent_class), "occurred_at": occurred_at}).one()
    return int(row.recorded), int(row.implied_opens)
