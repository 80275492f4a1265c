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
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.channels.catalog.email import EMAIL_REGEX
from lifecycle.run_audit import update_run
from lifecycle.run_context import RunContext
from lifecycle.spec import JourneySpec
from lifecycle.stage import STAGE_SCHEMA, coupon_product_columns, stage_table

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
    # log under Airflow 3), so this runs before the first `import great_expectations`.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its modules' loggers inherit it
    import great_expectations  # noqa: F401  (quietly, now)

    # ... except this one, which sets itself to INFO when imported ("Created temporary directory").
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


# The GX expectation types the gate uses (GX's snake_case names, as its results report them).
NOT_NULL = "expect_column_values_to_not_be_null"
UNIQUE = "expect_column_values_to_be_unique"
MATCHES = "expect_column_values_to_match_regex"
NOT_MATCHES = "expect_column_values_to_not_match_regex"


@dataclass(frozen=True)
class RowCheck:
    """A GX column expectation and the reason a row failing it is quarantined with. Plain data:
    Great Expectations (seconds to import) is imported only when a stage table has rows to check."""

    expectation: str  # NOT_NULL, UNIQUE, ...
    column: str
    reason: str
    regex: str | None = None

    def gx_expectation(self):
        import great_expectations as gx

        kwargs = {"column": self.column, **({"regex": self.regex} if self.regex is not None else {})}
        return getattr(gx.expectations, _class_name(self.expectation))(**kwargs)


def row_checks(spec: JourneySpec) -> list[RowCheck]:
    checks = [
        RowCheck(NOT_NULL, spec.customer_id, f"{spec.customer_id}: missing"),
        RowCheck(NOT_NULL, spec.entry_key, f"{spec.entry_key}: missing enrollment key"),
        RowCheck(UNIQUE, spec.entry_key, f"{spec.entry_key}: duplicate enrollment key"),
        RowCheck(NOT_NULL, spec.entered_at, f"{spec.entered_at}: missing"),
    ]
    checks += [  # a product-specific code needs its product
        RowCheck(NOT_NULL, column, f"{column}: missing (the coupon's product)")
        for column in sorted(coupon_product_columns(spec))
    ]
    if "email" in spec.channels:
        checks += [
            RowCheck(NOT_NULL, "email", "email: missing"),
            RowCheck(MATCHES, "email", "email: not a valid address", EMAIL_REGEX),
            RowCheck(NOT_MATCHES, "email", HEADER_BREAK_REASON, _header_breaks_regex()),
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


# How GX runs here, at the least cost per run (benchmarks/validate_cost.py measures it):
# - GX's own Validator (the one `Batch.validate` runs underneath) on an execution engine built per
#   run over the warehouse's SQLAlchemy engine. No data source is added to and deleted from a
#   context per run (each change serialised the context's whole config to YAML), no second
#   connection pool, no engine built from a connection string. A fresh execution engine also
#   has a fresh metric cache and inspector: a retried run staging into the same table name is
#   judged on its new rows and columns.
# - One pass, counts and queries: result format BASIC with `return_unexpected_index_query`
#   counts each check's bad rows (for the summary) and gives, for each failed check, the query
#   that selects them (for the quarantine). Only the query text is built; GX runs no query for it.
# - The expectations' configurations are built once per journey's checks, per process.
# - An empty stage table is not sent to GX, nor is GX imported for it (see _vacuous_summary).
_gx_lock = threading.Lock()
_gx: dict = {}  # (journey, its RowChecks) -> their ExpectationConfigurations


def _forget_gx_after_fork() -> None:
    # A forked child (a task process) must not share the parent's cache or a lock held there.
    global _gx_lock
    _gx_lock = threading.Lock()
    _gx.clear()


os.register_at_fork(after_in_child=_forget_gx_after_fork)

_RESULT_FORMAT = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,  # the rows come from the index query, not from sample values
    "unexpected_index_column_names": ["_row"],
    "return_unexpected_index_query": True,
}


def _distinct(checks: list[RowCheck]) -> list[RowCheck]:
    """Each expectation once: a column that is both the customer id and the enrollment key is
    checked for NULLs once, and a row failing it gets both reasons (see _by_check)."""
    distinct: dict = {}
    for check in checks:
        distinct.setdefault((check.expectation, check.column), check)
    return list(distinct.values())


def _configurations(spec: JourneySpec, checks: list[RowCheck]) -> list:
    """The checks' expectation configurations, built once per journey and set of checks (call
    under _gx_lock). GX copies them before it validates, so runs can share them."""
    key = (spec.journey, tuple(checks))
    if key not in _gx:
        _gx[key] = [check.gx_expectation().configuration for check in _distinct(checks)]
    return _gx[key]


