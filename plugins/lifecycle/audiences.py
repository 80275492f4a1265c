"""Ad audiences: keep a Meta (Facebook) custom audience in step with a journey's members.

Customers enter the audience when they enter the journey and leave it when they exit or
convert, or lose their `ads` consent. Meta only ever receives SHA-256 hashes:

    email   trimmed, lowercased, hashed                    hash_email(" Ann@X.com ")
    phone   E.164 via libphonenumber (national numbers are hash_phone("0151 2345678", "DE")
            read in the customer's country), digits only,
            no '+', hashed

The client speaks the Marketing API's users edge: ``POST`` (add) and ``DELETE`` (remove)
``{base}/{version}/{audience_id}/users`` with form fields ``payload``
(``{"schema": [...], "data": [[...], ...]}``), ``session`` and ``access_token``; at most
10,000 rows a request, one upload session (``session_id``, ``batch_seq`` 1.., ``last_batch_flag``,
``estimated_num_total``) across the requests of one add or remove.

Schema: rows carry two hashed keys, so they use Meta's *multi-key* schema
``["EMAIL", "PHONE"]`` with SHA-256 values (an empty string where a customer has no usable
value). ``EMAIL_SHA256``/``PHONE_SHA256`` are Meta's *single-key* names, used with a schema
string and flat data (``schema="EMAIL_SHA256"``, ``data=["<hash>", ...]``); the client
accepts that form too. Either way the values are hashes.

`sync_audience` diffs, in SQL, who should be in the audience against
``lifecycle.audience_members`` (who Meta confirmed): it sends the removes, then the adds, and
records each request's rows as soon as Meta accepted it (one commit per request). A crash
or an error mid-sync and a replay therefore send only what was never confirmed, and a
replay of a finished sync sends nothing. A request that landed but whose answer was lost
is sent again by the replay: harmless, an audience is a set. Concurrent syncs of one
audience are serialised by an advisory lock; the second then finds nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import httpx
import phonenumbers
import sqlalchemy as sa
from phonenumbers import NumberParseException
from sqlalchemy.engine import Engine

from lifecycle import logsafe
from lifecycle.config import settings
from lifecycle.ids import shop_id

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SCHEMA",
    "MAX_ROWS",
    "AudienceAPIError",
    "Batch",
    "MetaAudienceClient",
    "hash_email",
    "hash_phone",
    "normalise_email",
    "normalise_phone",
    "sync_audience",
]

META_CONN_ID = settings().meta_conn_id
MAX_ROWS = 10_000  # Meta's limit per request
DEFAULT_SCHEMA = ("EMAIL", "PHONE")  # multi-key schema, SHA-256 values (see the module docstring)
# Graph error codes worth another try: unknown (1), service (2), app/user/account rate limits
# (4, 17, 341), custom-audience rate limit (80003). `is_transient: true` also counts.
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 341, 80003})
_REGION_ALIASES = {"UK": "GB", "EL": "GR"}
_LOCK_CLASS = 7_412_010  # pg_advisory_lock(class, hashtext(audience)): one sync per audience at a time
STATUSES = ("active", "converted", "exited", "completed", "expired")


# ----------------------------------------------------------------------------- hashing
def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def normalise_email(raw: Any) -> str | None:
    """Trimmed and lowercased; None when empty or not an address at all (no '@')."""
    if raw is None:
        return None
    value = str(raw).strip().lower()
    return value if value and "@" in value else None


def normalise_phone(raw: Any, country: str | None) -> str | None:
    """E.164 digits without '+' (Meta's phone normalisation), or None for a number that is
    missing or not valid. Numbers without '+'/'00' are read in ``country`` (ISO 3166-1)."""
    if raw is None or not str(raw).strip():
        return None
    region = (country or "").strip().upper() or None
    region = _REGION_ALIASES.get(region, region)
    try:
        number = phonenumbers.parse(str(raw), region)
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def hash_email(raw: Any) -> str | None:
    value = normalise_email(raw)
    return None if value is None else _sha256(value)


def hash_phone(raw: Any, country: str | None) -> str | None:
    value = normalise_phone(raw, country)
    return None if value is None else _sha256(value)


# ----------------------------------------------------------------------------- the client
class AudienceAPIError(RuntimeError):
    """The Graph API refused a request (or could not be reached, after the retries)."""

    def __init__(self, code: int | None, type: str | None, message: str, fbtrace_id: str | None = None,
                 *, status: int | None = None, subcode: int | None = None, transient: bool = False) -> None:
        super().__init__(f"Meta API error {code} ({type}): {message}"
                         + (f" [HTTP {status}]" if status else "") + (f" fbtrace_id={fbtrace_id}" if fbtrace_id else ""))
        self.code, self.type, self.message, self.fbtrace_id = code, type, message, fbtrace_id
        self.status, self.subcode, self.transient = status, subcode, transient

    @property
    def retryable(self) -> bool:
        return (self.transient or self.code in TRANSIENT_CODES
                or self.status is not None and (self.status == 429 or self.status >= 500))


@dataclass(frozen=True)
class Batch:
    """One accepted request of an upload: rows offset..offset+len(rows) of what was passed."""

    session_id: int
    batch_seq: int
    offset: int
    rows: list
    response: dict


class MetaAudienceClient:
    """Add rows to and remove rows from Meta custom audiences (see the module docstring).

    Retries 429, 5xx, transport errors and transient Graph codes up to ``max_retries`` times
    with exponential backoff (``backoff`` seconds doubling, at most ``max_backoff``, or the
    server's Retry-After). Re-sending is safe: adding or removing a member twice is a no-op.
    """

    def __init__(self, base_url: str = "https://graph.facebook.com", api_version: str = "v21.0",
                 access_token: str = "", timeout: float = 30.0, *, max_retries: int = 4, backoff: float = 1.0,
                 max_backoff: float = 30.0, batch_size: int = MAX_ROWS) -> None:
        if not access_token:
            raise ValueError("MetaAudienceClient needs an access_token")
        if not 1 <= batch_size <= MAX_ROWS:
            raise ValueError(f"batch_size must be between 1 and {MAX_ROWS}")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version.strip("/")
        self.access_token = access_token
        self.timeout = timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.batch_size = batch_size
        self.requests_made = 0  # HTTP requests, retries included, over the client's life
        self._http: httpx.Client | None = None

    @classmethod
    def from_airflow(cls, conn_id: str = META_CONN_ID) -> MetaAudienceClient:
        """From an Airflow HTTP connection: host = base URL (``https://graph.facebook.com``,
        or a bare host with the scheme in `schema`), password = access token, extras
        ``api_version``, ``timeout``, ``max_retries``. Call inside a task."""
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson
        host = (conn.host or "").rstrip("/")
        if not host:
            base = "https://graph.facebook.com"
        else:
            base = host if "://" in host else f"{conn.schema or 'https'}://{host}"
            if conn.port:
                base += f":{conn.port}"
        if not conn.password:
            raise ValueError(f"Airflow connection {conn_id!r} has no password (the Meta access token)")
        return cls(base, extra.get("api_version", "v21.0"), conn.password, float(extra.get("timeout", 30.0)),
                   max_retries=int(extra.get("max_retries", 4)))

    # ------------------------------------------------------------------- http session
    def __enter__(self) -> MetaAudienceClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _client(self) -> httpx.Client:
        if self._http is None:
            logsafe.install()
            self._http = httpx.Client(timeout=self.timeout, headers={"User-Agent": "lifecycle-audiences"})
        return self._http

    # ------------------------------------------------------------------- the API
    def add(self, audience_id: str, rows: Iterable[Sequence[str]] | Iterable[str],
            schema: Sequence[str] | str = DEFAULT_SCHEMA, *, estimated_total: int | None = None,
            on_batch: Callable[[Batch], None] | None = None) -> dict:
        """Add `rows` (one value per schema key, SHA-256 hex or ''); see `_upload`."""
        return self._upload("POST", audience_id, rows, schema, estimated_total, on_batch)

    def remove(self, audience_id: str, rows: Iterable[Sequence[str]] | Iterable[str],
               schema: Sequence[str] | str = DEFAULT_SCHEMA, *, estimated_total: int | None = None,
               on_batch: Callable[[Batch], None] | None = None) -> dict:
        return self._upload("DELETE", audience_id, rows, schema, estimated_total, on_batch)

    def _upload(self, method: str, audience_id: str, rows: Iterable, schema: Sequence[str] | str,
                estimated_total: int | None, on_batch: Callable[[Batch], None] | None) -> dict:
        """Send `rows` in requests of at most `batch_size` rows, all in one session.

        `rows` may be any iterable (read lazily, one request ahead, so that the last request
        carries last_batch_flag); `estimated_total` defaults to len(rows) when it has one.
        `on_batch` runs after each accepted request, before the next is sent. Raises
        AudienceAPIError on a refused request: earlier requests stay accepted.
        """
        single = isinstance(schema, str)
        schema_param: str | list[str] = schema if single else list(schema)
        width = 1 if single else len(schema_param)
        if estimated_total is None and hasattr(rows, "__len__"):
            estimated_total = len(rows)  # type: ignore[arg-type]
        summary = {"audience_id": audience_id, "session_id": None, "batches": 0, "rows": 0, "requests": 0,
                   "num_received": 0, "num_invalid_entries": 0, "invalid_entry_samples": {}}
        it = iter(rows)
        chunk = list(islice(it, self.batch_size))
        if not chunk:
            return summary
        session_id = secrets.randbits(63) or 1  # a positive int64
        summary["session_id"] = session_id
        seq = offset = 0
        while chunk:
            following = list(islice(it, self.batch_size))
            seq += 1
            data = [self._check_row(row, single, width) for row in chunk]
            session = {"session_id": session_id, "batch_seq": seq, "last_batch_flag": not following,
                       "estimated_num_total": max(estimated_total or 0, offset + len(chunk))}
            body, attempts = self._send(method, audience_id, {"schema": schema_param, "data": data}, session)
            summary["requests"] += attempts
            summary["batches"] += 1
            summary["rows"] += len(chunk)
            summary["num_received"] += int(body.get("num_received", 0))
            invalid = int(body.get("num_invalid_entries", 0))
            if invalid:
                summary["num_invalid_entries"] += invalid
                samples = summary["invalid_entry_samples"]
                samples.update(dict(list((body.get("invalid_entry_samples") or {}).items())[: 10 - len(samples)]))
                log.warning("Meta reported %d invalid rows in batch %d of audience %s", invalid, seq, audience_id)
            if on_batch is not None:
                on_batch(Batch(session_id, seq, offset, chunk, body))
            offset += len(chunk)
            chunk = following
        return summary

    @staticmethod
    def _check_row(row: Any, single: bool, width: int) -> Any:
        if single:
            if not isinstance(row, str):
                raise ValueError("with a single-key schema each row is one string")
            return row
        values = list(row)
        if len(values) != width:
            raise ValueError(f"a row has {len(values)} values for a schema of {width} keys")
        return ["" if v is None else v for v in values]

    def _send(self, method: str, audience_id: str, payload: dict, session: dict) -> tuple[dict, int]:
        """One request, retried when that can help; (response body, HTTP attempts)."""
        url = f"{self.base_url}/{self.api_version}/{audience_id}/users"
        form = {"payload": json.dumps(payload, separators=(",", ":")),
                "session": json.dumps(session, separators=(",", ":")),
                "access_token": self.access_token}
        attempt = 0
        while True:
            attempt += 1
            self.requests_made += 1
            retry_after = None
            try:
                response = self._client().request(method, url, data=form)
            except httpx.TransportError as exc:
                error = AudienceAPIError(None, "TransportError", f"{type(exc).__name__}: {exc}", transient=True)
            else:
                body = _json(response)
                if response.is_success and isinstance(body, dict) and "error" not in body:
                    return body, attempt
                error = _api_error(response.status_code, body, response.text)
                retry_after = _seconds(response.headers.get("Retry-After"))
            if not error.retryable or attempt > self.max_retries:
                raise error
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (1 + random.random() / 4)
            if retry_after is not None:
                delay = min(self.max_backoff, max(delay, retry_after))
            log.warning("Meta %s %s batch %s failed (%s); retry %d/%d in %.2fs", method, audience_id,
                        session["batch_seq"], error, attempt, self.max_retries, delay)
            time.sleep(delay)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _api_error(status: int, body: Any, text: str) -> AudienceAPIError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return AudienceAPIError(error.get("code"), error.get("type"), str(error.get("message", "")),
                                error.get("fbtrace_id"), status=status, subcode=error.get("error_subcode"),
                                transient=bool(error.get("is_transient")))
    return AudienceAPIError(None, "HTTPError", f"HTTP {status}: {text[:200]}", status=status)


# ----------------------------------------------------------------------------- the sync
# Temp tables live on the sync's connection only (pg_temp); all dropped at the end.
_PEOPLE = """
CREATE TEMP TABLE aud_people (
    customer_id text PRIMARY KEY, email text, phone text, country text,
    ads_consent boolean NOT NULL, suppressed boolean NOT NULL
);
"""
# Who the journey holds now: enrolled (status in :statuses, not in the holdout group, whose
# members must not get the treatment), with their contact data and ads consent.
# Ids are text in lifecycle; {enrolled_id} is the enrollment's id in the contacts view's type.
_FILL_PEOPLE = """
INSERT INTO pg_temp.aud_people
SELECT DISTINCT ON (ct.customer_id) ct.customer_id::text, ct.email, ct.phone, ct.country,
       EXISTS (SELECT 1 FROM lifecycle.consent c
               WHERE c.customer_id = ct.customer_id AND c.channel = 'ads' AND c.opted_in),
       EXISTS (SELECT 1 FROM lifecycle.suppressions s
               WHERE s.customer_id = ct.customer_id::text AND s.channel = 'ads' AND s.lifted_at IS NULL)
FROM lifecycle.contacts ct
WHERE ct.customer_id IN (SELECT {enrolled_id} FROM lifecycle.enrollments e
                         WHERE e.journey = :journey AND e.mode = :mode
                           AND e.status = ANY(CAST(:statuses AS text[])) AND NOT e.holdout)
ORDER BY ct.customer_id, ct.email, ct.phone, ct.country  -- a contacts view with two rows per customer: the same one every run
"""
_PEOPLE_PAGE = """
SELECT customer_id, email, phone, country FROM pg_temp.aud_people
WHERE ads_consent AND NOT suppressed AND customer_id > :after
ORDER BY customer_id LIMIT :n
"""
_DESIRED = "CREATE TEMP TABLE aud_desired (customer_id text PRIMARY KEY, email_sha256 text, phone_sha256 text)"
_FILL_DESIRED = """
INSERT INTO pg_temp.aud_desired
SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:emails AS text[]), CAST(:phones AS text[]))
"""
_CURRENT = "m.platform = :platform AND m.audience_id = :audience_id AND m.removed_at IS NULL"
_TO_ADD = f"""
CREATE TEMP TABLE aud_add AS
SELECT row_number() OVER (ORDER BY d.customer_id) AS rn, d.customer_id, d.email_sha256, d.phone_sha256
FROM pg_temp.aud_desired d
WHERE NOT EXISTS (SELECT 1 FROM lifecycle.audience_members m
                  WHERE {_CURRENT} AND m.customer_id = d.customer_id
                    AND m.email_sha256 IS NOT DISTINCT FROM d.email_sha256
                    AND m.phone_sha256 IS NOT DISTINCT FROM d.phone_sha256)
