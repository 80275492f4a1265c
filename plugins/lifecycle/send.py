"""Send one batch: send-time checks, then claim → render → deliver → mark, message by message.

The at-most-once guarantee lives here. A message is claimed (status 'claimed', committed)
immediately before the provider is called and marked right after, so a worker killed
mid-batch leaves at most one message whose outcome is unknown. A retried task first
records such leftovers as 'failed: outcome unknown' instead of sending them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle import channels as registry
from lifecycle import variants
from lifecycle.channels.base import ChannelUnavailable, Outcome, Sender
from lifecycle.config import SHOP
from lifecycle.ids import CONSENT, CONTACTS, PUSH_SUBSCRIPTIONS, shop_ids
from lifecycle.model import Batch, MessageStatus
from lifecycle.render import TemplateRenderError
from lifecycle.spec import JourneySpec
from lifecycle.sql import query
from lifecycle.suppression import BLOCKS_TRANSACTIONAL, lift_sunsets, record_suppression

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
# The batch's long static statements, in include/sql/lifecycle/queries/.
SEND_TIME_CHECKS_SQL = query("send_time_checks")
FREQUENCY_CAP_SQL = query("frequency_cap")
LOAD_BATCH_SQL = query("load_batch")


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
    return conn.execute(
        sa.text(LOAD_BATCH_SQL.format(**_id_placeholders(ids))),
        _batch_binds(batch),
    ).all()


def template_context(row: Any) -> dict:
    from lifecycle.links import links_for

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
        "links": links_for(row.customer_id, row.channel),
        "journey": row.journey,
        "step": row.step,
        "currency": context.get("currency", "EUR"),
        "kind": row.kind,  # transactional mail says what its unsubscribe link stops (marketing only)
    }


def build_email(row: Any, spec: JourneySpec, now: datetime):
    """Render the templates and wrap them with the headers inbox providers expect."""
    from lifecycle.channels.email import OutboundEmail, message_id_for
    from lifecycle.render import render_email

    context = template_context(row)
    rendered = render_email(row.template, context, subject=getattr(row, "variant_subject", None))
    headers = {"X-Lifecycle-Journey": row.journey, "X-Lifecycle-Step": row.step}
    if row.kind == "marketing":
        links = context["links"]
        headers["List-Unsubscribe"] = f"<{links['unsubscribe']}>, <{links['unsubscribe_mailto']}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    outbound = OutboundEmail(
        to=row.email, subject=rendered.subject, text=rendered.text, html=rendered.html,
        message_id=message_id_for(row.idempotency_key), headers=headers,
    )
    _check_composes(outbound)
    return outbound


def _check_composes(outbound) -> None:
    """Compose the message as the channel will, before the claim: a header the email package
    refuses becomes this message's `failed`, never a claim whose outcome looks unknown."""
    from lifecycle.channels.email import compose, header_problem

    try:
        compose(outbound, SHOP["from_email"], SHOP["name"])
    except (ValueError, TypeError) as exc:
        raise Undeliverable(f"cannot compose the email: {header_problem(outbound) or exc}") from None


def build_sms(row: Any, spec: JourneySpec, now: datetime):
    """Render, normalise the number (E.164 by the customer's country) and respect the
    recipient's daytime for marketing texts: outside 08:00-21:00 local, wait, don't drop."""
    from lifecycle.channels.sms import OutboundSMS, normalise_number, send_window
    from lifecycle.render import render_sms

    number, problem = normalise_number(row.phone, row.country)
    if problem:
        raise Skip(problem)
    if row.kind == "marketing":
        open_now, next_start = send_window(now, row.timezone)
        if not open_now:
            raise Defer(next_start, "waiting for the recipient's SMS hours (08:00-21:00 local time)")
    return OutboundSMS(to=number, body=render_sms(row.template, template_context(row)), key=row.idempotency_key)


def build_push(row: Any, spec: JourneySpec, now: datetime):
    from lifecycle.channels.push import OutboundPush
    from lifecycle.render import render_push

    if not row.endpoint:
        raise Skip("no live push subscription")
    step = next((s for s in spec.steps if s.name == row.step), None)  # exit messages use the defaults
    return OutboundPush(
        endpoint=row.endpoint, p256dh=row.p256dh, auth=row.auth,
        payload=render_push(row.template, template_context(row)), key=row.idempotency_key,
        ttl=int(step.ttl.total_seconds()) if step else 86400, urgency=step.urgency if step else "normal",
    )


