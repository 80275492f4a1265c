"""Send one batch: send-time checks, then window by window: render → claim → deliver → mark.

The at-most-once guarantee lives here. A window of up to N messages (`send_window`, default 50)
is rendered first, then claimed in one statement (status 'claimed', committed) immediately
before the provider is called, and their outcomes are recorded in one statement right after. A
worker killed mid-window leaves at most N messages whose outcome is unknown (some of them may
never have been handed over); a retried task first records such leftovers as 'failed: outcome
unknown' instead of sending them again. One commit between two windows (the window's outcomes
and the next window's claim, one statement) instead of two per message is what lets a send task
run near the provider's own rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle import channels as registry
from lifecycle import variants
from lifecycle.channels.base import ChannelUnavailable, Outcome, Sender
from lifecycle.config import SHOP, settings
from lifecycle.ids import CONSENT, CONTACTS, PUSH_SUBSCRIPTIONS, shop_ids
from lifecycle.model import Batch
from lifecycle.products import fill_product_cards, unfilled_references
from lifecycle.render import TemplateRenderError
from lifecycle.spec import JourneySpec
from lifecycle.sql import query
from lifecycle.suppression import BLOCKS_TRANSACTIONAL, lift_sunsets, record_suppression
from lifecycle.tracking import track_outbound

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
# The batch's long static statements, in include/sql/lifecycle/queries/.
SEND_TIME_CHECKS_SQL = query("send_time_checks")
FREQUENCY_CAP_SQL = query("frequency_cap")
LOAD_BATCH_SQL = query("load_batch")
CLAIM_WINDOW_SQL = query("claim_window")
MARK_WINDOW_SQL = query("mark_window")
SETTLE_UNSENT_SQL = query("settle_unsent")
# A window's outcomes and the next window's claim in one statement: one round trip and one commit
# between two windows, the two statements above as they are (the claim's parameters renamed).
RECORD_AND_CLAIM_SQL = (
    "WITH recorded AS (\n" + MARK_WINDOW_SQL.strip() + "\n), claimed AS (\n"
    + re.sub(r":(ids|mids)\b", r":claim_\1", CLAIM_WINDOW_SQL.strip()) + "\n)\n"
    "SELECT message_id, status FROM recorded UNION ALL SELECT message_id, 'claimed' FROM claimed"
)


# The signing key a send task read and checked once for its batch (None elsewhere: the link
# and tracking functions then read it themselves).
_BATCH_KEY: ContextVar[str | None] = ContextVar("lifecycle_batch_signing_key", default=None)


class RetryBatch(RuntimeError):
    """Some messages hit transient errors and went back to planned: retry the task."""


def _batch_binds(batch: Batch) -> dict:
    return {"journey": batch["journey"], "run_id": batch["run_id"], "batch": batch["batch"],
            "channel": batch.get("channel", "email")}


class TemplateBroken(RuntimeError):
    """Templates failed to render: their messages stay planned (nothing was delivered) and a
    retry of the task, once the template is fixed, sends them."""

    def __init__(self, errors: dict[str, int]):
        self.errors = errors
        lines = [f"{error} ({n} message{'s' if n > 1 else ''})" for error, n in errors.items()]
        super().__init__(f"{sum(errors.values())} message(s) not rendered, left planned; fix the template and "
                         "retry the task (or let the next run send them):\n" + "\n".join(lines))


def _wait_for_template_fix(engine: Engine, row: Any, exc: Exception) -> None:
    """Keep an unrenderable message planned, with the template's error as its reason."""
    log.error("render failed for message %s (%s/%s): %s", row.message_id, row.journey, row.step, exc)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE lifecycle.messages SET reason = :reason, updated_at = now() "
                             "WHERE message_id = :id AND status = 'planned'"),
                     {"id": row.message_id, "reason": f"waiting for a template fix: {exc}"[:1000]})


class Skip(Exception):
    """This message cannot go out on its channel (e.g. not a mobile number): record why."""


class Undeliverable(Exception):
    """This message can never be composed (a line break in a header, from the customer's data):
    recorded `failed` with the reason before anything is claimed, the batch goes on."""


class Defer(Exception):
    """Not now (e.g. outside the recipient's SMS hours): keep it planned until `until`."""

    def __init__(self, until, reason: str):
        super().__init__(reason)
        self.until = until


def _id_placeholders(ids: dict[str, str]) -> dict[str, str]:
    """The customer id expressions of shop_ids under the names the query files use."""
    return {"contacts_id": ids[CONTACTS], "consent_id": ids[CONSENT], "push_id": ids[PUSH_SUBSCRIPTIONS]}