"""
_TO_REMOVE = f"""
CREATE TEMP TABLE aud_remove AS
SELECT row_number() OVER (ORDER BY m.member_id) AS rn, m.member_id, m.email_sha256, m.phone_sha256,
       CASE WHEN p.customer_id IS NULL THEN 'left_journey'
            WHEN NOT p.ads_consent THEN 'no_ads_consent'
            WHEN p.suppressed THEN 'suppressed'
            WHEN d.customer_id IS NULL THEN 'no_identifiers'
            ELSE 'contact_changed' END AS reason
FROM lifecycle.audience_members m
LEFT JOIN pg_temp.aud_people p ON p.customer_id = m.customer_id
LEFT JOIN pg_temp.aud_desired d ON d.customer_id = m.customer_id
WHERE {_CURRENT}
  AND (d.customer_id IS NULL OR d.email_sha256 IS DISTINCT FROM m.email_sha256
       OR d.phone_sha256 IS DISTINCT FROM m.phone_sha256)
"""
_RECORD_ADD = """
INSERT INTO lifecycle.audience_members
    (platform, audience_id, journey, customer_id, email_sha256, phone_sha256, added_session_id, added_batch_seq)
SELECT :platform, :audience_id, :journey, a.customer_id, a.email_sha256, a.phone_sha256, :session_id, :batch_seq
FROM pg_temp.aud_add a WHERE a.rn > :lo AND a.rn <= :hi
ON CONFLICT (platform, audience_id, customer_id) WHERE removed_at IS NULL DO NOTHING
"""
_RECORD_REMOVE = """
UPDATE lifecycle.audience_members m
SET removed_at = now(), remove_reason = r.reason, removed_session_id = :session_id, removed_batch_seq = :batch_seq
FROM pg_temp.aud_remove r
WHERE r.member_id = m.member_id AND r.rn > :lo AND r.rn <= :hi AND m.removed_at IS NULL
"""
_TEMP_TABLES = ("aud_people", "aud_desired", "aud_add", "aud_remove")


def fill_people_sql(conn: sa.Connection) -> str:
    """The statement filling pg_temp.aud_people, with enrolled ids cast to the contacts view's type."""
    return _FILL_PEOPLE.format(enrolled_id=shop_id(conn, "e.customer_id"))


