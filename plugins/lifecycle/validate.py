"""The Great Expectations gate in front of every send.

GX Core validates the staging table by SQL pushdown. Row-level failures become
`lifecycle.quarantine` rows (with every reason that row failed), built from the
`unexpected_index_query` GX itself returns, so GX stays the single judge. The
volume guard compares the run's NEW rows (valid rows whose enrollment key is not enrolled
yet) with the same measure in the journey's recent runs: a segment that suddenly would
enroll far more people than usual is held, and nothing is enrolled or sent. Rows a lookback
segment selects again (already enrolled) never count towards it.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import warnings
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.run_audit import update_run
from lifecycle.run_context import RunContext
from lifecycle.spec import JourneySpec
from lifecycle.stage import STAGE_SCHEMA, coupon_product_columns, stage_table

EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# An address holding a character email headers cannot carry (lifecycle.channels.email.HEADER_BREAKS):
# the row is quarantined here, its reason completed with the character (see _name_header_breaks).
HEADER_BREAK_REASON = "email: contains a line break email headers cannot carry"
MIN_HISTORY = 3  # runs of history before the volume guard has a baseline


class VolumeHeld(RuntimeError):
    """The segment would enroll far more new rows than usual; the run is held, nothing was sent."""

    def __init__(self, message: str, outcome: dict | None = None):
        super().__init__(message)
        self.outcome = outcome  # the validation counts, for the task's summary line


@dataclass
class ValidationOutcome:
    rows_selected: int
    rows_valid: int
    rows_quarantined: int
    rows_new: int  # valid rows whose enrollment key is not enrolled yet: what the volume guard counts
    volume_limit: int | None
    held: bool
    results: list[dict] = field(default_factory=list)

    def to_xcom(self) -> dict:
        return self.__dict__.copy()


def _quiet_gx() -> None:
    # GX logs every docs decorator at INFO while it is imported (214 lines in a validate task's
    # log under Airflow 3), so this runs before the first `import great_expectations`. It warns
    # that add_sql could be add_postgres (which rejects unix-socket URLs, so we can't use it).
    warnings.filterwarnings("ignore", message=".*generic SQLDatasource.*")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its modules' loggers inherit it
    import great_expectations  # noqa: F401  (quietly, now)

    # ... except this one, which sets itself to INFO when imported ("Created temporary directory").
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def row_expectations(spec: JourneySpec) -> list[tuple[object, str]]:
    """(expectation, reason recorded on a quarantined row)."""
    import great_expectations as gx

    E = gx.expectations
    checks = [
        (E.ExpectColumnValuesToNotBeNull(column=spec.customer_id), f"{spec.customer_id}: missing"),
        (E.ExpectColumnValuesToNotBeNull(column=spec.entry_key), f"{spec.entry_key}: missing enrollment key"),
        (E.ExpectColumnValuesToBeUnique(column=spec.entry_key), f"{spec.entry_key}: duplicate enrollment key"),
        (E.ExpectColumnValuesToNotBeNull(column=spec.entered_at), f"{spec.entered_at}: missing"),
    ]
    checks += [  # a product-specific code needs its product
        (E.ExpectColumnValuesToNotBeNull(column=column), f"{column}: missing (the coupon's product)")
        for column in sorted(coupon_product_columns(spec))
    ]
    if "email" in spec.channels:
        checks += [
            (E.ExpectColumnValuesToNotBeNull(column="email"), "email: missing"),
            (E.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL_REGEX), "email: not a valid address"),
            (E.ExpectColumnValuesToNotMatchRegex(column="email", regex=_header_breaks_regex()), HEADER_BREAK_REASON),
        ]
    return checks


def _header_breaks_regex() -> str:
    """A PostgreSQL bracket expression of those characters, spelt as ASCII escapes (\\u2028):
    GX cannot render a query whose literal holds the characters themselves."""
    from lifecycle.channels.email import HEADER_BREAKS

    return "[" + "".join(f"\\u{ord(ch):04x}" for ch in HEADER_BREAKS) + "]"


def _name_header_breaks(conn: sa.Connection, run: RunContext) -> None:
    """Say which character it is (U+2028, ...): the reason alone cannot, GX reports rows, not values."""
    conn.execute(
        sa.text(
            """
            UPDATE lifecycle.quarantine q
               SET reasons = array_replace(q.reasons, :generic, :generic || ' (U+'
                   || lpad(upper(to_hex(ascii((regexp_match(q.row_data ->> 'email', :regex))[1]))), 4, '0') || ')')
             WHERE q.journey = :j AND q.run_id = :r AND :generic = ANY(q.reasons)
            """
        ),
        {"generic": HEADER_BREAK_REASON, "regex": _header_breaks_regex(), "j": run.journey, "r": run.run_id},
    )


def volume_limit(engine: Engine, spec: JourneySpec, run: RunContext) -> int | None:
    """Most new rows this run may enroll, from the median of new rows in recent successful live
    runs (like with like: a lookback segment re-selects enrolled rows, which never count)."""
    with engine.connect() as conn:
        history = conn.execute(
            sa.text(
                """
                SELECT rows_new FROM lifecycle.runs
                WHERE journey = :j AND mode = 'live' AND status = 'ok' AND run_id <> :r
                  AND rows_new IS NOT NULL AND interval_end <= :as_of
                ORDER BY interval_end DESC, run_id DESC LIMIT :n
                """
            ),
            {"j": spec.journey, "r": run.run_id, "as_of": run.as_of, "n": spec.volume_guard.history},
        ).scalars().all()
    if len(history) < MIN_HISTORY:
        return None
    return int(max(spec.volume_guard.min_rows, spec.volume_guard.factor * max(statistics.median(history), 1)))


def count_new_rows(engine: Engine, spec: JourneySpec, run: RunContext) -> int:
    """Valid (not quarantined) staged rows whose enrollment key this journey has not enrolled yet:
    the rows that would be new enrollments. A dry run also counts live enrollments as enrolled, so
    that it measures what a live run would do (the history it is compared with is live)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"""
                SELECT count(*) FROM {stage_table(run)} AS s
                WHERE NOT EXISTS (SELECT 1 FROM lifecycle.quarantine q
                                  WHERE q.journey = :j AND q.run_id = :r AND q.row_number = s._row)
                  AND NOT EXISTS (SELECT 1 FROM lifecycle.enrollments e
                                  WHERE e.journey = :j AND e.mode IN (:m, 'live')
                                    AND e.enrollment_key = s.{spec.entry_key}::text)
                """
            ),
            {"j": run.journey, "r": run.run_id, "m": run.mode},
        ).scalar_one()