def _validator(engine: Engine, table: str):
    """GX's Validator for the whole stage table, on a fresh execution engine over `engine`."""
    from great_expectations.core.batch import Batch, LegacyBatchDefinition
    from great_expectations.core.batch_spec import SqlAlchemyDatasourceBatchSpec
    from great_expectations.core.id_dict import IDDict
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine
    from great_expectations.validator.validator import Validator

    execution_engine = SqlAlchemyExecutionEngine(engine=engine, create_temp_table=False)
    # As a TableAsset names its table: an unquoted name (GX warns about a plain str).
    batch_spec = SqlAlchemyDatasourceBatchSpec(
        table_name=sa.quoted_name(table, quote=False), schema_name=STAGE_SCHEMA,
        data_asset_name=table, batch_identifiers={},
    )
    data, markers = execution_engine.get_batch_data_and_markers(batch_spec=batch_spec)
    definition = LegacyBatchDefinition(datasource_name="warehouse", data_connector_name="lifecycle",
                                       data_asset_name=table, batch_identifiers=IDDict())
    validator = Validator(execution_engine=execution_engine,
                          batches=[Batch(data=data, batch_definition=definition, batch_spec=batch_spec,
                                         batch_markers=markers)])
    validator.metrics_calculator.show_progress_bars = False  # no context to say so; they go to stderr
    return validator


def _gx_results(engine: Engine, spec: JourneySpec, run: RunContext, checks: list[RowCheck]):
    """GX's results for the run's stage table, by SQL pushdown (in GX's order), and for each
    failed check (by reason) the query that selects its bad rows."""
    _quiet_gx()
    with _gx_lock:
        validator = _validator(engine, stage_table(run).split(".", 1)[1])
        try:
            configurations = validator.process_expectations_for_validation(_configurations(spec, checks))
            results = validator.graph_validate(configurations,
                                               runtime_configuration={"result_format": _RESULT_FORMAT})
        finally:
            _detach(validator.execution_engine)
    failed = {check.reason: _unexpected_rows_query(r)
              for check, r in zip(checks, _by_check(checks, results), strict=True) if not r.success}
    return results, failed


def _detach(execution_engine) -> None:
    """Take the warehouse's engine back from GX's execution engine. When garbage collected, GX's
    SqlAlchemyExecutionEngine disposes the engine it was given (__del__ -> close -> dispose): that
    would drop the warehouse's pool at a random moment of a later run, and the connections checked
    out then would stay open in the orphaned pool (a leak of about one connection per two runs,
    caught by test_validation_does_not_leave_connections_open). With nothing attached, its close()
    fails inside __del__, which GX silences."""
    execution_engine._engine_backup = None
    execution_engine.engine = None


def _unexpected_rows_query(result) -> str:
    if "unexpected_index_query" not in result.result:  # GX could not evaluate it: say why
        info = result.exception_info or {}
        message = info.get("exception_message") if isinstance(info, dict) else info
        raise RuntimeError(f"Great Expectations could not evaluate {result.expectation_config.type} on column "
                           f"{result.expectation_config.kwargs.get('column')!r}: {message}")
    return result.result["unexpected_index_query"]


def _by_check(checks: list[RowCheck], results) -> list:
    """The expectation results in the order of `checks` (GX groups them by column)."""
    by_key = {(r.expectation_config.type, r.expectation_config.kwargs.get("column")): r for r in results}
    return [by_key[(check.expectation, check.column)] for check in checks]


def _summary(results) -> list[dict]:
    summary = []
    for r in results:
        entry = {"expectation": r.expectation_config.type, "column": r.expectation_config.kwargs.get("column"),
                 "success": bool(r.success)}
        if "unexpected_count" in r.result:
            entry["unexpected_count"] = r.result["unexpected_count"]
        summary.append(entry)
    return summary


def _vacuous_summary(checks: list[RowCheck]) -> list[dict]:
    """The summary of an empty stage table, without asking GX: every expectation holds vacuously
    (GX says success for each, with no unexpected rows), listed as GX lists them (grouped by
    column, in order of first mention). Runs that select nobody are common (hourly journeys at
    night); GX's fixed cost per run, and importing it in a fresh task process, would be most of theirs."""
    distinct = _distinct(checks)
    columns = list(dict.fromkeys(check.column for check in distinct))
    ordered = sorted(distinct, key=lambda check: columns.index(check.column))
    return [{"expectation": c.expectation, "column": c.column, "success": True, "unexpected_count": 0}
            for c in ordered]


def validate_stage(
    engine: Engine, spec: JourneySpec, run: RunContext, *, approve_volume: bool = False
) -> ValidationOutcome:
    checks = row_checks(spec)
    limit = volume_limit(engine, spec, run)
    with engine.connect() as conn:
        total = conn.execute(sa.text(f"SELECT count(*) FROM {stage_table(run)}")).scalar_one()
    if total:
        results, failed = _gx_results(engine, spec, run, checks)
        summary = _summary(results)
    else:
        summary, failed = _vacuous_summary(checks), {}
    quarantined = _quarantine(engine, spec, run, list(failed.items()))
    new = count_new_rows(engine, spec, run)
    over = limit is not None and new > limit
    valid = all(entry["success"] for entry in summary)
    summary.append({"expectation": "volume_guard_new_rows", "column": None, "success": not over,
                    "observed": new, "rows_selected": total, "max": limit})
    held = over and not approve_volume
    outcome = ValidationOutcome(total, total - quarantined, quarantined, new, limit, held, summary)
    update_run(
        engine, run,
        rows_selected=total, rows_valid=outcome.rows_valid, rows_quarantined=quarantined, rows_new=new,
        validation={"success": valid and not over, "volume_limit": limit, "approved": approve_volume,
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