def sync_audience(engine: Engine, journey: str, audience_id: str, client: MetaAudienceClient, *,
                  mode: str = "live", statuses_in: Sequence[str] = ("active",), platform: str = "meta") -> dict:
    """Bring the audience in line with the journey; return counts.

    Desired: customers with an enrollment of `journey` in `mode` whose status is in
    `statuses_in` (holdout enrollments excluded), with `ads` consent (lifecycle.consent),
    no `ads` suppression, and at least one usable identifier (lifecycle.contacts). Members:
    lifecycle.audience_members rows not removed. Removes (members no longer desired, or
    whose hashes changed: remove old, add new) go first, then adds.

    mode='dry' computes the diff against the live audience and sends nothing:
    ``{"added": 0, "removed": 0, "requests": 0, "would_add", "would_remove", "dry_run": True}``.
    Otherwise ``{"added", "removed", "requests", "invalid_entries", "members"}``, where
    requests counts HTTP requests, retries included. Raises AudienceAPIError when Meta
    refuses a request; what it accepted before stays recorded, so a replay resumes.
    """
    statuses = list(statuses_in)
    unknown = sorted(set(statuses) - set(STATUSES))
    if not statuses or unknown:
        raise ValueError(f"statuses_in must be a non-empty subset of {STATUSES}; got {statuses!r}")
    if mode not in ("live", "dry"):
        raise ValueError(f"mode must be 'live' or 'dry', not {mode!r}")
    keys = {"platform": platform, "audience_id": audience_id, "journey": journey}
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k, hashtext(:a))"), {"k": _LOCK_CLASS, "a": audience_id})
        conn.commit()
        try:
            _check_owner(conn, keys)
            n_remove, n_add = _stage(conn, keys, mode, statuses, client.batch_size)
            if mode == "dry":
                return {"added": 0, "removed": 0, "requests": 0, "would_add": n_add, "would_remove": n_remove,
                        "dry_run": True}
            result = {"added": 0, "removed": 0, "requests": 0, "invalid_entries": 0}
            if n_remove:
                sent = client.remove(audience_id, _pages(conn, "aud_remove", client.batch_size),
                                     estimated_total=n_remove, on_batch=_recorder(conn, _RECORD_REMOVE, keys))
                result["removed"], result["requests"] = sent["rows"], sent["requests"]
                result["invalid_entries"] += sent["num_invalid_entries"]
            if n_add:
                sent = client.add(audience_id, _pages(conn, "aud_add", client.batch_size),
                                  estimated_total=n_add, on_batch=_recorder(conn, _RECORD_ADD, keys))
                result["added"] = sent["rows"]
                result["requests"] += sent["requests"]
                result["invalid_entries"] += sent["num_invalid_entries"]
            result["members"] = conn.execute(sa.text(
                f"SELECT count(*) FROM lifecycle.audience_members m WHERE {_CURRENT}"),
                {"platform": platform, "audience_id": audience_id}).scalar_one()
            conn.commit()
            log.info("audience %s (journey %s): added %d, removed %d, %d requests, %d members",
                     audience_id, journey, result["added"], result["removed"], result["requests"],
                     result["members"])
            return result
        finally:
            _cleanup(conn, audience_id)


