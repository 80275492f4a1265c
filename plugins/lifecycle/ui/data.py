"""The Journeys page's read-only query layer: everything the page shows, for one period and mode.

Every read runs in one `SET TRANSACTION READ ONLY` transaction with a statement timeout, rolled back
at the end: the page can never change the warehouse, and a slow query cannot hold a web worker.
Each section (funnel, lift, A/B tests) runs under a savepoint, so one that fails shows its error and
the rest of the page still renders. Nothing here selects an address or a segment row: the page shows
counts, rates and reasons only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.sql import query

log = logging.getLogger(__name__)

RUNS_SQL = query("ui_runs")
HELD_SQL = query("ui_held_runs")
QUARANTINE_SQL = query("ui_quarantine")
STATEMENT_TIMEOUT_MS = 15_000
HELD_PER_JOURNEY = 5
DEFAULT_DAYS = 30
MODES = ("live", "dry")


class PeriodError(ValueError):
    """A period the page cannot show (the message says which parameter and why)."""


@dataclass(frozen=True)
class Period:
    """[since, until) in UTC, one mode, optionally one journey."""

    since: datetime
    until: datetime
    mode: str = "live"
    journey: str | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None, mode: str | None = None, journey: str | None = None,
              days: int | None = None, today: date | None = None) -> Period:
        """From the page's query parameters: dates (YYYY-MM-DD, `until` inclusive) or ISO times (an
        exclusive `until`); default the last `days` (30) days up to the end of today (UTC)."""
        today = today or datetime.now(UTC).date()
        end = moment("until", until, end_of_day=True) if until else _midnight(today + timedelta(days=1))
        if days is not None and days <= 0:
            raise PeriodError(f"days: must be a positive number of days, got {days}")
        start = moment("since", since) if since else end - timedelta(days=days or DEFAULT_DAYS)
        if start >= end:
            raise PeriodError(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
        mode = mode or "live"
        if mode not in MODES:
            raise PeriodError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(start, end, mode, journey or None)

    def binds(self) -> dict:
        return {"since": self.since, "until": self.until, "mode": self.mode}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def moment(name: str, text: str, end_of_day: bool = False) -> datetime:
    """A period's bound from text: a date (its midnight UTC; with `end_of_day`, the next one, so an
    `until` date counts whole) or an ISO time (UTC when it has no offset)."""
    try:
        if len(text) == 10:  # a date: the whole day (an `until` date is inclusive)
            return _midnight(date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0))
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PeriodError(f"{name}: {text!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@contextmanager
def read_only(engine: Engine, timeout_ms: int = STATEMENT_TIMEOUT_MS) -> Iterator[sa.Connection]:
    """A connection in a read-only transaction (PostgreSQL refuses any write in it), always rolled back."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        try:
            yield conn
        finally:
            conn.rollback()


def has_lifecycle_schema(conn: sa.Connection) -> bool:
    return bool(conn.exec_driver_sql("SELECT to_regclass('lifecycle.runs') IS NOT NULL").scalar())


@dataclass
class JourneyView:
    """What the page shows of one journey."""

    journey: str
    status: str  # draft / live from the segment file; "broken" or "no segment file"
    kind: str = ""
    schedule: str = ""
    description: str = ""
    holdout_percent: float = 0
    problems: list[str] = field(default_factory=list)  # a broken segment file's problems
    last_run: dict | None = None
    runs: dict[str, int] = field(default_factory=dict)  # in the period: runs, runs_ok, runs_held, ...
    funnel: list[dict] = field(default_factory=list)
    lift: dict | None = None
    ab_tests: list[dict] = field(default_factory=list)
    held_runs: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a section that could not be computed, and why

    @property
    def totals(self) -> dict[str, Any]:
        """The journey's period totals: the cohort (the row without a step) and the steps' sums."""
        cohort = next((r for r in self.funnel if r["step"] is None), None)
        steps = [r for r in self.funnel if r["step"] is not None]
        total = {k: sum(r[k] for r in steps) for k in ("sent", "opened", "clicked", "unsubscribed", "complained")}
        total["entered"] = cohort["entered"] if cohort else max((r["entered"] for r in steps), default=0)
        total["converted"] = sum(r["converted"] for r in self.funnel)
        total["revenue"] = sum(r["revenue"] for r in self.funnel)
        total["quarantined"] = sum(q["rows"] for q in self.quarantine)
        return total


