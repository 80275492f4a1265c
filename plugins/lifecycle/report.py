"""What marketers read: per journey, who entered, what was sent, who converted or left.
The queries are include/sql/lifecycle/queries/journey_summary.sql and dry_run_messages.sql."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.sql import query

SUMMARY_SQL = query("journey_summary")
DRY_RUN_SQL = query("dry_run_messages")
COLUMNS = ["journey", "runs", "entered", "sent", "converted", "exited", "completed", "active",
           "suppressed", "expired", "quarantined", "failed", "revenue"]


def journey_summary(engine: Engine, mode: str = "live") -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(SUMMARY_SQL), {"mode": mode})]


def format_summary(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    table = [columns] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]

    def line(cells: list[str]) -> str:  # journey left-aligned, figures right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    header = line(columns)
    return "\n".join([header, "-" * len(header), *(line(r) for r in table[1:])])


def _cell(value) -> str:
    if isinstance(value, float) or hasattr(value, "quantize"):
        return f"{value:,.2f}"
    return str(value)


DRY_RUN_COLUMNS = ["journey", "step", "channel", "messages", "subjects", "bodies", "example_subject"]


def dry_run_messages(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(DRY_RUN_SQL))]