def reconcile_unconfirmed(conn: sa.Connection, batch: Batch) -> int:
    """Rows this batch left claimed in an earlier attempt that died: record, never re-send."""
    return conn.execute(
        sa.text(
            """
            UPDATE lifecycle.messages
               SET status = 'failed', updated_at = now(),
                   reason = 'outcome unknown: the attempt that claimed it died before confirming'
             WHERE journey = :journey AND run_id = :run_id AND channel = :channel AND batch_no = :batch
               AND status = 'claimed'
            """
        ),
        _batch_binds(batch),
    ).rowcount


def apply_send_time_checks(conn: sa.Connection, spec: JourneySpec, batch: Batch, now: datetime) -> int:
    """Consent, suppressions, enrollment state, lateness and address, checked now, not at planning."""
    exit_steps = [e.message_step for e in spec.exits if e.message_step]
    _lift_returning_customers(conn, batch, now)
    ids = shop_ids(conn, "m2.customer_id")  # the message's text id in each contact view's type
    channel = registry.channel(batch.get("channel", "email"))
    return conn.execute(
        sa.text(SEND_TIME_CHECKS_SQL.format(**_id_placeholders(ids), has_address=channel.has_address(ids))),
        {**_batch_binds(batch), "exit_steps": exit_steps, "no_address": channel.no_address, "now": now,
         "blocks_transactional": list(BLOCKS_TRANSACTIONAL)},
    ).rowcount


def _lift_returning_customers(conn: sa.Connection, batch: Batch, now: datetime) -> None:
    """End the sunsets of this batch's recipients who came back (ordered, clicked) before the
    run's as_of (the sender's clock when the batch has none): their messages then go out."""
    customers = conn.execute(
        sa.text("SELECT DISTINCT customer_id FROM lifecycle.messages WHERE journey = :journey AND run_id = :run_id "
                "AND channel = :channel AND batch_no = :batch AND status = 'planned'"),
        _batch_binds(batch),
    ).scalars().all()
    as_of = datetime.fromisoformat(batch["as_of"]) if batch.get("as_of") else now
    lift_sunsets(conn, min(as_of, now), customers)


def apply_frequency_cap(conn: sa.Connection, batch: Batch, now: datetime) -> int:
    """At most N marketing messages per customer and channel in a rolling window, across all
    journeys (LIFECYCLE_FREQUENCY_CAPS). Counts what was sent in the window plus this batch's
    earlier messages to the same customer; the rest are suppressed with the cap as reason.
    Transactional messages neither count nor get capped. Batches sending at the same moment
    do not see each other's sends: the cap is exact per batch, soft across parallel batches."""
    from lifecycle.config import frequency_caps

    cap = frequency_caps().get(batch.get("channel", "email"))
    if cap is None:
        return 0
    limit, window = cap
    return conn.execute(
        sa.text(FREQUENCY_CAP_SQL),
        {**_batch_binds(batch), "now": now, "limit": limit, "window": window.total_seconds(),
         "reason": f"frequency cap: at most {limit} marketing {batch.get('channel', 'email')} "
                   f"per {_span(window)} per customer"},
    ).rowcount


def _span(window) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g}h" if hours < 24 or hours % 24 else f"{hours / 24:g}d"


def load_batch(conn: sa.Connection, batch: Batch) -> list[Any]:
    """Everything needed to render the batch's planned messages (bounded by the batch size)."""
    ids = shop_ids(conn, "m.customer_id")
    rows = conn.execute(
        sa.text(LOAD_BATCH_SQL.format(**_id_placeholders(ids))),
        _batch_binds(batch),
    ).all()
    fill_product_cards(conn, (row.context for row in rows))  # today's cards, one query per batch
    return rows


