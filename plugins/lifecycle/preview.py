"""`lifecycle preview`: what one customer would receive from a journey, rendered to files.

The segment runs for one interval inside a read-only transaction that is rolled back, so
nothing is written to `lifecycle` (no run, enrollment, coupon or message rows). Each step's
message is built by the sender's own builders (send.build_email/build_sms/build_push) and,
for email, composed by the channel's `compose`, so the .eml is what the SMTP server would get.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle import channels as registry
from lifecycle.products import fill_product_cards
from lifecycle.run_context import RunContext
from lifecycle.spec import Coupon, JourneySpec
from lifecycle.sql import execute_file_sql

PREVIEW_RUN_ID = "preview"
OTHERS_SHOWN = 5  # how many selected customers to suggest when the asked-for one is not selected


class NotSelected(LookupError):
    """The customer is not in the segment for this interval (or nobody is)."""


@dataclass
class PreviewResult:
    journey: str
    interval_start: datetime
    interval_end: datetime
    customer_id: str
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what would not go out, and why


def preview_interval(spec: JourneySpec, as_of: datetime | None) -> tuple[datetime, datetime]:
    """The schedule's interval ending at the latest tick at or before `as_of` (default: now)."""
    from croniter import croniter

    moment = (as_of or datetime.now(UTC)).astimezone(UTC)
    it = croniter(spec.cron, moment + timedelta(microseconds=1))
    end = it.get_prev(datetime)
    start = it.get_prev(datetime)
    return start.replace(fold=0), end.replace(fold=0)


def selected_rows(engine: Engine, spec: JourneySpec, run: RunContext) -> list[sa.Row]:
    """The segment's rows for the interval, each with its context as enrollment stores it.
    Ordered by customer and entry key (unique per journey), so "the first" is stable."""
    sql = (f"SELECT segment.{spec.customer_id}::text AS _customer, segment.{spec.entry_key}::text AS _key, "
           f"to_jsonb(segment) AS _context FROM (\n{spec.sql}\n) AS segment "
           f"ORDER BY segment.{spec.customer_id}, segment.{spec.entry_key}::text")  # ids in their own order
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # the segment cannot write, even by mistake
        try:
            return execute_file_sql(conn, spec.path, sql, run.binds(spec)).all()
        finally:
            conn.rollback()


def pick_row(rows: list[sa.Row], customer: str | None, spec: JourneySpec, run: RunContext) -> sa.Row:
    window = f"{run.interval_start.isoformat()} .. {run.interval_end.isoformat()}"
    if not rows:
        raise NotSelected(f"{spec.journey}: the segment selects nobody in the interval {window}")
    if customer is None:
        return rows[0]
    row = next((r for r in rows if r._customer == str(customer)), None)
    if row is None:
        others = list(dict.fromkeys(r._customer for r in rows))
        raise NotSelected(
            f"{spec.journey}: customer {customer} is not selected in the interval {window}; "
            f"{len(others)} customer(s) are, e.g. {', '.join(others[:OTHERS_SHOWN])}")
    return row


def _contact(conn: sa.Connection, customer_id: str) -> dict:
    found = conn.execute(
        sa.text("SELECT email, phone, first_name, last_name, locale, country, timezone "
                "FROM lifecycle.contacts WHERE customer_id::text = :c"), {"c": customer_id}).mappings().first()
    return dict(found) if found else dict.fromkeys(
        ("email", "phone", "first_name", "last_name", "locale", "country", "timezone"))


def _push_subscription(conn: sa.Connection, customer_id: str) -> dict:
    found = conn.execute(
        sa.text("SELECT endpoint, p256dh, auth FROM lifecycle.push_subscriptions "
                "WHERE customer_id::text = :c AND revoked_at IS NULL "
                "ORDER BY created_at DESC, subscription_id DESC LIMIT 1"), {"c": customer_id}).mappings().first()
    return dict(found) if found else {"endpoint": None, "p256dh": None, "auth": None}


def _messages(spec: JourneySpec, only_step: str | None) -> list[tuple[str, str, str, Coupon | None]]:
    """(step, channel, template, coupon) for every message step and exit message."""
    found = [(s.name, c, s.template, s.coupon) for s in spec.steps if s.template for c in s.channels]
    found += [(e.message_step, e.channel, e.template, e.coupon) for e in spec.exits if e.template and e.message_step]
    if only_step is not None:
        names = list(dict.fromkeys(m[0] for m in found))
        found = [m for m in found if m[0] == only_step]
        if not found:
            raise ValueError(f"{spec.journey}: no message step {only_step!r}; its steps are {', '.join(names)}")
    return found


