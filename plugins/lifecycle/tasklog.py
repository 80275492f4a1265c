"""One human line per task in the Airflow task log, and stable reason codes to group by.

A message's `reason` reads `code: detail` (`late: not sent by ...`, `frequency cap: at most ...`,
`outcome unknown: ...`); reasons that carry no detail are their own code (`no consent`).
`reason_code` gives the part to group by: counts per code, not per customer-specific detail."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Statuses in the order an operator reads them: what went out first, then why the rest did not.
STATUS_ORDER = ("sent", "dry_run", "suppressed", "skipped", "expired", "failed", "planned", "waiting", "taken")


def reason_code(reason: str | None) -> str:
    """The stable part of a reason, to count by: the text before the first colon, without
    parenthesised details, URLs, or anything from the first word holding a number (an HTTP
    status, a count). A suppression's own reason (`suppressed: unsubscribed`) is its code."""
    if not reason:
        return "no reason"
    text = re.sub(r"\S+://\S+", "", re.sub(r"\s*\([^)]*\)", "", reason))
    head, _, detail = text.partition(":")
    if head.strip() == "suppressed" and detail.strip():
        head = detail
    words = []
    for word in head.split():
        if any(ch.isdigit() for ch in word):
            break
        words.append(word)
    return " ".join(words) or "no reason"


def validation_line(outcome: dict) -> str:
    return (f"selected {outcome['rows_selected']}, valid {outcome['rows_valid']}, "
            f"quarantined {outcome['rows_quarantined']}, held {'yes' if outcome['held'] else 'no'}")


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def status_text(by_status: dict[str, Counter]) -> str:
    """`sent 65, suppressed 30 (no consent 22, frequency cap 8), expired 58 (late 58)`."""
    parts = []
    for status in sorted(by_status, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s)):
        n = sum(by_status[status].values())
        detail = "" if status in ("sent", "dry_run", "planned") else f" ({_counts_text(by_status[status])})"
        parts.append(f"{status} {n}{detail}")
    return ", ".join(parts)


def _by_status(rows) -> dict[str, Counter]:
    by_status: dict[str, Counter] = defaultdict(Counter)
    for status, reason in rows:
        by_status[status][reason_code(reason)] += 1
    return by_status


def batch_line(engine: Engine, batch: dict, counts: dict[str, int]) -> str:
    """`batch 3/7 (email): 153 messages: sent 65, suppressed 30 (no consent 22, frequency cap 8),
    expired 58 (late 58)`, read back from the batch's messages, so it says what was recorded."""
    binds = {"journey": batch["journey"], "run_id": batch["run_id"], "channel": batch["channel"]}
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, reason FROM lifecycle.messages WHERE journey = :journey "
                                    "AND run_id = :run_id AND channel = :channel AND batch_no = :batch"),
                            {**binds, "batch": batch["batch"]}).all()
        total = conn.execute(sa.text("SELECT count(DISTINCT batch_no) FROM lifecycle.messages WHERE "
                                     "journey = :journey AND run_id = :run_id AND channel = :channel"),
                             binds).scalar_one()
    by_status = _by_status(rows)
    for status, why in (("waiting", "for a later run"), ("taken", "another run has it")):
        if counts.get(status):  # released from the batch, so no longer in it
            by_status[status][why] += counts[status]
    messages = sum(sum(c.values()) for c in by_status.values())
    return (f"batch {batch['batch'] + 1}/{max(total, batch['batch'] + 1)} ({batch['channel']}): "
            f"{messages} messages: {status_text(by_status) or 'nothing to send'}")


def batches_text(planned: dict[str, list[dict]]) -> str:
    """`153 messages to send: email 150 in 7 batches, sms 3 in 1 batch`."""
    per_channel = {ch: (len(bs), sum(b["size"] for b in bs)) for ch, bs in planned.items()}
    total = sum(n for _, n in per_channel.values())
    detail = ", ".join(f"{ch} {n} in {k} batch{'es' if k != 1 else ''}" for ch, (k, n) in per_channel.items() if n)
    return f"{total} messages to send" + (f": {detail}" if detail else "")


def plan_line(engine: Engine, journey: str, run_id: str, planned: dict[str, list[dict]]) -> str:
    """`planned 153 messages to send: email 153 in 7 batches; settled now: expired 32 (late 32)`:
    what the send tasks get, and what this run's planning recorded without sending (late, skipped)."""
    with engine.connect() as conn:
        settled = conn.execute(sa.text("SELECT status, reason FROM lifecycle.messages WHERE journey = :j "
                                       "AND planned_run_id = :r AND status <> 'planned'"),
                               {"j": journey, "r": run_id}).all()
    return (f"planned {batches_text(planned)}"
            + (f"; settled at planning: {status_text(_by_status(settled))}" if settled else ""))


def mapping_line(what: str, counts: dict) -> str:
    return f"{what}: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing")
