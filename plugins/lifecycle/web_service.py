"""The lifecycle web service: RFC 8058 one-click unsubscribe and the manual page, the
preferences page, and the tracked open pixel and click redirect (lifecycle.tracking).

Its own small process (not part of Airflow), next to the warehouse::

    python -m lifecycle.web_service --host 0.0.0.0 --port 8090 [--warehouse-url URL]

The warehouse comes from ``--warehouse-url`` or from the Airflow connection the tasks use,
``AIRFLOW_CONN_LIFECYCLE_WAREHOUSE`` (JSON or URI form). Every marketing email carries
``List-Unsubscribe: <{SHOP base_url}/unsubscribe?t=TOKEN>, <mailto:...>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (lifecycle.send); the shop's web
front routes ``/unsubscribe``, ``/preferences``, ``/o/`` and ``/c/`` to this service. TOKEN is the opaque, authenticated token of
lifecycle.links (customer id and channel inside, nothing readable).

Routes:

``POST /unsubscribe?t=TOKEN`` with body ``List-Unsubscribe=One-Click``
    What Gmail, Yahoo & co. send (form-urlencoded or multipart). Records
    lifecycle.suppressions (reason 'unsubscribe', source 'one_click') and answers
    200 text/plain. Never a redirect.
``GET /unsubscribe?t=TOKEN``
    A confirmation page. Changes nothing: mail scanners and link previews fetch URLs.
``POST /unsubscribe?t=TOKEN`` with body ``confirm=yes``
    The page's form: records the suppression (source 'unsubscribe_page') and shows
    "you're unsubscribed".
``GET /preferences?t=STAY_TOKEN``
    "Do you want to keep hearing from us?": a page with a button (and a link to unsubscribe
    instead). Changes nothing, for the same reason as above.
``POST /preferences?t=STAY_TOKEN`` with body ``choice=stay``
    Records the choice in lifecycle.preference_choices (source 'preferences_page') and
    lifts the customer's active 'no_response' sunset on that channel (lifecycle.suppression);
    win_back's ``chose_to_stay`` exit then spares them its stop_emailing step. A stay token
    is signed for that purpose only: an unsubscribe token is refused here and vice versa.
``GET /o/TOKEN.gif``
    The open pixel of a tracked email: records an 'open' in lifecycle.engagement for the
    message the token names, with the agent class of the request (Apple Mail Privacy
    Protection and image proxies are ``privacy_proxy``, see lifecycle.tracking), and answers a
    1x1 GIF with no-cache headers. A token that does not verify gets 400 and no row; the
    image is answered even when the warehouse cannot be written (logged), so no mail client
    shows a broken image.
``GET /c/TOKEN``
    A tracked link: records a 'click' (and, for a human, the open if none was recorded yet)
    and answers 302 to the URL the token was signed with: only URLs one of our messages
    contained, never one taken from the request (no open redirect). A tampered token, or one
    naming another URL, gets 400 and no row. HEAD (link scanners) is answered the same way,
    recorded as a scanner.
``GET /health``
    200 ``ok`` when the warehouse answers ``SELECT 1``, else 503.

A token that does not verify (tampered, truncated, signed with another key or for another
purpose) gets 400 and writes nothing; so does a POST whose body is none of the above.
Unsubscribing is idempotent (ON CONFLICT DO NOTHING): repeating any request is harmless, and
an older active suppression of the same (customer, channel), e.g. a hard bounce, is kept as
it is, except a sunset ('no_response'), which an unsubscribe supersedes (the sunset row is
closed with lifted_reason 'superseded', so no later order can lift the unsubscribe with it).
The send-time checks (lifecycle.send) read lifecycle.suppressions before every message,
so an unsubscribe stops all later marketing on that channel; transactional messages
(order confirmations, shipping notices) still go out.

Logs carry no tokens, addresses or query strings: uvicorn's access log is off and our own
access line names the route, never the URL.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import jinja2
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from lifecycle import tracking
from lifecycle.channels import CHANNELS
from lifecycle.config import SHOP, TEMPLATES_DIR
from lifecycle.links import (
    signing_key,
    unsubscribe_token,
    verify_click_token,
    verify_open_token,
    verify_stay_token,
    verify_unsubscribe_token,
)
from lifecycle.model import EngagementKind
from lifecycle.suppression import lift_for_stay_choice, record_unsubscribe
from lifecycle.warehouse import CONN_ENV, warehouse_url

log = logging.getLogger("lifecycle.web")
access_log = logging.getLogger("lifecycle.web.access")

PAGES_DIR = TEMPLATES_DIR / "_unsubscribe"
MAX_BODY = 16 * 1024  # the one-click body is 26 bytes; the page's form, 11
MAX_TOKEN = 1024  # our tokens are ~120 characters
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# What the pages call a consent that is not a message channel ("Unsubscribe from ...?"): ads
# (lifecycle.audiences keeps Meta custom audiences to those with it). Channels label themselves.
CONSENT_LABELS = {"ads": "personalised ads"}

# Sent with every response: no caching of pages carrying a token in their URL, no Referer
# leaving with it, no framing, no indexing, nothing loaded from anywhere.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

# The routes the access log may name; anything else is logged as "-" (paths are user input).
_ROUTES = ("/unsubscribe", "/unsubscribe/", "/preferences", "/preferences/", "/health")
_TRACKED = ("/o/", "/c/")  # logged as "/o/-" and "/c/-": the rest of the path is the token

RECORD_STAY_SQL = sa.text(
    """
    INSERT INTO lifecycle.preference_choices (customer_id, channel, choice, source, chosen_at)
    VALUES (:customer_id, :channel, 'stay', :source, :chosen_at)
    RETURNING choice_id
    """
)

ERRORS = {
    "invalid_link": (
        "This link is not valid",
        "The unsubscribe link may have been cut short or changed when it was copied. "
        "Please use the link at the bottom of one of our recent messages.",
    ),
    "bad_request": (
        "Nothing was changed",
        "We could not read this request. Please use the button on the unsubscribe page.",
    ),
    "invalid_tracked_link": (
        "This link is not valid",
        "The link may have been cut short or changed when it was copied. "
        "Please use the link in one of our recent messages, or visit our shop.",
    ),
    "unavailable": (
        "Please try again in a few minutes",
        "We could not record your request just now. Nothing was changed.",
    ),
}


class _Invalid(Exception):
    """The request cannot be honoured as sent (answered 400, or 413 for a huge body)."""

    def __init__(self, status: int = 400):
        super().__init__(status)
        self.status = status


# ---------------------------------------------------------------------------- the app
def create_app(engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Starlette:
    """The ASGI app, writing suppressions through ``engine`` (one engine per process).
    ``clock`` dates a stay choice: the wall clock, or a simulation's time in a replay."""
    pages = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PAGES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        html = pages.get_template(name).render(shop=SHOP, **context)
        return HTMLResponse(html, status_code=status)

    def error_page(kind: str, status: int) -> HTMLResponse:
        title, message = ERRORS[kind]
        return page("error.html", status, title=title, message=message)

    def suppress(customer_id: str, channel: str, source: str) -> bool:
        with engine.begin() as conn:
            return record_unsubscribe(conn, customer_id, channel, source)

    def record_stay(customer_id: str, channel: str, source: str) -> bool:
        """Record the choice and end an active sunset on the channel; True if one was lifted."""
        chosen_at = clock()
        with engine.begin() as conn:
            choice_id = conn.execute(RECORD_STAY_SQL, {"customer_id": customer_id, "channel": channel,
                                                       "source": source, "chosen_at": chosen_at}).scalar_one()
            return lift_for_stay_choice(conn, customer_id, channel, choice_id, chosen_at) == 1

    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()

    async def unsubscribe(request: Request) -> Response:
        token = request.query_params.get("t", "")
        if request.method in ("GET", "HEAD"):
            subject = _verify(token)
            if subject is None:
                log.info("unsubscribe page: invalid token")
                return error_page("invalid_link", 400)
            return page("confirm.html", token=token, what=_label(subject[1]))

        try:
            form = await _read_form(request)
        except _Invalid as exc:
            log.info("unsubscribe POST: unreadable body")
            return PlainTextResponse("Bad request.\n", status_code=exc.status)
        one_click = form.get("List-Unsubscribe") == "One-Click"
        confirmed = form.get("confirm") == "yes"
        if not (one_click or confirmed):
            log.info("unsubscribe POST: neither List-Unsubscribe=One-Click nor confirm=yes")
            if "confirm" in form:
                return error_page("bad_request", 400)
            return PlainTextResponse("Bad request: expected List-Unsubscribe=One-Click.\n", status_code=400)

        subject = _verify(token)
        if subject is None:
            log.info("unsubscribe POST (%s): invalid token", "one-click" if one_click else "page")
            if one_click:
                return PlainTextResponse("Invalid unsubscribe link.\n", status_code=400)
            return error_page("invalid_link", 400)

        customer_id, channel = subject
        source = "one_click" if one_click else "unsubscribe_page"
        try:
            new = await run_in_threadpool(suppress, customer_id, channel, source)
        except sa.exc.SQLAlchemyError as exc:
            hint = ""
            if getattr(getattr(exc, "orig", None), "pgcode", None) == "42P01":  # undefined_table
                hint = " - lifecycle.suppressions is missing: migrate the warehouse (`lifecycle.schema.migrate`)"
            log.error("could not record an unsubscribe (%s, channel %s): %s%s", source, channel,
                      type(exc).__name__, hint)
            if one_click:
                return PlainTextResponse("Temporarily unavailable, please retry.\n", status_code=503,
                                         headers={"Retry-After": "60"})
            return error_page("unavailable", 503)
        log.info("unsubscribe recorded: customer %s, channel %s, source %s (%s)", customer_id, channel,
                 source, "new" if new else "already suppressed")
        if one_click:
            return PlainTextResponse("You have been unsubscribed.\n")
        return page("done.html", what=_label(channel))

    async def preferences(request: Request) -> Response:
        """GET: the question and a button (link scanners fetch URLs, so a GET records nothing);
        POST choice=stay: record it."""
        token = request.query_params.get("t", "")
        subject = _verify(token, verify_stay_token)
        if request.method in ("GET", "HEAD"):
            if subject is None:
                log.info("preferences page: invalid token")
                return error_page("invalid_link", 400)
            customer_id, channel = subject
            unsubscribe = f"/unsubscribe?t={unsubscribe_token(customer_id, channel)}"
            return page("preferences.html", token=token, what=_label(channel), unsubscribe=unsubscribe)
        try:
            form = await _read_form(request)
        except _Invalid as exc:
            log.info("preferences POST: unreadable body")
            return PlainTextResponse("Bad request.\n", status_code=exc.status)
        if form.get("choice") != "stay":
            log.info("preferences POST: no choice=stay")
            return error_page("bad_request", 400)
        if subject is None:
            log.info("preferences POST: invalid token")
            return error_page("invalid_link", 400)
        customer_id, channel = subject
        try:
            lifted = await run_in_threadpool(record_stay, customer_id, channel, "preferences_page")
        except sa.exc.SQLAlchemyError as exc:
            log.error("could not record a stay choice (channel %s): %s", channel, type(exc).__name__)
            return error_page("unavailable", 503)
        log.info("stay choice recorded: customer %s, channel %s (%s)", customer_id, channel,
                 "sunset lifted" if lifted else "no active sunset")
        return page("stay_done.html", what=_label(channel))

    def record_engagement(message_id: int, kind: str, agent: str, url: str | None) -> tuple[int, int]:
        with engine.begin() as conn:
            return tracking.record(conn, message_id, kind, agent, clock(), url)

    async def engage(request: Request, message_id: int, kind: str, url: str | None = None) -> None:
        """Write the request's engagement row. A failure is logged, never shown: the reader
        still gets the image or the page they asked for."""
        agent = tracking.classify(kind, request.method, request.headers.get("user-agent"),
                                  request.client.host if request.client else None)
        try:
            recorded, implied = await run_in_threadpool(record_engagement, message_id, kind, agent, url)
        except sa.exc.SQLAlchemyError as exc:
            log.error("could not record a tracked %s (message %s): %s", kind, message_id, type(exc).__name__)
            return
        if not recorded:
            log.info("tracked %s for message %s, which does not exist: nothing recorded", kind, message_id)
        else:
            log.info("%s recorded: message %s, %s%s", kind, message_id, agent, " (and its open)" if implied else "")

    async def open_pixel(request: Request) -> Response:
        token = request.path_params["token"]
        message_id = verify_open_token(token) if len(token) <= MAX_TOKEN else None
        if message_id is None:
            log.info("open pixel: invalid token")
            return PlainTextResponse("Invalid link.\n", status_code=400)
        await engage(request, message_id, EngagementKind.OPEN)
        return Response(tracking.PIXEL_GIF, media_type="image/gif", headers=tracking.NO_CACHE)

    async def click(request: Request) -> Response:
        """302 to the URL the token was signed with: the request itself never names a target."""
        token = request.path_params["token"]
        verified = verify_click_token(token) if len(token) <= MAX_TOKEN else None
        if verified is None or not verified[1].lower().startswith(("https://", "http://")):
            log.info("click: invalid token")
            return error_page("invalid_tracked_link", 400)
        message_id, url = verified
        await engage(request, message_id, EngagementKind.CLICK, url)
        return RedirectResponse(url, status_code=302, headers=tracking.NO_CACHE)

    async def health(request: Request) -> Response:
        try:
            await run_in_threadpool(ping)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("health: warehouse not reachable (%s)", type(exc).__name__)
            return PlainTextResponse("warehouse unavailable\n", status_code=503)
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            # Both spellings answered directly: a POST must never be redirected (RFC 8058).
            Route("/unsubscribe", unsubscribe, methods=["GET", "POST"]),
            Route("/unsubscribe/", unsubscribe, methods=["GET", "POST"]),
            Route("/preferences", preferences, methods=["GET", "POST"]),
            Route("/preferences/", preferences, methods=["GET", "POST"]),
            Route("/o/{token}.gif", open_pixel, methods=["GET"]),
            Route("/c/{token}", click, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[Middleware(_HeadersAndAccessLog)],
    )
    app.router.redirect_slashes = False
    return app