def _check_owner(conn: sa.Connection, keys: dict) -> None:
    other = conn.execute(sa.text(
        "SELECT journey FROM lifecycle.audience_members m WHERE m.platform = :platform"
        " AND m.audience_id = :audience_id AND m.removed_at IS NULL AND m.journey <> :journey LIMIT 1"),
        keys).scalar()
    if other is not None:
        raise ValueError(f"audience {keys['audience_id']} is kept in step with journey {other!r}, "
                         f"not {keys['journey']!r}: one journey per audience")


def _stage(conn: sa.Connection, keys: dict, mode: str, statuses: list[str], page: int) -> tuple[int, int]:
    """Fill the temp tables; return (rows to remove, rows to add)."""
    for name in _TEMP_TABLES:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
    conn.exec_driver_sql(_PEOPLE)
    conn.execute(sa.text(fill_people_sql(conn)),
                 {"journey": keys["journey"], "mode": mode, "statuses": statuses})
    conn.exec_driver_sql(_DESIRED)
    after = ""  # ids are text here: every id sorts after the empty string
    while True:  # hashing needs libphonenumber: Python, one page at a time
        rows = conn.execute(sa.text(_PEOPLE_PAGE), {"after": after, "n": page}).all()
        if not rows:
            break
        after = rows[-1].customer_id
        ids, emails, phones = [], [], []
        for r in rows:
            email, phone = hash_email(r.email), hash_phone(r.phone, r.country)
            if email or phone:
                ids.append(r.customer_id)
                emails.append(email)
                phones.append(phone)
        if ids:
            conn.execute(sa.text(_FILL_DESIRED), {"ids": ids, "emails": emails, "phones": phones})
    conn.exec_driver_sql("ANALYZE pg_temp.aud_desired")
    conn.execute(sa.text(_TO_ADD), keys)
    conn.execute(sa.text(_TO_REMOVE), keys)
    conn.exec_driver_sql("DROP TABLE pg_temp.aud_people")  # the raw addresses go as soon as they can
    counts = conn.exec_driver_sql(
        "SELECT (SELECT count(*) FROM pg_temp.aud_remove), (SELECT count(*) FROM pg_temp.aud_add)").one()
    conn.commit()
    return int(counts[0]), int(counts[1])


