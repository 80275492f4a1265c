"""Sunsets that end (issue 8, items 2 and 3), on a small hand-made shop, with real win_back runs
against a real SMTP server and the real web service over HTTP.

win_back's last step (`stop_emailing`, action suppress) writes a 'no_response' suppression.
It must end when the customer comes back (a non-cancelled order or a click after it, before
the run's as_of), keeping its row as history; unsubscribes, hard bounces and complaints never
end that way. And "Yes, keep me subscribed" in email_3 must carry a signed token, be recorded
by the service, and spare the customer the sunset (exit `chose_to_stay`).

Each test gets a fresh database on the embedded PostgreSQL. The runs
are the days on which win_back's steps fall due (a step is sent by the first run whose
interval end is at or after its due time), so a whole sunset takes four runs.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
from conftest import _admin_url, _empty_shop

from lifecycle.channels.email import EmailChannel
from lifecycle.config import SEGMENTS_DIR, SHOP
from lifecycle.links import verify_stay_token, verify_unsubscribe_token
from lifecycle.replay import run_interval
from lifecycle.spec import load_spec
from lifecycle.suppression import lift_sunsets
from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

DAY = timedelta(days=1)
SPEC = load_spec(SEGMENTS_DIR / "win_back.sql")
LAST_ORDER = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # everyone's last order before the lapse
LAPSED = LAST_ORDER + 90 * DAY  # win_back's clock: the day the 90 days ran out
STEP_DAYS = {"email_1": 0, "email_2": 7, "email_3": 14, "stop_emailing": 21}


# ----------------------------------------------------------------------------- a small shop
@pytest.fixture()
def engine(request):
    engine, drop = _empty_shop(_admin_url(request, "embedded"))
    yield engine
    drop()


def add_customer(engine, customer_id: int, *, suppression: str | None = None) -> str:
    """A customer with email consent and one delivered order at LAST_ORDER; optionally an
    (active) suppression written before any run, as the service or a bounce would."""
    email = f"c{customer_id}@example.com"
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, locale, created_at) "
            "VALUES (:c, :e, 'Kim', 'DE', 'Europe/Berlin', 'de_DE', :t)"), {"c": customer_id, "e": email,
                                                                           "t": LAST_ORDER - 400 * DAY})
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, updated_at) "
            "VALUES (:c, 'email', 'opted_in', :t)"), {"c": customer_id, "t": LAST_ORDER - 400 * DAY})
        if suppression:
            conn.execute(sa.text(
                "INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source, since) "
                "VALUES (:c, 'email', :r, 'test', :t)"), {"c": customer_id, "r": suppression,
                                                          "t": LAST_ORDER - 10 * DAY})
    add_order(engine, customer_id * 100, customer_id, LAST_ORDER)
    return email


def add_order(engine, order_id: int, customer_id: int, at: datetime, status: str = "delivered") -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total) "
            "VALUES (:o, :c, :t, :s, :total)"),
            {"o": order_id, "c": customer_id, "t": at, "s": status, "total": Decimal("42.00")})


def add_click(engine, customer_id: int, at: datetime, channel: str = "email") -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.engagement_events (customer_id, message_id, channel, event, occurred_at) "
            "VALUES (:c, NULL, :ch, 'click', :t)"), {"c": customer_id, "ch": channel, "t": at})


def run_day(engine, smtp, end: datetime) -> dict:
    """One daily win_back run for the interval ending at `end` (run at its end, as on time)."""
    return run_interval(engine, SPEC, end - DAY, end, lambda name: EmailChannel("127.0.0.1", smtp.port))


def run_sunset(engine, smtp, lapsed: datetime, steps=("email_1", "email_2", "email_3", "stop_emailing")) -> None:
    """The runs in which win_back's steps fall due for customers who lapsed at `lapsed`."""
    for step in steps:
        run_day(engine, smtp, lapsed + STEP_DAYS[step] * DAY + DAY)


def rows(engine, sql: str, **binds) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), binds)]


def suppression_history(engine, customer_id: int) -> list[tuple]:
    return rows(engine, "SELECT reason, source, since, lifted_at, lifted_reason, lifted_ref "
                        "FROM lifecycle.suppressions WHERE customer_id = :c ORDER BY suppression_id", c=str(customer_id))


def messages(engine, customer_id: int) -> list[tuple]:
    return rows(engine, "SELECT step, status, reason FROM lifecycle.messages WHERE customer_id = :c "
                        "ORDER BY due_at, message_id", c=str(customer_id))


def steps_received(smtp, address: str) -> list[str]:
    return [m.message()["X-Lifecycle-Step"] for m in smtp.messages if address in m.rcpt_tos]


