"""What marketers read: per journey, who entered, what was sent, who converted or left.
The queries are include/sql/lifecycle/queries/journey_summary.sql and dry_run_messages.sql; both
take an optional journey and period (each count by its own clock, see the SQL's header)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.sql import query

FILTERED_SUMMARY_SQL = query("journey_summary")  # binds :mode, :journey, :since, :until (NULL: no filter)
# The same statement for every journey and all time, binding :mode only (what tests/test_determinism.py
# and the benchmarks run): the filters become NULL literals, which the planner folds away.
SUMMARY_SQL = re.sub(r":(journey|since|until)\b", "NULL", FILTERED_SUMMARY_SQL)
DRY_RUN_SQL = query("dry_run_messages")
COLUMNS = ["journey", "runs", "held", "entered", "sent", "dry_run", "converted", "exited", "completed", "active",
           "suppressed", "skipped", "expired", "quarantined", "failed", "revenue"]
FORMATS = ("table", "csv", "json")


class NoLifecycleSchema(RuntimeError):
    """The warehouse has no `lifecycle` schema (nothing ran or was migrated there yet)."""


def _filters(journey: str | None, since: datetime | None, until: datetime | None) -> dict:
    return {"journey": journey, "since": since, "until": until}


def _rows(engine: Engine, sql: str, params: dict) -> list[dict]:
    with engine.connect() as conn:
        if not conn.exec_driver_sql("SELECT to_regclass('lifecycle.runs') IS NOT NULL").scalar():
            raise NoLifecycleSchema(
                "the warehouse has no `lifecycle` schema yet: run `lifecycle migrate` (or `lifecycle init`) "
                "against it, then let a journey run")
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def journey_summary(engine: Engine, mode: str = "live", journey: str | None = None,
                    since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    return _rows(engine, FILTERED_SUMMARY_SQL, {"mode": mode, **_filters(journey, since, until)})


def format_summary(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    table = [columns] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]

    def line(cells: list[str]) -> str:  # journey left-aligned, figures right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    header = line(columns)
    return "\n".join([header, "-" * len(header), *(line(r) for r in table[1:])])


def format_rows(rows: list[dict], columns: list[str], fmt: str) -> str:
    """`table` (aligned text), `csv` (a header line, then one line per row) or `json` (a list of objects;
    money as a number)."""
    if fmt == "table":
        return format_summary(rows, columns)
    if fmt == "json":
        return json.dumps([{c: _plain(r[c]) for c in columns} for r in rows], indent=2)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_plain(r[c]) for c in columns] for r in rows)
    return out.getvalue().rstrip("\n")


def _plain(value):
    return float(value) if isinstance(value, Decimal) else value


def _cell(value) -> str:
    if isinstance(value, float) or hasattr(value, "quantize"):
        return f"{value:,.2f}"
    return str(value)


DRY_RUN_COLUMNS = ["journey", "step", "channel", "messages", "subjects", "bodies", "example_subject"]


def dry_run_messages(engine: Engine, journey: str | None = None, since: datetime | None = None,
                     until: datetime | None = None) -> list[dict]:
    return _rows(engine, DRY_RUN_SQL, _filters(journey, since, until))