def _verify(token: str, verify: Callable[[str], tuple[str, str] | None] = verify_unsubscribe_token,
            ) -> tuple[str, str] | None:
    if not token or len(token) > MAX_TOKEN:
        return None
    subject = verify(token)
    if subject is None or not _CHANNEL.match(subject[1]):
        return None
    return subject


def _label(channel: str) -> str:
    if channel in CHANNELS:
        return CHANNELS[channel].label
    return CONSENT_LABELS.get(channel, f"{channel} messages")


async def _read_form(request: Request) -> dict[str, str]:
    """The POST body's fields: form-urlencoded or multipart (RFC 8058 allows both), or a
    bare ``List-Unsubscribe=One-Click`` sent with another content type."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise _Invalid(413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_BODY)
        except Exception as exc:  # malformed multipart, too many parts, a file
            raise _Invalid() from exc
        return {key: value for key, value in form.items() if isinstance(value, str)}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _Invalid(413)
    return dict(parse_qsl(body.decode("utf-8", "replace").strip()))


class _HeadersAndAccessLog:
    """ASGI middleware: security headers on every response, and one access line per request
    naming the route (never the query string, which holds the token)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            path = scope["path"]
            route = path if path in _ROUTES else next((f"{p}-" for p in _TRACKED if path.startswith(p)), "-")
            access_log.info("%s %s %s %.0fms", scope["method"], route, status,
                            (time.perf_counter() - started) * 1000)


# ---------------------------------------------------------------------------- the warehouse
def make_engine(url: URL | str) -> Engine:
    # hide_parameters: errors never echo the bound values into logs.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, hide_parameters=True)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.web_service",
        description="One-click (RFC 8058) and manual unsubscribe, preferences, tracked opens and clicks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    parser.add_argument("--warehouse-url", default=None,
                        help=f"SQLAlchemy URL of the warehouse (default: the Airflow connection in {CONN_ENV})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        signing_key()  # without a sound key every unsubscribe would answer 500, or be forgeable
    except RuntimeError as exc:
        parser.error(f"refusing to start: {exc}")
    try:
        engine = make_engine(warehouse_url(args.warehouse_url))
    except (ValueError, sa.exc.ArgumentError) as exc:
        parser.error(str(exc))
    log.info("lifecycle web service on %s:%s, warehouse database %r", args.host, args.port, engine.url.database)
    try:
        uvicorn.run(create_app(engine), host=args.host, port=args.port, access_log=False,
                    log_level=args.log_level, proxy_headers=True, server_header=False)
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