def message_row(spec: JourneySpec, selected: sa.Row, step: str, channel: str, template: str,
                coupon: Coupon | None, contact: dict, push: dict, as_of: datetime) -> SimpleNamespace:
    """The row shape send.load_batch gives the builders; a coupon step gets a sample code."""
    key = f"preview:{spec.journey}:{selected._key}:{step}:{channel}"
    customer_id = int(selected._customer) if selected._customer.isdigit() else selected._customer
    return SimpleNamespace(
        message_id=0, idempotency_key=key, journey=spec.journey, step=step, channel=channel, template=template,
        kind=spec.kind, customer_id=customer_id, enrollment_key=selected._key, context=selected._context,
        coupon_code=(coupon.prefix or spec.journey[:2].upper() + "-") + "PREVIEW" if coupon else None,
        percent_off=coupon.percent_off if coupon else None,
        valid_until=as_of + timedelta(days=coupon.valid_days) if coupon else None,
        **contact, **push)


def render_files(spec: JourneySpec, row: SimpleNamespace, out: Path, now: datetime) -> tuple[Path | None, str | None]:
    """Write one message's file; return (path, a note when the sender would not send it as is)."""
    from lifecycle import send
    from lifecycle.channels.email import compose
    from lifecycle.config import SHOP
    from lifecycle.render import render_push, render_sms

    def file(ext: str) -> Path:  # step and channel: a step with a fallback channel has two files
        return out / f"{row.step}.{row.channel}.{ext}"

    note = None
    if row.channel == "email":
        try:
            outbound = send.build_email(row, spec, now)
        except send.Undeliverable as exc:
            return None, f"{row.step}/email: not written: {exc}"
        if not row.email:
            note = f"{row.step}/email: the customer has no email address: the sender would skip it"
        path = file("eml")
        path.write_bytes(compose(outbound, SHOP["from_email"], SHOP["name"]))
        return path, note
    if row.channel == "sms":
        try:
            body = send.build_sms(row, spec, now).body
        except (send.Skip, send.Defer) as exc:  # show the text anyway, and why it would not go now
            body, note = render_sms(row.template, send.template_context(row)), f"{row.step}/sms: {exc}"
        path = file("txt")
        path.write_text(body + "\n", encoding="utf-8")
        return path, note
    if row.channel == "push":
        try:
            payload = send.build_push(row, spec, now).payload
        except send.Skip as exc:
            payload, note = render_push(row.template, send.template_context(row)), f"{row.step}/push: {exc}"
    else:  # a channel added later (lifecycle.channels): what its builder makes, as JSON
        outbound = registry.channel(row.channel).outbound(row, spec, now)
        payload = dataclasses.asdict(outbound) if dataclasses.is_dataclass(outbound) else {"message": str(outbound)}
    path = file("json")
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path, note


def preview(engine: Engine, spec: JourneySpec, out: Path, *, customer: str | None = None,
            as_of: datetime | None = None, step: str | None = None) -> PreviewResult:
    """Render what `customer` (default: the first selected) would receive, without writing to
    `lifecycle`. Raises NotSelected when the customer is not in the segment for the interval."""
    messages = _messages(spec, step)  # an unknown --step fails before the segment runs
    start, end = preview_interval(spec, as_of)
    run = RunContext(spec.journey, PREVIEW_RUN_ID, "dry", start, end)
    selected = pick_row(selected_rows(engine, spec, run), customer, spec, run)
    with engine.connect() as conn:
        contact, push = _contact(conn, selected._customer), _push_subscription(conn, selected._customer)
        fill_product_cards(conn, [selected._context])  # as a send would: the shop's cards of today
        conn.rollback()
    out.mkdir(parents=True, exist_ok=True)
    result = PreviewResult(spec.journey, start, end, selected._customer)
    for name, channel, template, coupon in messages:
        row = message_row(spec, selected, name, channel, template, coupon, contact, push, end)
        path, note = render_files(spec, row, out, end)
        if path:
            result.written.append(path)
        if note:
            result.notes.append(note)
    return result
