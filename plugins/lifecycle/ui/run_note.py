"""What a journey run did, in one line and as numbers: the `summarize` task's DAG run note
("sent 65 · suppressed 30 · expired 89 · converted 3 · €412") and its Asset event's `extra`.

The task computes both from the warehouse; the note reaches the DAG run through the scheduler
(lifecycle.ui.run_note_listener): Airflow 3's task API has no call that writes a run's note."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.run_context import RunContext
from lifecycle.sql import query

CONVERSIONS_SQL = query("run_conversions")
NOTE_XCOM_KEY = "run_note"  # the XCom of `summarize` the listener copies into the DAG run's note
# statuses in the order a reader wants them; `sent` first, the rest when they happened
ORDER = ("sent", "dry_run", "suppressed", "skipped", "expired", "failed", "planned", "claimed")
WORDS = {"dry_run": "would send", "planned": "waiting", "claimed": "in flight"}


def run_figures(engine: Engine, run: RunContext, messages: dict[str, int]) -> dict:
    """The run's counts for its asset event: messages per status, conversions and revenue in its
    interval, the rows it selected and its status in lifecycle.runs (JSON values only)."""
    with engine.connect() as conn:
        conv = conn.execute(sa.text(CONVERSIONS_SQL), {**run.binds(), "journey": run.journey}).one()
        row = conn.execute(
            sa.text("SELECT status, rows_selected, rows_valid, rows_quarantined, rows_new FROM lifecycle.runs "
                    "WHERE journey = :j AND run_id = :r"), {"j": run.journey, "r": run.run_id}).first()
    figures = {
        "journey": run.journey, "run_id": run.run_id, "mode": str(run.mode),
        "interval_start": run.interval_start.isoformat(), "interval_end": run.interval_end.isoformat(),
        "status": row.status if row else None,
        "messages": {k: int(v) for k, v in sorted(messages.items())},
        **{status: int(messages.get(status, 0)) for status in ("sent", "suppressed", "skipped", "expired", "failed")},
        "converted": int(conv.converted), "converted_holdout": int(conv.converted_holdout),
        "revenue": float(Decimal(conv.revenue).quantize(Decimal("0.01"))),
    }
    if row is not None:
        figures |= {k: getattr(row, k) for k in ("rows_selected", "rows_valid", "rows_quarantined", "rows_new")}
    return figures


def euros(amount: float) -> str:
    """€412; cents only when there are some (€12.50)."""
    return f"€{amount:,.0f}" if float(amount).is_integer() else f"€{amount:,.2f}"


def note_text(figures: dict, failed_tasks: list[str] | None = None) -> str:
    """One line: the messages by status (sent always), conversions and revenue; a held or failed
    run says so first."""
    parts = []
    if figures.get("status") == "held":
        parts.append(f"HELD by the volume guard: {figures.get('rows_new')} new rows; nothing enrolled or sent")
    elif failed_tasks:
        parts.append(f"FAILED: {', '.join(failed_tasks)}")
    messages = figures.get("messages", {})
    dry = figures.get("mode") == "dry"
    shown = ["dry_run"] if dry else ["sent"]
    shown += [s for s in ORDER if s not in ("sent", "dry_run") and messages.get(s)]
    parts += [f"{WORDS.get(s, s)} {messages.get(s, 0)}" for s in shown]
    parts.append(f"converted {figures.get('converted', 0)}")
    if figures.get("revenue"):
        parts.append(euros(figures["revenue"]))
    return ("dry run: " if dry else "") + " · ".join(parts)