def claim_message(engine: Engine, message_id: int, token: str) -> bool:
    """Atomically take one planned message; False if someone else (another run) has it."""
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                """
                UPDATE lifecycle.messages
                   SET status = 'claimed', claim_token = :token, claimed_at = now(),
                       attempts = attempts + 1, updated_at = now()
                 WHERE message_id = :id AND status = 'planned'
                """
            ),
            {"id": message_id, "token": token},
        ).rowcount == 1


def mark(engine: Engine, message_id: int, token: str, outcome: Outcome, customer_id: str, channel: str,
         journey: str, next_channel: str | None = None, sent_at: datetime | None = None) -> str:
    """Record the outcome of a claimed message; return the status it ends in. `sent_at` is the
    sender's clock (the wall clock in production, the simulated time in a replay of the past)."""
    status = {"sent": MessageStatus.SENT, "failed": MessageStatus.FAILED, "unknown": MessageStatus.FAILED,
              "retry": MessageStatus.PLANNED}[outcome.status]
    reason = outcome.reason
    if outcome.status == "unknown":
        reason = f"outcome unknown: {reason}"
    with engine.begin() as conn:
        if outcome.status == "retry":
            status = conn.execute(
                sa.text("SELECT CASE WHEN attempts >= :max THEN 'failed' ELSE 'planned' END "
                        "FROM lifecycle.messages WHERE message_id = :id"),
                {"id": message_id, "max": MAX_ATTEMPTS},
            ).scalar_one()
            reason = f"{'failed after retries' if status == 'failed' else 'will retry'}: {reason}"
        conn.execute(
            sa.text(
                """
                UPDATE lifecycle.messages
                   SET status = :status, reason = :reason, provider_message_id = :pid,
                       sent_at = CASE WHEN :status = 'sent' THEN coalesce(CAST(:sent_at AS timestamptz), now()) END,
                       updated_at = now(),
                       payload = payload || CAST(:details AS jsonb)
                 WHERE message_id = :id AND claim_token = :token
                """
            ),
            {"status": status, "reason": reason, "pid": outcome.provider_message_id, "id": message_id,
             "token": token, "details": json.dumps(outcome.details), "sent_at": sent_at},
        )
        if outcome.revoke:  # the push service says this exact subscription is gone
            conn.execute(
                sa.text("UPDATE lifecycle.push_subscriptions SET revoked_at = now() "
                        "WHERE endpoint = :endpoint AND revoked_at IS NULL"),
                {"endpoint": outcome.revoke},
            )
        if outcome.fallback and next_channel:
            plan_fallback(conn, message_id, next_channel, outcome.reason or "")
        if outcome.suppress:
            record_suppression(conn, customer_id, channel, outcome.suppress, journey)
    return status


def plan_fallback(conn: sa.Connection, message_id: int, channel: str, why: str) -> None:
    """Plan the same step on the journey's next channel; the next run (or the dispatcher)
    sends it after the usual send-time checks."""
    conn.execute(
        sa.text(
            """
            INSERT INTO lifecycle.messages
                (idempotency_key, journey, mode, enrollment_id, customer_id, step, channel, template, kind,
                 status, reason, due_at, planned_for, planned_run_id, run_id, fallback_of, expires_at)
            SELECT regexp_replace(idempotency_key, ':[a-z]+$', ':' || :channel), journey, mode, enrollment_id,
                   customer_id, step, :channel, template, kind, 'planned',
                   'fallback from ' || channel || ': ' || :why, due_at, planned_for, planned_run_id, NULL, message_id,
                   expires_at
            FROM lifecycle.messages WHERE message_id = :id
            ON CONFLICT DO NOTHING
            """
        ),
        {"id": message_id, "channel": channel, "why": why},
    )