# One GX context per process and one expectation suite per journey's checks: building a context
# and collecting the garbage a per-run context leaves (its reference cycles hold connection pools)
# cost about a second per run in a large process, more than the validation itself. Each run still
# gets its own datasource (a fresh execution engine, whose metric cache never serves an earlier
# batch of the same stage table), disposed and deleted once the run is validated.
_gx_lock = threading.Lock()
_gx: dict = {}  # "context": the process's context; "suites": (journey, reasons) -> ExpectationSuite


def _forget_gx_after_fork() -> None:
    # A forked child (a task process) must not share the parent's context or a lock held there.
    global _gx_lock
    _gx_lock = threading.Lock()
    _gx.clear()


os.register_at_fork(after_in_child=_forget_gx_after_fork)


def _gx_context():
    """The process's ephemeral GX context (built on first use; call under _gx_lock)."""
    if "context" not in _gx:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        _gx.update(context=context, suites={})
    return _gx["context"]


def _suite(spec: JourneySpec, checks: list[tuple[object, str]]):
    """The expectation suite for these checks, built once per journey and set of checks."""
    import great_expectations as gx

    key = (spec.journey, tuple(reason for _, reason in checks))
    if key not in _gx["suites"]:
        suite = gx.ExpectationSuite(name=f"{spec.journey}_segment")
        for expectation, _ in checks:
            suite.add_expectation(expectation)
        _gx["suites"][key] = suite
    return _gx["suites"][key]


def _gx_results(engine: Engine, spec: JourneySpec, run: RunContext, checks: list[tuple[object, str]]):
    """GX's validation result for the run's stage table, by SQL pushdown."""
    table = stage_table(run).split(".", 1)[1]
    _quiet_gx()
    with _gx_lock:
        context = _gx_context()
        name = f"warehouse_{run.journey}_{run.short_id}"
        source = context.data_sources.add_sql(
            name=name, connection_string=engine.url.render_as_string(hide_password=False)
        )
        try:
            batch = (
                source.add_table_asset(name=table, table_name=table, schema_name=STAGE_SCHEMA)
                .add_batch_definition_whole_table("whole")
                .get_batch()
            )
            return batch.validate(
                _suite(spec, checks),
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": ["_row"],
                    "partial_unexpected_count": 0,
                    "return_unexpected_index_query": True,
                },
            )
        finally:
            # Close both of the datasource's connection pools now (a long-lived worker must not
            # run out of connections), then drop it from the context so that nothing accumulates.
            source.get_engine().dispose()
            source.get_execution_engine().engine.dispose()
            context.data_sources.delete(name)