def template_context(row: Any) -> dict:
    from lifecycle.links import LazyLinks, links_for

    context = row.context or {}
    return {
        "shop": SHOP,
        "customer": {
            "customer_id": row.customer_id,
            "first_name": row.first_name or "",
            "last_name": row.last_name or "",
            "email": row.email,
            "locale": row.locale,
            "country": row.country,
            "timezone": row.timezone,  # the date/datetime filters show moments in it (UTC if unknown)
        },
        "row": context,
        # percent_off is numeric(5, 2): templates print it with the `percent` filter (15 -> "15%").
        # valid_until is the instant the code stops working, with its offset: the `date` filter
        # shows the customer the day that is in their time zone.
        "coupon": (
            {"code": row.coupon_code, "percent_off": float(row.percent_off), "valid_until": row.valid_until.isoformat()}
            if row.coupon_code else None
        ),
        # SMS and push templates seldom show a link: theirs are signed only when a template reads them.
        "links": (links_for if row.channel == "email" else LazyLinks)(row.customer_id, row.channel,
                                                                       key=_BATCH_KEY.get()),
        "journey": row.journey,
        "step": row.step,
        "currency": context.get("currency", "EUR"),
        "kind": row.kind,  # transactional mail says what its unsubscribe link stops (marketing only)
    }


def build_email(row: Any, spec: JourneySpec, now: datetime):
    """Render the templates and wrap them with the headers inbox providers expect. The one place
    an email's content is decided: the channel only composes these fields into wire bytes."""
    from lifecycle.channels.email import OutboundEmail, header_problem, message_id_for
    from lifecycle.render import render_email_for_send

    context = template_context(row)
    rendered = render_email_for_send(row.template, context, subject=getattr(row, "variant_subject", None))
    headers = {"X-Lifecycle-Journey": row.journey, "X-Lifecycle-Step": row.step}
    if row.kind == "marketing":
        links = context["links"]
        headers["List-Unsubscribe"] = f"<{links['unsubscribe']}>, <{links['unsubscribe_mailto']}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    outbound = OutboundEmail(
        to=row.email, subject=rendered.subject, text=rendered.text, html=rendered.html,
        message_id=message_id_for(row.idempotency_key), headers=headers,
    )
    # Before the claim: a header that cannot be composed (a line break from the customer's data)
    # becomes this message's `failed`, never a claim whose outcome looks unknown.
    problem = header_problem(outbound)
    if problem:
        raise Undeliverable(f"cannot compose the email: {problem}")
    return outbound


def build_sms(row: Any, spec: JourneySpec, now: datetime):
    """Render, normalise the number (E.164 by the customer's country) and respect the
    recipient's daytime for marketing texts: outside 08:00-21:00 local, wait, don't drop."""
    from lifecycle.channels.sms import OutboundSMS, normalise_mobile, send_window
    from lifecycle.render import render_sms

    number, region, problem = normalise_mobile(row.phone, row.country)
    if problem:
        raise Skip(problem)
    if row.kind == "marketing":
        open_now, next_start = send_window(now, row.timezone)
        if not open_now:
            raise Defer(next_start, "waiting for the recipient's SMS hours (08:00-21:00 local time)")
    return OutboundSMS(to=number, body=render_sms(row.template, template_context(row), for_send=True),
                       key=row.idempotency_key, country=region)


def build_push(row: Any, spec: JourneySpec, now: datetime):
    from lifecycle.channels.push import OutboundPush
    from lifecycle.render import render_push

    if not row.endpoint:
        raise Skip("no live push subscription")
    step = next((s for s in spec.steps if s.name == row.step), None)  # exit messages use the defaults
    return OutboundPush(
        endpoint=row.endpoint, p256dh=row.p256dh, auth=row.auth,
        payload=render_push(row.template, template_context(row), for_send=True), key=row.idempotency_key,
        ttl=int(step.ttl.total_seconds()) if step else 86400, urgency=step.urgency if step else "normal",
    )


def claim_window(engine: Engine, message_ids: list[int], token: str,
                 internet_message_ids: list[str | None] | None = None) -> set[int]:
    """Atomically take the planned messages among `message_ids` (one statement, one commit);
    the ids taken. Those another run claimed first are left out: theirs to send."""
    with engine.begin() as conn:
        return _claim(conn, message_ids, token, internet_message_ids)


def _claim(conn: sa.Connection, message_ids: list[int], token: str,
           internet_message_ids: list[str | None] | None = None) -> set[int]:
    if not message_ids:
        return set()
    return set(conn.execute(
        sa.text(CLAIM_WINDOW_SQL),
        {"ids": list(message_ids), "token": token,
         "mids": list(internet_message_ids or [None] * len(message_ids))},
    ).scalars())


def claim_message(engine: Engine, message_id: int, token: str) -> bool:
    """Atomically take one planned message; False if someone else (another run) has it."""
    return claim_window(engine, [message_id], token) == {message_id}