def _section(conn: sa.Connection, view: JourneyView, what: str, compute):
    """Run one section under a savepoint; on failure record why and go on with the rest."""
    try:
        with conn.begin_nested():
            return compute()
    except Exception as exc:  # noqa: BLE001 - the page shows it; the other sections still render
        log.warning("journeys page: %s of %s failed", what, view.journey, exc_info=True)
        view.errors.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def journey_views(conn: sa.Connection, period: Period, specs: list, errors: list,
                  allowed: Callable[[set[str]], set[str]] | None = None) -> list[JourneyView]:
    """A view per journey: the segment files' (valid and broken) plus journeys the warehouse has runs of
    whose file is gone. `allowed` keeps the journeys the user may read (their DAGs); None: all."""
    from lifecycle.ui.dag_docs import human_schedule

    views: dict[str, JourneyView] = {}
    for spec in specs:
        views[spec.journey] = JourneyView(spec.journey, spec.status, spec.kind, human_schedule(spec),
                                          " ".join(spec.description.split()), spec.holdout_percent)
    for error in errors:
        name = error.path.stem
        views.setdefault(name, JourneyView(name, "broken", problems=list(error.problems)))
    binds = period.binds()
    for row in conn.execute(sa.text(RUNS_SQL), binds).mappings():
        view = views.setdefault(row["journey"], JourneyView(row["journey"], "no segment file"))
        view.runs = {k: int(row[k]) for k in ("runs", "runs_ok", "runs_held", "runs_failed", "runs_running")}
        view.last_run = {k: row[k] for k in ("run_id", "status", "interval_start", "interval_end", "rows_selected",
                                             "rows_valid", "rows_quarantined", "rows_new", "error", "started_at",
                                             "finished_at")}
        view.last_run["counts"] = dict(row["counts"] or {})
    wanted = {name for name in views if period.journey is None or name == period.journey}
    wanted = wanted if allowed is None else allowed(wanted)
    views = {name: v for name, v in views.items() if name in wanted}
    for row in conn.execute(sa.text(HELD_SQL), {**binds, "per_journey": HELD_PER_JOURNEY}).mappings():
        if row["journey"] in views:
            views[row["journey"]].held_runs.append(dict(row))
    for row in conn.execute(sa.text(QUARANTINE_SQL), binds).mappings():
        if row["journey"] in views:
            views[row["journey"]].quarantine.append({"reason": row["reason"], "rows": int(row["rows"])})
    _add_results(conn, period, views)
    return [views[name] for name in sorted(views)]


def _add_results(conn: sa.Connection, period: Period, views: dict[str, JourneyView]) -> None:
    """Funnels, holdout lift and A/B tests from lifecycle.analytics (README "Results")."""
    from lifecycle import analytics

    window = {"since": period.since, "until": period.until, "mode": period.mode}
    for view in views.values():
        if view.status == "broken":
            continue
        view.funnel = _section(conn, view, "funnel",
                               lambda v=view: analytics.funnel(conn, journey=v.journey, **window)) or []
        # a journey with a holdout now, or held-out customers in the period (the share may have changed)
        lift = _section(conn, view, "holdout lift", lambda v=view: analytics.lift(conn, journey=v.journey, **window))
        if lift is not None and (view.holdout_percent or lift.get("holdout_n")):
            view.lift = lift
        tested = sorted({r["step"] for r in view.funnel if r["step"] is not None and r["variant"] is not None})
        for step in tested:
            result = _section(conn, view, f"A/B test of {step}",
                              lambda v=view, s=step: analytics.ab_test(conn, journey=v.journey, step=s, **window))
            if result is not None:
                view.ab_tests.append({"step": step, **result})