def validate_stage(
    engine: Engine, spec: JourneySpec, run: RunContext, *, approve_volume: bool = False
) -> ValidationOutcome:
    _quiet_gx()
    checks = row_expectations(spec)
    limit = volume_limit(engine, spec, run)
    result = _gx_results(engine, spec, run, checks)
    failed_queries, summary = [], []
    for r in result.results:
        kind = r.expectation_config.type
        column = r.expectation_config.kwargs.get("column")
        entry = {"expectation": kind, "column": column, "success": bool(r.success)}
        if "unexpected_count" in r.result:
            entry["unexpected_count"] = r.result["unexpected_count"]
        if not r.success:
            reason = next(
                reason for e, reason in checks
                if type(e).__name__ == _class_name(kind) and e.column == column
            )
            failed_queries.append((reason, r.result["unexpected_index_query"]))
        summary.append(entry)
    quarantined = _quarantine(engine, spec, run, failed_queries)
    with engine.connect() as conn:
        total = conn.execute(sa.text(f"SELECT count(*) FROM {stage_table(run)}")).scalar_one()
    new = count_new_rows(engine, spec, run)
    over = limit is not None and new > limit
    summary.append({"expectation": "volume_guard_new_rows", "column": None, "success": not over,
                    "observed": new, "rows_selected": total, "max": limit})
    held = over and not approve_volume
    outcome = ValidationOutcome(total, total - quarantined, quarantined, new, limit, held, summary)
    update_run(
        engine, run,
        rows_selected=total, rows_valid=outcome.rows_valid, rows_quarantined=quarantined, rows_new=new,
        validation={"success": bool(result.success) and not over, "volume_limit": limit, "approved": approve_volume,
                    "expectations": summary},
        **({"status": "held", "error": _held_message(spec, total, new, limit)} if held else {}),
    )
    if held:
        raise VolumeHeld(_held_message(spec, total, new, limit), outcome.to_xcom())
    return outcome


def _class_name(expectation_type: str) -> str:
    return "".join(part.capitalize() for part in expectation_type.split("_"))


def _held_message(spec: JourneySpec, total: int, new: int, limit: int | None) -> str:
    return (
        f"{spec.path.name}: the segment selected {total} rows, {new} of them new (not enrolled yet), above "
        f"this journey's limit of {limit} new rows ({spec.volume_guard.factor}x the median of new rows in its "
        f"last {spec.volume_guard.history} runs, at least {spec.volume_guard.min_rows}). Nothing was enrolled "
        "or sent. If the volume is expected, re-run with the param approve_volume=true."
    )


def _quarantine(engine: Engine, spec: JourneySpec, run: RunContext, failed: list[tuple[str, str]]) -> int:
    """Copy every failing row, with all its reasons, into lifecycle.quarantine; return the count."""
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM lifecycle.quarantine WHERE journey = :j AND run_id = :r"),
            {"j": run.journey, "r": run.run_id},
        )
        if not failed:
            return 0
        # GX's queries contain no bind parameters; literal reasons are bound.
        unions = " UNION ALL ".join(
            f"SELECT q._row, CAST(:reason_{i} AS text) AS reason FROM ({query.rstrip().rstrip(';')}) AS q"
            for i, (_, query) in enumerate(failed)
        )
        result = conn.execute(
            sa.text(
                f"""
                INSERT INTO lifecycle.quarantine
                    (journey, run_id, mode, row_number, enrollment_key, customer_id, reasons, row_data)
                SELECT :j, :r, :m, s._row, s.{spec.entry_key}::text, s.{spec.customer_id}::text,
                       f.reasons, to_jsonb(s) - '_row'
                FROM (SELECT _row, array_agg(DISTINCT reason ORDER BY reason) AS reasons
                      FROM ({unions}) AS failures GROUP BY _row) AS f
                JOIN {stage_table(run)} AS s USING (_row)
                """
            ),
            {"j": run.journey, "r": run.run_id, "m": run.mode, **{f"reason_{i}": r for i, (r, _) in enumerate(failed)}},
        )
        _name_header_breaks(conn, run)
        return result.rowcount