def mark_window(engine: Engine, token: str, results: list[tuple[Any, Outcome, str | None]],
                sent_at: datetime | None = None) -> dict[int, str]:
    """Record the outcomes of claimed messages in one statement and one commit. `results` holds
    (row, outcome, next channel for a fallback); a row needs message_id, customer_id, channel
    and journey. `sent_at` is the sender's clock (the wall clock in production, the simulated
    time in a replay of the past). Side effects of rare outcomes (a suppression, a revoked push
    subscription, a fallback on the next channel) go in the same transaction."""
    with engine.begin() as conn:
        return _mark(conn, token, results, sent_at)


def _mark(conn: sa.Connection, token: str, results: list[tuple[Any, Outcome, str | None]],
          sent_at: datetime | None) -> dict[int, str]:
    if not results:
        return {}
    marked = dict(conn.execute(sa.text(MARK_WINDOW_SQL), _mark_binds(token, results, sent_at)).all())
    _record_side_effects(conn, results, marked)
    return marked


def _mark_binds(token: str, results: list[tuple[Any, Outcome, str | None]], sent_at: datetime | None) -> dict:
    return {
        "ids": [row.message_id for row, _, _ in results],
        "outcomes": [o.status for _, o, _ in results],
        "reasons": [o.reason for _, o, _ in results],
        "pids": [o.provider_message_id for _, o, _ in results],
        "details": [json.dumps(o.details) if o.details else "{}" for _, o, _ in results],
        "token": token, "sent_at": sent_at, "max_attempts": MAX_ATTEMPTS,
    }


def _has_side_effects(outcome: Outcome) -> bool:
    """Whether recording `outcome` writes more than its message's row (see _record_side_effects)."""
    return bool(outcome.revoke or outcome.fallback or outcome.suppress)


def _record_side_effects(conn: sa.Connection, results: list[tuple[Any, Outcome, str | None]],
                         marked: dict[int, str]) -> None:
    for row, outcome, next_channel in results:
        if row.message_id not in marked:
            continue
        if outcome.revoke:  # the push service says this exact subscription is gone
            conn.execute(
                sa.text("UPDATE lifecycle.push_subscriptions SET revoked_at = now() "
                        "WHERE endpoint = :endpoint AND revoked_at IS NULL"),
                {"endpoint": outcome.revoke},
            )
        if outcome.fallback and next_channel:
            plan_fallback(conn, row.message_id, next_channel, outcome.reason or "")
        if outcome.suppress:
            record_suppression(conn, row.customer_id, row.channel, outcome.suppress, row.journey)


def mark(engine: Engine, message_id: int, token: str, outcome: Outcome, customer_id: str, channel: str,
         journey: str, next_channel: str | None = None, sent_at: datetime | None = None) -> str:
    """Record the outcome of one claimed message; the status it ends in (mark_window for one)."""
    row = _Row(message_id=message_id, customer_id=customer_id, channel=channel, journey=journey)
    return mark_window(engine, token, [(row, outcome, next_channel)], sent_at).get(message_id, "taken")


@dataclasses.dataclass(frozen=True)
class _Row:
    message_id: int
    customer_id: str
    channel: str
    journey: str


def plan_fallback(conn: sa.Connection, message_id: int, channel: str, why: str) -> None:
    """Plan the same step on the journey's next channel; the next run (or the dispatcher)
    sends it after the usual send-time checks. It keeps the A/B variant: the same message on
    another channel, counted in its variant's funnel."""
    conn.execute(
        sa.text(
            """
            INSERT INTO lifecycle.messages
                (idempotency_key, journey, mode, enrollment_id, customer_id, step, channel, template, kind,
                 status, reason, due_at, planned_for, planned_run_id, run_id, fallback_of, expires_at, variant)
            SELECT regexp_replace(idempotency_key, ':[a-z]+$', ':' || :channel), journey, mode, enrollment_id,
                   customer_id, step, :channel, template, kind, 'planned',
                   'fallback from ' || channel || ': ' || :why, due_at, planned_for, planned_run_id, NULL, message_id,
                   expires_at, variant
            FROM lifecycle.messages WHERE message_id = :id
            ON CONFLICT DO NOTHING
            """
        ),
        {"id": message_id, "channel": channel, "why": why},
    )


def _release(conn: sa.Connection, message_ids: list[int], token: str) -> None:
    """Give back claims whose provider call never started (the channel was unavailable)."""
    conn.execute(
        sa.text("UPDATE lifecycle.messages SET status = 'planned', attempts = attempts - 1, "
                "claim_token = NULL, internet_message_id = NULL, updated_at = now() "
                "WHERE message_id = ANY(CAST(:ids AS bigint[])) AND claim_token = :t AND status = 'claimed'"),
        {"ids": list(message_ids), "t": token},
    )