def _pages(conn: sa.Connection, table: str, page: int) -> Iterator[list[str]]:
    """The rows of aud_add / aud_remove in rn order (rn = 1..n), `page` at a time."""
    after = 0
    while True:
        rows = conn.execute(sa.text(
            f"SELECT rn, email_sha256, phone_sha256 FROM pg_temp.{table} WHERE rn > :after ORDER BY rn LIMIT :n"),
            {"after": after, "n": page}).all()
        if not rows:
            return
        for r in rows:
            yield [r.email_sha256 or "", r.phone_sha256 or ""]
        after = rows[-1].rn


def _recorder(conn: sa.Connection, sql: str, keys: dict) -> Callable[[Batch], None]:
    def record(batch: Batch) -> None:
        conn.execute(sa.text(sql), {**keys, "session_id": batch.session_id, "batch_seq": batch.batch_seq,
                                    "lo": batch.offset, "hi": batch.offset + len(batch.rows)})
        conn.commit()  # confirmed by Meta: a replay must not send these rows again

    return record


def _cleanup(conn: sa.Connection, audience_id: str) -> None:
    try:
        conn.rollback()
        for name in _TEMP_TABLES:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k, hashtext(:a))"), {"k": _LOCK_CLASS, "a": audience_id})
        conn.commit()
    except sa.exc.DBAPIError:
        log.warning("could not clean up after syncing audience %s; discarding the connection", audience_id)
        conn.invalidate()