@pytest.fixture()
def smtp():
    with RecordingSMTPServer() as server:
        yield server


# ----------------------------------------------------------------------------- 1. orders lift sunsets
def test_a_sunset_ends_when_the_customer_orders_again_and_history_is_kept(engine, smtp):
    """The sunset customer who orders again gets win_back's thank-you (it used to be suppressed),
    the row shows when and why it was lifted, and lapsing again later writes a NEW sunset row."""
    email = add_customer(engine, 1)
    run_sunset(engine, smtp, LAPSED)
    sunset_at = LAPSED + 22 * DAY  # the as_of of the run that carried out stop_emailing
    assert suppression_history(engine, 1) == [("no_response", "win_back", sunset_at, None, None, None)]
    assert steps_received(smtp, email) == ["email_1", "email_2", "email_3"]

    comeback = sunset_at + 2 * DAY + timedelta(hours=5)  # within the enrollment's 7-day watch
    add_order(engine, 101, 1, comeback)
    run_day(engine, smtp, sunset_at + 3 * DAY)

    assert messages(engine, 1)[-1] == ("thank_you", "sent", None)
    assert steps_received(smtp, email)[-1] == "thank_you"
    assert suppression_history(engine, 1) == [
        ("no_response", "win_back", sunset_at, comeback, "ordered", "101")]

    # 90 days after that order they lapse again: a second sunset is a new row, the first stays lifted.
    lapsed_again = comeback + 90 * DAY
    run_sunset(engine, smtp, lapsed_again.replace(hour=0, minute=0, second=0) + DAY)
    history = suppression_history(engine, 1)
    assert [h[0] for h in history] == ["no_response", "no_response"]
    assert history[0][3:] == (comeback, "ordered", "101")
    assert history[1][3:] == (None, None, None)
    assert steps_received(smtp, email)[-3:] == ["email_1", "email_2", "email_3"]


def test_only_a_sunset_is_lifted_never_an_unsubscribe_bounce_or_complaint(engine, smtp):
    """Four customers lapse together and all order again after win_back's stop_emailing: only
    the one whose suppression is a sunset hears from us again."""
    emails = {c: add_customer(engine, c, suppression=r)
              for c, r in ((2, None), (3, "unsubscribe"), (4, "hard_bounce"), (5, "complaint"))}
    run_sunset(engine, smtp, LAPSED)
    before = {c: suppression_history(engine, c) for c in (3, 4, 5)}
    comeback = LAPSED + 23 * DAY
    for c in emails:
        add_order(engine, 1000 + c, c, comeback)
    run_day(engine, smtp, LAPSED + 24 * DAY)

    assert suppression_history(engine, 2)[0][3:] == (comeback, "ordered", "1002")
    assert steps_received(smtp, emails[2]) == ["email_1", "email_2", "email_3", "thank_you"]
    for c, reason in ((3, "unsubscribe"), (4, "hard_bounce"), (5, "complaint")):
        assert suppression_history(engine, c) == before[c], "a customer's order lifted a " + reason
        assert before[c][0][0] == reason and before[c][0][3] is None
        assert not steps_received(smtp, emails[c])
        assert messages(engine, c)[-1] == ("thank_you", "suppressed", f"suppressed: {reason}")


def test_what_lifts_a_sunset_and_when(engine, smtp):
    """Only a non-cancelled order or a click on the sunset's channel, at or after the sunset
    and before the as_of being (re)played, lifts it; the first of them is recorded."""
    for c in (6, 7, 8, 9, 10):
        add_customer(engine, c)
    run_sunset(engine, smtp, LAPSED)
    sunset_at = LAPSED + 22 * DAY
    assert [r[0] for r in rows(engine, "SELECT customer_id::bigint FROM lifecycle.suppressions "
                                       "WHERE reason = 'no_response' ORDER BY 1")] == [6, 7, 8, 9, 10]
    add_click(engine, 6, sunset_at + DAY)                      # clicked after the sunset: lifted
    add_order(engine, 607, 6, sunset_at + 2 * DAY)             # ... and ordered later (the click came first)
    add_click(engine, 7, sunset_at - timedelta(hours=1))       # clicked before it: not lifted
    add_click(engine, 8, sunset_at + DAY, channel="sms")       # clicked a text, not an email: not lifted
    add_order(engine, 809, 9, sunset_at + DAY, "cancelled")    # a cancelled order: not lifted
    add_order(engine, 1010, 10, sunset_at + 10 * DAY)          # an order after the as_of replayed: not yet

    with engine.begin() as conn:
        assert lift_sunsets(conn, sunset_at + 5 * DAY) == 1
    with engine.begin() as conn:
        assert lift_sunsets(conn, sunset_at + 5 * DAY) == 0  # idempotent
    lifted = rows(engine, "SELECT customer_id::bigint, lifted_at, lifted_reason FROM lifecycle.suppressions "
                          "WHERE lifted_at IS NOT NULL")
    assert lifted == [(6, sunset_at + DAY, "clicked")]
    with engine.begin() as conn:  # a later send batch to customers 7 and 10 sees 10's order
        assert lift_sunsets(conn, sunset_at + 11 * DAY, [7, 10]) == 1
    assert suppression_history(engine, 10)[0][3:] == (sunset_at + 10 * DAY, "ordered", "1010")
    active = rows(engine, "SELECT customer_id::bigint FROM lifecycle.suppressions WHERE lifted_at IS NULL ORDER BY 1")
    assert [c for (c,) in active] == [7, 8, 9]