def window_size(spec: JourneySpec) -> int:
    """Messages claimed per statement: the journey's `send_window`, else LIFECYCLE_SEND_WINDOW."""
    return spec.send_window or settings().send_window


def send_batch(
    engine: Engine,
    spec: JourneySpec,
    batch: Batch,
    channel_for: Callable[[str], Sender],
    *,
    dry_run: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, int]:
    """Deliver one batch; return message counts by final status. Raises RetryBatch when
    transient failures put messages back to planned (Airflow then retries the task).
    `clock` is the sender's "now": lateness and time-of-day rules (SMS hours) read it. The wall
    clock in production; a simulation (demo, runner, tests) passes the run's as_of instead."""
    from lifecycle.links import signing_key

    # Links are signed per message: fail the task before anything is claimed. Read and checked
    # once for the batch (reading the settings was a fifth of a message's rendering).
    key_token = _BATCH_KEY.set(signing_key())
    try:
        return _send_batch(engine, spec, batch, channel_for, dry_run, clock)
    finally:
        _BATCH_KEY.reset(key_token)


def _send_batch(engine: Engine, spec: JourneySpec, batch: Batch, channel_for: Callable[[str], Sender],
                dry_run: bool, clock: Callable[[], datetime]) -> dict[str, int]:
    from lifecycle.render import reload_changed_templates

    reload_changed_templates()  # once per batch: an edit since the last batch (a fix) is used
    counts: Counter[str] = Counter()
    with engine.begin() as conn:
        counts["failed"] += reconcile_unconfirmed(conn, batch)
        counts["checked_out"] += apply_send_time_checks(conn, spec, batch, clock())
        counts["checked_out"] += apply_frequency_cap(conn, batch, clock())
        rows = load_batch(conn, batch)
    token = secrets.token_hex(8)
    channels: dict[str, Sender] = {}
    template_errors: dict[str, int] = {}  # a broken template's error -> messages left planned for the fix
    size = window_size(spec)
    windows = [rows[start:start + size] for start in range(0, len(rows), size)]
    try:
        if dry_run:
            for window in windows:
                _dry_run_window(engine, spec, window, token, clock(), counts, template_errors)
        else:
            _send_windows(engine, spec, windows, token, channel_for, channels, clock, counts,
                          lambda rows, now: _render_window(engine, spec, rows, now, False, counts, template_errors))
    finally:
        for channel in channels.values():
            channel.__exit__(None, None, None)
    counts.pop("checked_out", None)
    if template_errors:
        raise TemplateBroken(template_errors)
    if counts.get("planned"):
        raise RetryBatch(f"{counts['planned']} message(s) hit transient errors and will be retried")
    return dict(counts)


def _next_channel(spec: JourneySpec, row: Any) -> str | None:
    step = next((s for s in spec.steps if s.name == row.step), None)
    if step is None or row.channel not in step.channels:
        return None
    following = step.channels[step.channels.index(row.channel) + 1:]
    return following[0] if following else None


def settle_unsent(engine: Engine, settles: list[tuple[int, str, str, datetime | None]]) -> dict[int, str]:
    """Planned messages that will not be attempted now, (id, status, reason, not_before) each, in
    one statement: skipped or failed for good, or waiting until `not_before` (released from this
    run's batch so any later run or the dispatcher sends them). The count each adds to: its
    status, 'waiting', or 'taken' when another run had it first."""
    if not settles:
        return {}
    with engine.begin() as conn:
        done = set(conn.execute(sa.text(SETTLE_UNSENT_SQL), {
            "ids": [s[0] for s in settles], "statuses": [s[1] for s in settles],
            "reasons": [s[2] for s in settles], "not_befores": [s[3] for s in settles],
        }).scalars())
    return {id_: ("taken" if id_ not in done else "waiting" if not_before is not None else status)
            for id_, status, _, not_before in settles}


