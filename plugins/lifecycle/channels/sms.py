"""SMS over Twilio's Messages API: kept-alive connections for a batch, every answer classified.

Configured by an Airflow HTTP connection (`lifecycle_sms`): host (+ schema/port) is the
API's base URL (default ``https://api.twilio.com``), login the AccountSid, password the
AuthToken, extras ``from`` (E.164 sender or alphanumeric id) or ``messaging_service_sid``
(exactly one), optional ``status_callback``, ``timeout``, ``max_attempts``.

One message is one form-encoded ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``:

    201                         sent (the SM... sid is recorded, with the segment count)
    400 21610                   failed: the recipient replied STOP (provider opt-out, suppressed)
    other 4xx                   failed (Twilio's code and message in the reason)
    429, 5xx with Retry-After   refused for now: POSTed again after the wait (Retry-After
                                honoured, capped; the batch's other requests wait too), at
                                most `max_attempts` POSTs; then retry
    other 5xx, timeout or       maybe sent: the message is looked up (`reconcile`), never
    connection lost after           POSTed again blindly. Found: sent. The full listing
    the request went out            proves it absent: retry. The lookup fails: unknown.
    nothing could be sent       ChannelUnavailable (connection refused, DNS, connect timeout,
                                    TLS handshake, proxy: the request never started to leave)

Phone numbers and bodies never go to the logs (the idempotency key does); numbers that
Twilio quotes in its error messages are masked before they reach a reason.

HTTP goes through lifecycle.channels.http_client (urllib3: half httpx's CPU per request), with
the environment's proxy (HTTPS_PROXY unless NO_PROXY names the host) and the CA certificates
httpx used (SSL_CERT_FILE, SSL_CERT_DIR, else certifi's).
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode, urljoin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from lifecycle import logsafe
from lifecycle.channels import http_client
from lifecycle.channels.base import ChannelUnavailable, Outcome
from lifecycle.channels.http_client import Lost, NotSent, Reply
from lifecycle.config import settings

log = logging.getLogger(__name__)

SMS_CONN_ID = settings().sms_conn_id
TWILIO_API = "https://api.twilio.com"
API_VERSION = "2010-04-01"

OPT_OUT = 21610  # "Attempt to send to unsubscribed recipient": the recipient replied STOP
ADDRESS_UNUSABLE = {21211, 21614}  # invalid 'To' number / 'To' is not a mobile number

__all__ = [
    "OutboundSMS",
    "SMSChannel",
    "normalise_mobile",
    "normalise_number",
    "send_window",
    "sms_segments",
]


@dataclass(frozen=True)
class OutboundSMS:
    to: str  # E.164
    body: str
    key: str  # the message's idempotency key (logs and lookups; never sent to the provider)
    country: str | None = None  # the number's region (ISO 3166), when the sender already knows it


# ----------------------------------------------------------------------------- numbers
_MOBILE = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
_REGION_ALIASES = {"UK": "GB", "EL": "GR"}  # EU-style codes that are not ISO 3166 regions


def normalise_number(raw: str | None, country: str | None) -> tuple[str | None, str | None]:
    """(E.164, None) for a valid mobile number, else (None, problem).

    A number without ``+``/``00`` is read as a national number of the customer's
    ``country`` (ISO 3166 alpha-2). Problems: 'missing phone', 'invalid phone number',
    'not a mobile number' (fixed lines, toll-free, premium rate, ...; numbers that
    libphonenumber cannot tell from a fixed line, as in the US, count as mobile).
    """
    number, _, problem = normalise_mobile(raw, country)
    return number, problem


def normalise_mobile(raw: str | None, country: str | None) -> tuple[str | None, str | None, str | None]:
    """`normalise_number`, with the number's own region too: (E.164, region, None) or
    (None, None, problem). The send task records the region with each SMS sent."""
    if raw is None or not str(raw).strip():
        return None, None, "missing phone"
    region = (country or "").strip().upper() or None
    region = _REGION_ALIASES.get(region, region)
    try:
        number = phonenumbers.parse(str(raw), region)
    except NumberParseException:
        return None, None, "invalid phone number"
    # number_type is UNKNOWN exactly when is_valid_number is False (both match the number against
    # its region's patterns): one pass over them instead of two, a third of an SMS's rendering.
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        return None, None, "invalid phone number"
    if kind not in _MOBILE:
        return None, None, "not a mobile number"
    return (phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
            phonenumbers.region_code_for_number(number), None)


def _country_of(e164: str) -> str | None:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except NumberParseException:
        return None


# ----------------------------------------------------------------------------- segments
# GSM 03.38: the default alphabet (without ESC, 0x1B) and the extension table, whose
# characters are sent as ESC + char and so take two septets.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7 = GSM7_BASIC | GSM7_EXTENSION


def _parts(costs: list[int], single: int, multi: int) -> int:
    """How many parts: one if it fits, else greedily packed parts of `multi` units, a
    character never split between two parts (an escape pair, a surrogate pair)."""
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            parts, used = parts + 1, 0
        used += cost
    return parts


def sms_segments(body: str) -> dict:
    """{"encoding": "GSM-7"|"UCS-2", "length": n, "segments": k} as the network counts them.

    GSM-7 when every character is in the GSM 03.38 alphabet (extension characters such as
    '€' '[' '{' count two septets): 160 septets in one part, 153 per part when
    concatenated. Otherwise UCS-2, counted in UTF-16 code units (an emoji is two): 70 in
    one part, 67 per part.
    """
    # Set arithmetic over the distinct characters, not a test per character: it runs for every
    # SMS sent. Costs per character are only listed for a text that needs more than one part.
    chars = set(body)
    if chars <= _GSM7:
        encoding, double, single, multi = "GSM-7", chars & GSM7_EXTENSION, 160, 153
    else:
        encoding, double, single, multi = "UCS-2", {ch for ch in chars if ord(ch) > 0xFFFF}, 70, 67
    length = len(body) + sum(body.count(ch) for ch in double)
    if length <= single:
        return {"encoding": encoding, "length": length, "segments": 1}
    costs = [2 if ch in double else 1 for ch in body]
    return {"encoding": encoding, "length": length, "segments": _parts(costs, single, multi)}


# ----------------------------------------------------------------------------- quiet hours
def _zone(name: str | None) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def send_window(
    now_utc: datetime, timezone: str | None, start_hour: int = 8, end_hour: int = 21
) -> tuple[bool, datetime]:
    """Is `now_utc` inside [start_hour:00, end_hour:00) on the recipient's wall clock?

    Returns (True, now_utc) inside the window, else (False, the UTC instant the next
    window opens). `timezone` is an IANA name; unknown or missing means UTC. A naive
    `now_utc` is taken as UTC. DST is respected (the window opens at 08:00 local time
    whatever the offset that day).
    """
    if not 0 <= start_hour < end_hour <= 24:
        raise ValueError(f"send window needs 0 <= start_hour < end_hour <= 24, got {start_hour}-{end_hour}")
    now = now_utc if now_utc.tzinfo is not None else now_utc.replace(tzinfo=UTC)
    now = now.astimezone(UTC)
    zone = _zone(timezone)
    local = now.astimezone(zone)
    if start_hour <= local.hour < end_hour:
        return True, now
    day: date = local.date() if local.hour < start_hour else local.date() + timedelta(days=1)
    opens = datetime.combine(day, dtime(start_hour), tzinfo=zone)  # a DST gap resolves forward
    return False, opens.astimezone(UTC)


# ----------------------------------------------------------------------------- the channel
_NUMBERISH = re.compile(r"\+?\d[\d ()./-]{5,}\d")


def _mask(text: str, limit: int = 300) -> str:
    """Provider text for a reason: phone numbers masked, length bounded."""
    return _NUMBERISH.sub("<number>", " ".join(str(text).split()))[:limit]


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _MaybeSent(Exception):
    """The request went out and no verdict came back."""

    def __init__(self, why: str, settle: bool):
        super().__init__(why)
        self.why, self.settle = why, settle


class SMSChannel:
    name = "sms"

    def __init__(
        self,
        base_url: str,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        settle: float = 2.0,
        lookup_pages: int = 10,
        lookup_page_size: int = 100,
        concurrency: int = 4,
    ):
        """max_wait caps any Retry-After; settle is the pause before looking a message up
        after a timeout or a dropped connection (the provider may still be committing it);
        lookup_pages x lookup_page_size bounds the listing that must prove a message absent."""
        if bool(from_number) == bool(messaging_service_sid):
            raise ValueError("SMSChannel needs exactly one of from_number or messaging_service_sid")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.account_sid, self.auth_token = account_sid, auth_token
        self.from_number, self.messaging_service_sid = from_number, messaging_service_sid
        self.status_callback = status_callback
        self.timeout, self.max_attempts, self.backoff = timeout, max_attempts, backoff
        self.max_wait, self.settle = max_wait, settle
        self.lookup_pages, self.lookup_page_size = lookup_pages, lookup_page_size
        # Requests in flight at once (lifecycle.send.deliver_all), each on a kept-alive connection
        # of its own; well under Twilio's per-account limits.
        self.concurrency = max(1, min(int(concurrency), 20))
        self.messages_url = f"{self.base_url}/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}", "Accept": "application/json",
                         "User-Agent": "lifecycle-sms/1"}
        self._http: http_client.Pools | None = None
        self._known_sids: set[str] = set()  # accepted in this batch: a lookup must not match them again
        # time.monotonic() until which no request goes out: a Retry-After (or a backoff after a
        # 429) holds every request in flight, not only the one that was answered so.
        self._hold_until = 0.0
        self._hold_lock = threading.Lock()

    @classmethod
    def from_airflow(cls, conn_id: str = SMS_CONN_ID) -> SMSChannel:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson
        host = (conn.host or "").strip()
        if not host:
            base_url = TWILIO_API
        elif "://" in host:  # the http provider's convention: a full URL in host wins
            base_url = host
        else:
            base_url = f"{conn.schema or 'https'}://{host}"
        if conn.port and "://" in base_url and base_url.count(":") < 2:
            base_url = f"{base_url.rstrip('/')}:{conn.port}"
        if not conn.login or not conn.password:
            raise ValueError(f"Airflow connection {conn_id!r} needs login (AccountSid) and password (AuthToken)")
        return cls(
            base_url,
            conn.login,
            conn.password,
            from_number=extra.get("from") or None,
            messaging_service_sid=extra.get("messaging_service_sid") or None,
            status_callback=extra.get("status_callback") or None,
            timeout=float(extra.get("timeout", 10.0)),
            max_attempts=int(extra.get("max_attempts", 3)),
            concurrency=int(extra.get("concurrency", 4)),
        )

    # kept-alive connections for a batch -----------------------------------------
    def __enter__(self) -> SMSChannel:
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        if self._http is not None:
            self._http.clear()
            self._http = None
        self._known_sids.clear()
        self._hold_until = 0.0

    def _open(self) -> http_client.Pools:
        if self._http is None:
            logsafe.install()  # the lookup's URL carries the phone number: keep it out of urllib3's log
            tls = http_client.ca_bundle_from("SSL_CERT_FILE", "SSL_CERT_DIR") if self.base_url.startswith("https:") else None
            self._http = http_client.Pools(http_client.environment_proxy(self.base_url),
                                           maxsize=self.concurrency, tls=tls)
        return self._http

    def _request(self, method: str, url: str, body: bytes | None = None) -> Reply:
        headers = self._headers if body is None else {
            **self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        return self._open().request(method, url, headers=headers, body=body, timeout=self.timeout)

    def _form(self, msg: OutboundSMS) -> dict[str, str]:
        form = {"To": msg.to, "Body": msg.body}
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            form["From"] = self.from_number
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return form

    # delivery ------------------------------------------------------------------
    @staticmethod
    def recipient(msg: OutboundSMS) -> str:
        """The number a message goes to (lifecycle.send.deliver_all keeps each number's order)."""
        return msg.to

    def _hold(self, seconds: float) -> None:
        with self._hold_lock:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def _wait_for_hold(self) -> None:
        while (left := self._hold_until - time.monotonic()) > 0:
            time.sleep(left)

    def deliver(self, msg: OutboundSMS) -> Outcome:
        form = urlencode(self._form(msg)).encode()
        started = datetime.now(UTC)
        reason = ""
        try:
            for attempt in range(1, self.max_attempts + 1):
                self._wait_for_hold()
                response = self._post(form)
                if response.status_code == 429 or (
                    response.status_code >= 500 and "retry-after" in response.headers
                ):
                    reason = self._error_reason(response)
                    wait = self._wait(response, attempt)
                    self._hold(wait)  # the account is told to wait, not this message alone
                    if attempt < self.max_attempts:
                        log.info("sms %s: %s, attempt %d of %d, trying again in %.1fs",
                                 msg.key, reason, attempt, self.max_attempts, wait)
                        continue
                    log.warning("sms %s: %s after %d attempts", msg.key, reason, attempt)
                    return Outcome("retry", f"{reason} after {attempt} attempts")
                if response.status_code >= 500:
                    raise _MaybeSent(self._error_reason(response), settle=False)
                return self._classify(msg, response)
        except _MaybeSent as maybe:
            log.warning("sms %s: %s; looking the message up", msg.key, maybe.why)
            if maybe.settle and self.settle > 0:
                time.sleep(self.settle)
            return self._settle(msg, started, maybe.why)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, form: bytes) -> Reply:
        try:
            return self._request("POST", self.messages_url, form)
        except NotSent as exc:  # nothing reached the provider
            raise ChannelUnavailable(f"Twilio API at {self.base_url} unavailable: {exc.error!r}") from exc
        except Lost as exc:  # the request (or part of it) went out
            if exc.timed_out:
                raise _MaybeSent(f"timed out waiting for the provider ({type(exc.error).__name__})",
                                 settle=True) from exc
            raise _MaybeSent(f"connection lost ({type(exc.error).__name__}: {_mask(str(exc.error))})",
                             settle=True) from exc

    def _wait(self, response: Reply, attempt: int) -> float:
        value = response.headers.get("retry-after", "").strip()
        wait: float | None = None
        if value:
            try:
                wait = float(value)
            except ValueError:
                when = _parse_time(value)
                if when is not None:
                    wait = (when - datetime.now(UTC)).total_seconds()
        if wait is None:
            wait = self.backoff * 2 ** (attempt - 1)
        return min(max(wait, 0.0), self.max_wait)

    def _settle(self, msg: OutboundSMS, started: datetime, why: str) -> Outcome:
        outcome = self.reconcile(msg, started)
        if outcome.status == "sent":
            log.info("sms %s: found at the provider after %s", msg.key, why)
        elif outcome.status == "retry":
            # Not in the listing is not proof: listings lag and providers may rewrite a body
            # (trial prefixes, smart encoding). At most once wins: record it, never re-send.
            outcome = Outcome("unknown", f"{why}; not found in the provider's listing (not re-sent)")
        else:
            outcome = Outcome("unknown", f"{why}; {outcome.reason}")
        return outcome

    def _classify(self, msg: OutboundSMS, response: Reply) -> Outcome:
        status = response.status_code
        if status in (200, 201):
            try:
                payload = response.json()
            except ValueError:
                payload = None
            sid = payload.get("sid") if isinstance(payload, dict) else None
            if not sid:  # accepted, but no sid to record: settle it by looking
                return self._settle(msg, datetime.now(UTC) - timedelta(seconds=self.timeout),
                                    f"HTTP {status} without a message sid")
            return self._sent(msg, sid)
        code, reason = self._error(response)
        log.warning("sms %s: rejected, %s", msg.key, reason)
        if code == OPT_OUT:
            return Outcome("failed", f"recipient opted out ({reason})", suppress="provider_opt_out")
        return Outcome("failed", reason, fallback=code in ADDRESS_UNUSABLE)

    def _sent(self, msg: OutboundSMS, sid: str, **extra) -> Outcome:
        self._known_sids.add(sid)
        details = sms_segments(msg.body) | {"to_country": msg.country or _country_of(msg.to)} | extra
        log.info("sms %s: accepted as %s", msg.key, sid)
        return Outcome("sent", provider_message_id=sid, details=details)

    @staticmethod
    def _error(response: Reply) -> tuple[int | None, str]:
        """(Twilio error code, 'HTTP status code: message') from an error answer."""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("code") is not None:
            try:
                code = int(payload["code"])
            except (TypeError, ValueError):
                code = None
            message = _mask(payload.get("message") or "")
            return code, f"{payload['code']}: {message}" if message else str(payload["code"])
        return None, f"HTTP {response.status_code} {_mask(response.reason_phrase or response.text[:200])}".strip()

    def _error_reason(self, response: Reply) -> str:
        code, reason = self._error(response)
        return f"HTTP {response.status_code} ({reason})" if code is not None else reason

    # lookups ---------------------------------------------------------------------
    def reconcile(self, msg: OutboundSMS, claimed_at: datetime) -> Outcome:
        """Did the provider take this message? Looks for a message with the same To and
        Body (and From or MessagingServiceSid) created at or after `claimed_at` minus a
        minute (clock skew), not already recorded as another message of this batch.

        sent     found (its sid)
        retry    the complete listing for this recipient does not have it: safe to send
        unknown  the lookup failed or was too long to finish: do not send again

        The listing filters on To (and From), not on DateSent: a message still queued at
        the provider has no date_sent yet and would be missed by a DateSent filter.
        """
        since = (claimed_at if claimed_at.tzinfo else claimed_at.replace(tzinfo=UTC)) - timedelta(minutes=1)
        params: dict[str, str] = {"To": msg.to, "PageSize": str(self.lookup_page_size)}
        if self.from_number:
            params["From"] = self.from_number
        url = f"{self.messages_url}?{urlencode(params)}"
        for _page in range(self.lookup_pages):
            try:
                response = self._request("GET", url)
            except (NotSent, Lost) as exc:
                return Outcome("unknown", f"lookup failed: {type(exc.error).__name__}")
            if response.status_code != 200:
                return Outcome("unknown", f"lookup failed: {self._error_reason(response)}")
            try:
                page = response.json()
                listed = page["messages"]
            except (ValueError, KeyError, TypeError):
                return Outcome("unknown", "lookup failed: unreadable listing")
            for found in listed:
                if self._matches(found, msg, since):
                    return self._sent(msg, found["sid"], looked_up=True, provider_status=found.get("status"))
            next_uri = page.get("next_page_uri")
            if not next_uri:
                return Outcome("retry", "not found at the provider")
            url = urljoin(self.base_url, next_uri)
        return Outcome("unknown", f"lookup gave up after {self.lookup_pages} pages")

    def _matches(self, found: dict, msg: OutboundSMS, since: datetime) -> bool:
        if not isinstance(found, dict) or not found.get("sid") or found["sid"] in self._known_sids:
            return False
        if found.get("to") != msg.to or found.get("body") != msg.body:
            return False
        if found.get("direction", "outbound-api") != "outbound-api":
            return False
        if self.messaging_service_sid and found.get("messaging_service_sid") != self.messaging_service_sid:
            return False
        if self.from_number and found.get("from") not in (None, self.from_number):
            return False
        created = _parse_time(found.get("date_created"))
        return created is not None and created >= since