# ----------------------------------------------------------------------------- 1b. clicks we tracked
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
SAFE_LINKS = "Mozilla/5.0 (compatible; Microsoft Defender SafeLinks)"  # a mail gateway's link scanner
MPP = "Mozilla/5.0"  # Apple Mail Privacy Protection's prefetch of the open pixel


def tracked_links(smtp, address: str, step: str) -> tuple[str, str]:
    """(a tracked click link, the open pixel) of the email `step` to `address`."""
    (mail,) = [m.message() for m in smtp.messages
               if address in m.rcpt_tos and m.message()["X-Lifecycle-Step"] == step]
    html = mail.get_body(("html",)).get_content()
    clicks = re.findall(r'href="(https?://[^"]+/c/[^"]+)"', html)
    (pixel,) = re.findall(r'src="(https?://[^"]+/o/[^"]+\.gif)"', html)
    assert clicks, f"{step} has no tracked link"
    return clicks[0], pixel


def message_of(engine, customer_id: int, step: str) -> int:
    ((message_id,),) = rows(engine, "SELECT message_id FROM lifecycle.messages WHERE customer_id = :c AND step = :s",
                            c=str(customer_id), s=step)
    return message_id


def test_a_person_clicking_a_tracked_link_lifts_the_sunset_a_scanner_or_mpp_does_not(engine, smtp):
    """Our own tracking (the web service's /c/ and /o/, lifecycle.engagement) lifts a sunset like a
    provider's click does: a person clicking a link in an email they got before the sunset lifts
    it, naming the message; a mail gateway's link scanner and Apple MPP's pixel prefetch do not.
    At the same instant as a provider's click, ours is the one recorded (it names our message)."""
    emails = {c: add_customer(engine, c) for c in (16, 17, 18)}
    run_sunset(engine, smtp, LAPSED)
    sunset_at = LAPSED + 22 * DAY
    links = {c: tracked_links(smtp, emails[c], "email_2") for c in emails}
    with LiveService(engine) as service, httpx.Client(follow_redirects=False, timeout=10) as client:
        service.now = sunset_at + DAY
        assert client.get(service.local(links[16][0]), headers={"User-Agent": CHROME}).status_code == 302
        assert client.get(service.local(links[17][0]), headers={"User-Agent": SAFE_LINKS}).status_code == 302
        assert client.head(service.local(links[17][0]), headers={"User-Agent": CHROME}).status_code == 302
        assert client.get(service.local(links[17][1]), headers={"User-Agent": MPP}).status_code == 200
        service.now = sunset_at + 2 * DAY
        assert client.get(service.local(links[18][0]), headers={"User-Agent": CHROME}).status_code == 302
    add_click(engine, 18, sunset_at + 2 * DAY)  # the provider reports the same click
    assert rows(engine, "SELECT customer_id::bigint, kind, agent_class FROM lifecycle.engagement "
                        "WHERE customer_id = '17' ORDER BY engagement_id") == [
        (17, "click", "scanner"), (17, "click", "scanner"), (17, "open", "privacy_proxy")]

    with engine.begin() as conn:
        assert lift_sunsets(conn, sunset_at + DAY) == 0  # before the click (as_of is exclusive)
    with engine.begin() as conn:
        assert lift_sunsets(conn, sunset_at + 3 * DAY) == 2
    email_2 = {c: message_of(engine, c, "email_2") for c in emails}
    assert suppression_history(engine, 16)[0][3:] == (sunset_at + DAY, "clicked", f"message {email_2[16]}")
    assert suppression_history(engine, 18)[0][3:] == (sunset_at + 2 * DAY, "clicked", f"message {email_2[18]}")
    assert suppression_history(engine, 17)[0][3:] == (None, None, None)

    run_day(engine, smtp, sunset_at + 3 * DAY)  # a run sees the same: 17 stays sunset
    assert suppression_history(engine, 17)[0][3:] == (None, None, None)


