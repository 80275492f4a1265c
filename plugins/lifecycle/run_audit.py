"""A run's audit row in lifecycle.runs: started, counted, finished; and the rule that a
journey's intervals run in order (an earlier unfinished run holds the later ones back)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.run_context import RunContext


def start_run(engine: Engine, run: RunContext) -> None:
    """Record the run (a retried or cleared run restarts its own row)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO lifecycle.runs (journey, run_id, mode, interval_start, interval_end, status)
                VALUES (:journey, :run_id, :mode, :interval_start, :interval_end, 'running')
                ON CONFLICT (journey, run_id) DO UPDATE
                   SET status = 'running', mode = EXCLUDED.mode, error = NULL, started_at = now(),
                       finished_at = NULL
                """
            ),
            {**run.binds(), "run_id": run.run_id},
        )


class EarlierRunUnfinished(RuntimeError):
    """An earlier interval of the journey (same mode) is still running: this one must wait."""


def earlier_unfinished_run(engine: Engine, run: RunContext):
    """The earliest run of an earlier interval of this journey and mode that started and has not
    finished (a backfill of past days while the scheduler runs today), or None."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                """
                SELECT run_id, interval_start, interval_end, started_at FROM lifecycle.runs
                 WHERE journey = :journey AND mode = :mode AND status = 'running'
                   AND interval_start < :interval_start AND run_id <> :run_id
                 ORDER BY interval_start, run_id
                 LIMIT 1
                """
            ),
            {"journey": run.journey, "mode": run.mode, "interval_start": run.interval_start, "run_id": run.run_id},
        ).first()


def refuse_if_an_earlier_run_is_unfinished(engine: Engine, run: RunContext) -> None:
    """A journey's intervals build on each other (an interval plans the steps of people earlier
    intervals enrolled): planning one while an earlier one is still running sends late or expires."""
    earlier = earlier_unfinished_run(engine, run)
    if earlier is None:
        return
    raise EarlierRunUnfinished(
        f"{run.journey}: not running the interval {run.interval_start.isoformat()} .. {run.interval_end.isoformat()} "
        f"({run.mode}, run {run.run_id}) while the earlier run {earlier.run_id} (interval "
        f"{earlier.interval_start.isoformat()} .. {earlier.interval_end.isoformat()}, {run.mode}, started "
        f"{earlier.started_at:%Y-%m-%d %H:%M:%S %Z}) is unfinished. This task retries; it goes on once that run "
        "has finished. If that run is dead (its Airflow run is gone or was marked failed without finishing), "
        "clear it in Airflow so it finishes, or record it failed: UPDATE lifecycle.runs SET status = 'failed', "
        f"finished_at = now() WHERE journey = '{run.journey}' AND run_id = '{earlier.run_id}'"
    )


def update_run(engine: Engine, run: RunContext, **fields) -> None:
    allowed = {"status", "rows_selected", "rows_valid", "rows_quarantined", "rows_new", "validation", "counts",
               "error"}
    assert set(fields) <= allowed, set(fields) - allowed
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    values = {k: json.dumps(v, default=str) if k in ("validation", "counts") else v for k, v in fields.items()}
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE lifecycle.runs SET {sets} WHERE journey = :j AND run_id = :r"),
            {**values, "j": run.journey, "r": run.run_id},
        )


def message_counts(engine: Engine, run: RunContext) -> dict[str, int]:
    """Messages this run ended up owning, per status (what the summary reports)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                SELECT status, count(*) FROM lifecycle.messages
                WHERE journey = :j AND (run_id = :r OR (planned_run_id = :r AND run_id IS NULL))
                GROUP BY status
                """
            ),
            {"j": run.journey, "r": run.run_id},
        ).all()
    return {status: n for status, n in rows}


def finish_run(engine: Engine, run: RunContext, status: str, counts: dict, error: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                UPDATE lifecycle.runs
                   SET status = CASE WHEN status = 'held' THEN 'held' ELSE :status END,
                       counts = :counts, error = coalesce(:error, error), finished_at = now()
                 WHERE journey = :j AND run_id = :r
                """
            ),
            {"status": status, "counts": json.dumps(counts), "error": error, "j": run.journey, "r": run.run_id},
        )