def what_would_go_out(row: Any, outbound: Any) -> tuple[str | None, str]:
    """A dry run's record of the message: its subject (email subject, push title; SMS has none)
    and a sha256 of its rendered body (email: text and HTML parts; SMS: the text; push: the
    JSON payload), so runs can be compared without storing customers' messages. `outbound` is
    None for an SMS waiting for the recipient's hours: its text is rendered here."""
    from lifecycle.render import render_sms

    if row.channel == "email":
        subject, body = outbound.subject, outbound.text + "\0" + outbound.html
    elif row.channel == "sms":
        subject = None
        body = outbound.body if outbound is not None else render_sms(row.template, template_context(row))
    elif row.channel == "push":
        subject = outbound.payload.get("title")
        body = json.dumps(outbound.payload, sort_keys=True, ensure_ascii=False)
    else:  # a channel added later: what its builder made
        subject, body = None, repr(outbound)
    return subject, hashlib.sha256(body.encode()).hexdigest()


@dataclasses.dataclass
class _Prepared:
    """One message of a window, rendered (or with the reason it cannot be)."""

    row: Any
    outbound: Any = None
    waits: str | None = None  # dry run: the SMS hours it would wait for
    broken: Outcome | None = None  # rendering crashed: recorded failed under a claim, as before


def _prepare(row: Any, spec: JourneySpec, now: datetime, dry_run: bool, settles: list,
             template_errors: dict[str, int], engine: Engine) -> _Prepared | None:
    """Render one message for its channel; None when it will not be attempted now."""
    row = variants.for_row(spec, row)  # an A/B variant's template and subject
    try:
        gone = unfilled_references(row.context)  # load_batch filled the rest with today's cards
        if gone:
            raise Skip(f"product {', '.join(gone)} is no longer in the shop")
        outbound = registry.channel(row.channel).outbound(row, spec, now)
        # tracked links and open pixel (lifecycle.tracking); a dry run records the untracked message
        return _Prepared(row, outbound if dry_run else track_outbound(row, spec, outbound, key=_BATCH_KEY.get()))
    except Skip as exc:
        settles.append((row.message_id, "skipped", str(exc), None))
    except Undeliverable as exc:
        log.warning("message %s (%s/%s) not sent: %s", row.message_id, row.journey, row.step, exc)
        settles.append((row.message_id, "failed", str(exc), None))
    except Defer as exc:
        if dry_run:
            return _Prepared(row, waits=str(exc))
        settles.append((row.message_id, "planned", str(exc), exc.until))
    except TemplateRenderError as exc:  # nothing claimed, nothing delivered: the rest goes on
        _wait_for_template_fix(engine, row, exc)
        template_errors[str(exc)] = template_errors.get(str(exc), 0) + 1
    except Exception as exc:  # a template bug must not stop the rest of the batch
        log.error("render failed for message %s (%s/%s): %s", row.message_id, row.journey, row.step, exc)
        return _Prepared(row, broken=Outcome("failed", f"render error: {exc}"))
    return None


def _render_window(engine, spec, rows, now, dry_run, counts, template_errors) -> list[_Prepared]:
    """Render a window's messages; record at once those that will not be attempted now."""
    settles: list[tuple[int, str, str, datetime | None]] = []
    prepared = [p for p in (_prepare(row, spec, now, dry_run, settles, template_errors, engine) for row in rows) if p]
    counts.update(settle_unsent(engine, settles).values())
    return prepared


def _claim_prepared(conn, prepared: list[_Prepared], token: str, counts) -> list[_Prepared]:
    """Claim a rendered window in one statement (with each email's Message-ID); those taken."""
    return _taken(prepared, _claim(conn, [p.row.message_id for p in prepared], token, _message_ids(prepared)), counts)


def _message_ids(prepared: list[_Prepared]) -> list[str | None]:
    """Each message's Message-ID header, stored with its claim (None for other channels)."""
    return [p.outbound.message_id if p.row.channel == "email" and p.outbound is not None else None for p in prepared]


def _taken(prepared: list[_Prepared], claimed: set[int], counts) -> list[_Prepared]:
    if len(claimed) < len(prepared):  # another run claimed them first: theirs to send
        counts["taken"] += len(prepared) - len(claimed)
    return [p for p in prepared if p.row.message_id in claimed]


def _record_and_claim(conn, token: str, results: list[tuple[Any, Outcome, str | None]], sent_at: datetime | None,
                      upcoming: list[_Prepared], counts) -> list[_Prepared]:
    """Record a delivered window and claim the next in one statement on an autocommit
    connection: one round trip, one commit. For outcomes without side effects (see
    _record_side_effects); the next window's messages taken."""
    got = conn.execute(sa.text(RECORD_AND_CLAIM_SQL), {
        **_mark_binds(token, results, sent_at),
        "claim_ids": [p.row.message_id for p in upcoming], "claim_mids": _message_ids(upcoming),
    }).all()
    # A recorded row is never left 'claimed' (sent, failed, or planned again for a retry).
    counts.update(status for _, status in got if status != "claimed")
    return _taken(upcoming, {message_id for message_id, status in got if status == "claimed"}, counts)