def _release(engine: Engine, message_id: int, token: str) -> None:
    """Give back a claim whose provider call never started (the channel was unavailable)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE lifecycle.messages SET status = 'planned', attempts = attempts - 1, "
                    "claim_token = NULL, updated_at = now() WHERE message_id = :id AND claim_token = :t"),
            {"id": message_id, "t": token},
        )


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

    signing_key()  # links are signed per message: fail the task before anything is claimed
    counts: Counter[str] = Counter()
    with engine.begin() as conn:
        counts["failed"] += reconcile_unconfirmed(conn, batch)
        counts["checked_out"] += apply_send_time_checks(conn, spec, batch, clock())
        counts["checked_out"] += apply_frequency_cap(conn, batch, clock())
        rows = load_batch(conn, batch)
    token = secrets.token_hex(8)
    channels: dict[str, Sender] = {}
    template_errors: dict[str, int] = {}  # a broken template's error -> messages left planned for the fix
    try:
        for row in rows:
            try:
                counts[_send_one(engine, spec, row, token, channel_for, channels, dry_run, clock())] += 1
            except TemplateRenderError as exc:  # nothing claimed, nothing delivered: the rest goes on
                _wait_for_template_fix(engine, row, exc)
                template_errors[str(exc)] = template_errors.get(str(exc), 0) + 1
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


def _settle_unsent(engine: Engine, message_id: int, status: str, reason: str, not_before=None) -> str:
    """A planned message that will not be attempted now: skipped for good, or waiting until
    `not_before` (released from this run's batch so any later run or the dispatcher sends it)."""
    with engine.begin() as conn:
        done = conn.execute(
            sa.text(
                """
                UPDATE lifecycle.messages
                   SET status = :status, reason = :reason, not_before = :not_before, updated_at = now(),
                       run_id = CASE WHEN :not_before IS NULL THEN run_id END,
                       batch_no = CASE WHEN :not_before IS NULL THEN batch_no END
                 WHERE message_id = :id AND status = 'planned'
                """
            ),
            {"id": message_id, "status": status, "reason": reason, "not_before": not_before},
        ).rowcount
    if not done:
        return "taken"
    return "waiting" if not_before is not None else status


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


def _send_one(engine, spec, row, token, channel_for, channels, dry_run, now) -> str:
    waits, row = None, variants.for_row(spec, row)  # an A/B variant's template and subject
    try:
        outbound = registry.channel(row.channel).outbound(row, spec, now)
    except Skip as exc:
        return _settle_unsent(engine, row.message_id, "skipped", str(exc))
    except Undeliverable as exc:
        log.warning("message %s (%s/%s) not sent: %s", row.message_id, row.journey, row.step, exc)
        return _settle_unsent(engine, row.message_id, "failed", str(exc))
    except Defer as exc:
        if not dry_run:
            return _settle_unsent(engine, row.message_id, "planned", str(exc), not_before=exc.until)
        waits = str(exc)
    except TemplateRenderError:
        raise  # the template needs fixing: send_batch leaves the message planned and fails the task
    except Exception as exc:  # a template bug must not stop the rest of the batch
        log.error("render failed for message %s (%s/%s): %s", row.message_id, row.journey, row.step, exc)
        if not claim_message(engine, row.message_id, token):
            return "taken"
        return mark(engine, row.message_id, token, Outcome("failed", f"render error: {exc}"),
                    row.customer_id, row.channel, row.journey)
    if not dry_run and row.channel not in channels:
        # Open the channel before claiming anything: a configuration error (a missing Airflow
        # connection, a bad key) then fails the task with every message still planned, instead
        # of leaving a claim whose outcome looks unknown.
        channels[row.channel] = channel_for(row.channel).__enter__()
    if not claim_message(engine, row.message_id, token):
        return "taken"  # another run claimed it first: it is theirs to send
    if dry_run:
        subject, body_sha256 = what_would_go_out(row, outbound if waits is None else None)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE lifecycle.messages SET status = 'dry_run', reason = :reason, updated_at = now(), "
                        "dry_run_subject = :subject, dry_run_body_sha256 = :sha WHERE message_id = :id"),
                {"id": row.message_id, "reason": "dry run: rendered, not delivered" + (f" ({waits})" if waits else ""),
                 "subject": subject, "sha": body_sha256},
            )
        return "dry_run"
    try:
        outcome = channels[row.channel].deliver(outbound)
    except ChannelUnavailable as exc:
        _release(engine, row.message_id, token)
        raise RetryBatch(str(exc)) from exc
    return mark(engine, row.message_id, token, outcome, row.customer_id, row.channel, row.journey,
                next_channel=_next_channel(spec, row), sent_at=now)