# ----------------------------------------------------------------------------- 2. "keep me subscribed"
class LiveService:
    """The web service app under uvicorn on a free port, in a thread, with a clock the
    test moves (the choice is dated in simulated time, like the runs)."""

    def __init__(self, engine):
        import uvicorn

        from lifecycle.web_service import create_app

        self.now = LAPSED
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(engine, clock=lambda: self.now)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def local(self, url: str) -> str:
        """The shop's public URL, as routed to this service."""
        parts = urlsplit(url)
        return urlunsplit(("http", f"127.0.0.1:{self.port}", parts.path, parts.query, ""))


def keep_link(smtp, address: str) -> str:
    """The "Yes, keep me subscribed" URL of the email_3 the SMTP server received for `address`."""
    (mail,) = [m.message() for m in smtp.messages
               if address in m.rcpt_tos and m.message()["X-Lifecycle-Step"] == "email_3"]
    text = mail.get_body(("plain",)).get_content()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("Yes, keep me subscribed:")]
    return line.split(":", 1)[1].strip()


def test_keep_me_subscribed_through_the_service_spares_the_sunset(engine, smtp):
    """Two customers get email_3; one clicks "Yes, keep me subscribed" and confirms on the
    service's page: they exit win_back (chose_to_stay) and are never suppressed. The other,
    who does nothing, is suppressed by stop_emailing."""
    stays, silent = add_customer(engine, 11), add_customer(engine, 12)
    run_sunset(engine, smtp, LAPSED, steps=("email_1", "email_2", "email_3"))

    link = keep_link(smtp, stays)
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == SHOP["base_url"] and parts.path == "/preferences"
    token = parse_qs(parts.query)["t"][0]
    assert verify_stay_token(token) == ("11", "email")
    assert verify_unsubscribe_token(token) is None  # a stay link can never unsubscribe
    assert verify_stay_token(parse_qs(urlsplit(keep_link(smtp, silent)).query)["t"][0]) == ("12", "email")

    with LiveService(engine) as service, httpx.Client(follow_redirects=False, timeout=10) as client:
        service.now = LAPSED + 16 * DAY + timedelta(hours=3)  # two days after email_3
        page = client.get(service.local(link))
        assert page.status_code == 200 and '<input type="hidden" name="choice" value="stay">' in page.text
        assert rows(engine, "SELECT count(*) FROM lifecycle.preference_choices") == [(0,)]  # a GET records nothing
        done = client.post(service.local(link), data={"choice": "stay"})
        assert done.status_code == 200 and "still subscribed" in done.text
    assert rows(engine, "SELECT customer_id::bigint, channel, choice, source, chosen_at FROM lifecycle.preference_choices") \
        == [(11, "email", "stay", "preferences_page", service.now)]

    run_day(engine, smtp, LAPSED + 22 * DAY)  # stop_emailing falls due
    assert rows(engine, "SELECT customer_id::bigint, status, exit_reason, exited_at FROM lifecycle.enrollments "
                        "WHERE journey = 'win_back' ORDER BY 1") == [
        (11, "exited", "chose_to_stay", service.now), (12, "active", None, None)]
    assert "stop_emailing" not in [m[0] for m in messages(engine, 11)]
    assert suppression_history(engine, 11) == []
    assert messages(engine, 12)[-1] == ("stop_emailing", "sent", "action: suppress")
    assert [h[:2] + h[3:] for h in suppression_history(engine, 12)] == [
        ("no_response", "win_back", None, None, None)]


def test_keep_me_subscribed_after_the_sunset_lifts_it(engine, smtp):
    """A customer who answers email_3 only after stop_emailing ran gets their sunset lifted
    at once (reason chose_to_stay); nothing else about them changes."""
    email = add_customer(engine, 13)
    run_sunset(engine, smtp, LAPSED)
    link = keep_link(smtp, email)
    with LiveService(engine) as service, httpx.Client(follow_redirects=False, timeout=10) as client:
        service.now = LAPSED + 25 * DAY
        assert client.post(service.local(link), data={"choice": "stay"}).status_code == 200
    ((choice_id,),) = rows(engine, "SELECT choice_id FROM lifecycle.preference_choices")
    assert suppression_history(engine, 13) == [
        ("no_response", "win_back", LAPSED + 22 * DAY, service.now, "chose_to_stay", f"choice {choice_id}")]