def _dry_run_window(engine, spec, rows, token, now, counts, template_errors) -> None:
    prepared = _render_window(engine, spec, rows, now, True, counts, template_errors)
    with engine.begin() as conn:
        prepared = _claim_prepared(conn, prepared, token, counts)
    counts.update(_record_dry_run(engine, prepared))


def send_rendered(engine: Engine, spec: JourneySpec, windows: Sequence[Sequence[tuple[Any, Any]]],
                  channel_for: Callable[[str], Sender], *,
                  clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> dict[str, int]:
    """send_batch's window loop (claim, deliver, record) on messages rendered beforehand: windows
    of (row as load_batch loads it, the channel's outbound message). Message counts by status.
    benchmarks/send_throughput.py times the project's delivery with it."""
    counts: Counter[str] = Counter()
    channels: dict[str, Sender] = {}
    try:
        _send_windows(engine, spec, windows, secrets.token_hex(8), channel_for, channels, clock, counts,
                      lambda window, now: [_Prepared(row, outbound) for row, outbound in window])
    finally:
        for channel in channels.values():
            channel.__exit__(None, None, None)
    return {status: n for status, n in counts.items() if n}


def _send_windows(engine, spec, windows, token, channel_for, channels, clock, counts, render) -> None:
    """Window by window, at most one window claimed and not yet recorded at any moment: while
    window k is with the provider (a thread: socket waits), window k+1 is rendered
    (`render(window, now)`: its messages to attempt); then k's outcomes and k+1's claim are
    committed together, one transaction, and k+1 goes out. The provider's time and ours overlap,
    the at-most-once bound stays one window."""
    if not windows:
        return
    now = clock()
    upcoming = render(windows[0], now)
    _open_channels(upcoming, channels, channel_for)
    # One connection for the loop, each statement its own transaction: a window's claim, and
    # then its outcomes with the next window's claim, are single statements (one round trip and
    # one commit each). Rare outcomes that write elsewhere too take a transaction of their own.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="send-window") as deliverer, \
            _Workers() as workers:
        claimed = _claim_prepared(db, upcoming, token, counts)
        for k in range(len(windows)):
            in_flight = deliverer.submit(_deliver_window, spec, claimed, channels, workers)
            upcoming, later = [], clock()
            try:
                if k + 1 < len(windows):
                    rendered = render(windows[k + 1], later)
                    _open_channels(rendered, channels, channel_for)
                    upcoming = rendered  # claimed below only once its channels are open
            finally:  # whatever happened meanwhile, what the provider said is recorded
                results, unavailable, error = in_flight.result()
                if unavailable or any(_has_side_effects(outcome) for _, outcome, _ in results):
                    with engine.begin() as conn:
                        counts.update(_mark(conn, token, results, sent_at=now).values())
                        if unavailable:
                            _release(conn, unavailable, token)
                        else:
                            claimed = _claim_prepared(conn, upcoming, token, counts) if upcoming else []
                else:
                    claimed = _record_and_claim(db, token, results, now, upcoming, counts)
                if unavailable:  # committed above: the rest stays planned for the task's retry
                    raise RetryBatch(str(error)) from error
            now = later


def _open_channels(prepared: list[_Prepared], channels: dict, channel_for) -> None:
    """Open each channel before claiming anything for it: a configuration error (a missing Airflow
    connection, a bad key) then fails the task with every message still planned, instead of
    leaving a claim whose outcome looks unknown."""
    for p in prepared:
        if p.broken is None and p.row.channel not in channels:
            channels[p.row.channel] = channel_for(p.row.channel).__enter__()


def _concurrency(sender: Sender) -> int:
    """Requests a sender takes in flight at once (its optional `concurrency`; 1 without)."""
    return int(getattr(sender, "concurrency", 1) or 1)


class _Workers(dict):
    """The threads of the batch's concurrent senders, by channel: started once for the batch
    rather than once per window (a thread pool per window cost 20 us of CPU and 90 us of wall
    time per message)."""

    def pool(self, sender: Sender) -> ThreadPoolExecutor | None:
        workers = _concurrency(sender)
        if workers < 2:
            return None
        if sender.name not in self:
            self[sender.name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"send-{sender.name}")
        return self[sender.name]

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        for pool in self.values():
            pool.shutdown()


def _deliver_window(spec, prepared: list[_Prepared], channels: dict, workers: _Workers):
    """Hand a claimed window to its providers (no database here): (results to record, ids never
    handed over, the ChannelUnavailable that stopped them)."""
    results: list[tuple[Any, Outcome, str | None]] = [(p.row, p.broken, None) for p in prepared if p.broken]
    unavailable: list[int] = []
    error: ChannelUnavailable | None = None
    for name in dict.fromkeys(p.row.channel for p in prepared if not p.broken):
        group = [p for p in prepared if not p.broken and p.row.channel == name]
        sender = channels[name]
        delivered = deliver_all(sender, [p.outbound for p in group], workers.pool(sender))
        for p, result in zip(group, delivered, strict=True):
            if isinstance(result, ChannelUnavailable):
                unavailable.append(p.row.message_id)
                error = error or result
            else:
                results.append((p.row, result, _next_channel(spec, p.row)))
    return results, unavailable, error


def deliver_all(sender: Sender, outbounds: Sequence[Any],
                pool: ThreadPoolExecutor | None = None) -> list[Outcome | ChannelUnavailable]:
    """Each message's outcome, in order; ChannelUnavailable for those never handed over. A sender
    with `deliver_many` takes the window at once (SMTP pipelining); one with `concurrency` > 1
    gets that many requests in flight (HTTP keep-alive, a connection each; `pool`: the threads,
    else started for this call), one recipient's messages still one after another and in order
    (`sender.recipient(message)`: an order's confirmation is not overtaken by its shipping
    notice); others, one by one."""
    if hasattr(sender, "deliver_many"):
        return sender.deliver_many(outbounds)
    if _concurrency(sender) < 2 or len(outbounds) < 2:
        return _deliver_in_order(sender, outbounds)
    recipient = getattr(sender, "recipient", None) or (lambda message: None)
    chains: dict[Any, list[int]] = {}
    for i, outbound in enumerate(outbounds):
        key = recipient(outbound)
        chains.setdefault(i if key is None else key, []).append(i)
    results: list[Outcome | ChannelUnavailable | None] = [None] * len(outbounds)

    def chain(indexes: list[int]) -> None:
        for i, result in zip(indexes, _deliver_in_order(sender, [outbounds[i] for i in indexes]), strict=True):
            results[i] = result

    if pool is not None:
        list(pool.map(chain, chains.values()))
    else:
        workers = min(_concurrency(sender), len(chains))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"send-{sender.name}") as own:
            list(own.map(chain, chains.values()))
    return results  # type: ignore[return-value]


def _deliver_in_order(sender: Sender, outbounds: Sequence[Any]) -> list[Outcome | ChannelUnavailable]:
    """One after another; after a ChannelUnavailable nothing more is attempted (the rest share it)."""
    results: list[Outcome | ChannelUnavailable] = []
    for outbound in outbounds:
        try:
            results.append(sender.deliver(outbound))
        except ChannelUnavailable as exc:
            return results + [exc] * (len(outbounds) - len(results))
    return results


def _record_dry_run(engine: Engine, prepared: list[_Prepared]) -> Counter[str]:
    """A dry run's window: what would have gone out, recorded in one statement (a message whose
    rendering crashed is recorded failed, as a live run records it)."""
    if not prepared:
        return Counter()
    seen = [what_would_go_out(p.row, p.outbound) if p.broken is None else (None, None) for p in prepared]
    reasons = [p.broken.reason if p.broken else
               "dry run: rendered, not delivered" + (f" ({p.waits})" if p.waits else "") for p in prepared]
    with engine.begin() as conn:
        return Counter(conn.execute(
            sa.text("UPDATE lifecycle.messages m SET status = CASE WHEN d.broken THEN 'failed' ELSE 'dry_run' END, "
                    "reason = d.reason, updated_at = now(), dry_run_subject = d.subject, dry_run_body_sha256 = d.sha "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[]), CAST(:subjects AS text[]), "
                    "CAST(:shas AS text[]), CAST(:broken AS boolean[])) AS d(message_id, reason, subject, sha, broken) "
                    "WHERE m.message_id = d.message_id RETURNING m.status"),
            {"ids": [p.row.message_id for p in prepared], "reasons": reasons,
             "subjects": [subject for subject, _ in seen], "shas": [sha for _, sha in seen],
             "broken": [p.broken is not None for p in prepared]},
        ).scalars())
