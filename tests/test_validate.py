"""The Great Expectations gate: bad rows are quarantined with every reason and the rest go on;
a segment that suddenly would enroll far more new rows than usual is held and nothing is enrolled
(rows a lookback segment selects again, already enrolled, never count)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from lifecycle import schema
from lifecycle.config import SQL_DIR
from lifecycle.replay import run_interval
from lifecycle.spec import load_spec
from lifecycle.tasklog import validation_line
from lifecycle.validate import VolumeHeld

HEADER = """/* ---
journey: {name}
schedule: daily
entry_key: row_key
entered_at: entered_at
volume_guard: {{factor: 5, min_rows: 50, history: 5}}
steps:
  - {{name: only, after: 0h, channel: email, template: cart_abandonment/reminder_1}}
--- */
"""
END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture()
def warehouse(scratch_engine):
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine)
    return scratch_engine


def segment(tmp_path, name, sql):
    path = tmp_path / f"{name}.sql"
    path.write_text(HEADER.format(name=name) + sql)
    return load_spec(path)


def no_channel(name):
    raise AssertionError("nothing should be delivered in these tests")


def test_bad_rows_are_quarantined_with_reasons_and_the_rest_enrolled(warehouse, tmp_path):
    spec = segment(tmp_path, "quarantine_probe", """
        SELECT * FROM (VALUES
            (1,    'a',  TIMESTAMPTZ '2026-11-19', 'ok1@example.com'),
            (NULL, 'b',  TIMESTAMPTZ '2026-11-19', 'ok2@example.com'),
            (3,    'c',  TIMESTAMPTZ '2026-11-19', 'not-an-email'),
            (4,    'd',  TIMESTAMPTZ '2026-11-19', NULL),
            (5,    'e',  TIMESTAMPTZ '2026-11-19', 'ok5@example.com'),
            (6,    'e',  TIMESTAMPTZ '2026-11-19', 'ok6@example.com'),
            (7,    NULL, TIMESTAMPTZ '2026-11-19', 'ok7@example.com'),
            (8,    'h',  NULL,                     'bad mail')
        ) AS v(customer_id, row_key, entered_at, email)
    """)
    result = run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel)

    assert (result["selected"], result["valid"], result["quarantined"]) == (8, 1, 7)
    with warehouse.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT row_data ->> 'customer_id', reasons FROM lifecycle.quarantine ORDER BY 1")).all()
        enrolled = conn.execute(sa.text("SELECT enrollment_key FROM lifecycle.enrollments")).scalars().all()
        run = conn.execute(sa.text("SELECT rows_selected, rows_valid, rows_quarantined, validation "
                                   "FROM lifecycle.runs")).one()
    assert dict(rows) == {
        None: ["customer_id: missing"],
        "3": ["email: not a valid address"],
        "4": ["email: missing"],
        "5": ["row_key: duplicate enrollment key"],
        "6": ["row_key: duplicate enrollment key"],
        "7": ["row_key: missing enrollment key"],
        "8": ["email: not a valid address", "entered_at: missing"],
    }
    assert enrolled == ["a"]
    assert run[:3] == (8, 1, 7) and run[3]["success"] is False
    # the summary in lifecycle.runs.validation: GX's verdicts in GX's order (by column), with counts
    assert run[3]["expectations"] == [
        {"expectation": "expect_column_values_to_not_be_null", "column": "customer_id", "success": False,
         "unexpected_count": 1},
        {"expectation": "expect_column_values_to_not_be_null", "column": "row_key", "success": False,
         "unexpected_count": 1},
        {"expectation": "expect_column_values_to_be_unique", "column": "row_key", "success": False,
         "unexpected_count": 2},
        {"expectation": "expect_column_values_to_not_be_null", "column": "entered_at", "success": False,
         "unexpected_count": 1},
        {"expectation": "expect_column_values_to_not_be_null", "column": "email", "success": False,
         "unexpected_count": 1},
        {"expectation": "expect_column_values_to_match_regex", "column": "email", "success": False,
         "unexpected_count": 2},
        {"expectation": "expect_column_values_to_not_match_regex", "column": "email", "success": True,
         "unexpected_count": 0},
        {"expectation": "volume_guard_new_rows", "column": None, "success": True, "observed": 1,
         "rows_selected": 8, "max": None},
    ]


def test_a_column_that_is_customer_id_and_enrollment_key_is_checked_once_and_gives_both_reasons(warehouse, tmp_path):
    path = tmp_path / "same_key_probe.sql"
    path.write_text(HEADER.replace("entry_key: row_key", "entry_key: customer_id").format(name="same_key_probe") + """
        SELECT * FROM (VALUES (1, TIMESTAMPTZ '2026-11-19', 'ok1@example.com'),
                              (NULL, TIMESTAMPTZ '2026-11-19', 'ok2@example.com')) AS v(customer_id, entered_at, email)
    """)
    spec = load_spec(path)
    result = run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel)

    assert (result["selected"], result["quarantined"]) == (2, 1)
    with warehouse.connect() as conn:
        reasons = conn.execute(sa.text("SELECT reasons FROM lifecycle.quarantine")).scalar_one()
        summary = conn.execute(sa.text("SELECT validation -> 'expectations' FROM lifecycle.runs")).scalar_one()
    assert reasons == ["customer_id: missing", "customer_id: missing enrollment key"]
    assert [(e["expectation"], e["column"]) for e in summary if e["column"] == "customer_id"] == [
        ("expect_column_values_to_not_be_null", "customer_id"), ("expect_column_values_to_be_unique", "customer_id")]


def test_a_sudden_spike_is_held_and_can_be_approved(warehouse, tmp_path):
    with warehouse.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE public.spike_size (n int); INSERT INTO public.spike_size VALUES (10)")
    spec = segment(tmp_path, "volume_probe", """
        SELECT g AS customer_id, 'k' || g AS row_key, :as_of AS entered_at, 'c' || g || '@example.com' AS email
        FROM generate_series(1, (SELECT n FROM public.spike_size)) AS g
    """)
    day = timedelta(days=1)
    for i in range(3):  # three ordinary days of history
        end = END + i * day
        assert run_interval(warehouse, spec, end - day, end, no_channel)["selected"] == 10
    with warehouse.begin() as conn:
        conn.exec_driver_sql("UPDATE public.spike_size SET n = 5000")

    end = END + 3 * day
    with pytest.raises(VolumeHeld, match=r"volume_probe.sql: the segment selected 5000 rows, 4990 of them new "
                                         r"\(not enrolled yet\), above this journey's limit of 50 new rows .* "
                                         r"approve_volume=true") as held:
        run_interval(warehouse, spec, end - day, end, no_channel, run_id="spike")
    # what the validate task's summary line says of a held run
    assert validation_line(held.value.outcome) == "selected 5000, valid 5000, quarantined 0, held yes"
    with warehouse.connect() as conn:
        status, error = conn.execute(sa.text(
            "SELECT status, error FROM lifecycle.runs WHERE run_id = 'spike'")).one()
        enrolled = conn.execute(sa.text("SELECT count(*) FROM lifecycle.enrollments")).scalar()
    assert status == "held" and "Nothing was enrolled or sent" in error
    assert enrolled == 10  # only the ordinary days' rows

    approved = run_interval(warehouse, spec, end - day, end, no_channel, run_id="spike-approved",
                            approve_volume=True)
    assert approved["enrolled"]["entered"] == 4990


def test_a_lookback_segment_is_guarded_on_new_rows_not_on_rows_selected_again(warehouse, tmp_path):
    """A segment with a 2-day lookback selects yesterday's (enrolled) rows again each run. After one
    real burst, approved, the next runs select the burst again plus a few new rows: not held.
    A second burst among the re-selected rows is held, and the message says how many are new."""
    with warehouse.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE public.signups (k int PRIMARY KEY, signed_up timestamptz NOT NULL)")
    spec = segment(tmp_path, "lookback_probe", """
        SELECT k AS customer_id, 'k' || k AS row_key, signed_up AS entered_at, 'c' || k || '@example.com' AS email
        FROM public.signups
        WHERE signed_up >= :as_of - INTERVAL '2 days' AND signed_up < :as_of
    """)
    day = timedelta(days=1)
    next_key = iter(range(1, 1_000_000))

    def sign_up(n: int, end: datetime) -> None:  # n new rows on the day ending at `end`
        with warehouse.begin() as conn:
            conn.execute(sa.text("INSERT INTO public.signups VALUES (:k, :at)"),
                         [{"k": next(next_key), "at": end - day / 2} for _ in range(n)])

    def run_day(i: int, mode: str = "live", **kwargs) -> dict:
        end = END + i * day
        run_id = f"day{i}" if mode == "live" else f"day{i}-{mode}"
        return run_interval(warehouse, spec, end - day, end, no_channel, run_id=run_id, mode=mode, **kwargs)

    for i in range(3):  # ordinary days: 10 new rows each, plus yesterday's again
        sign_up(10, END + i * day)
        assert run_day(i)["enrolled"]["entered"] == 10
    sign_up(2000, END + 3 * day)  # a real burst: held, then approved
    with pytest.raises(VolumeHeld, match=r"selected 2010 rows, 2000 of them new \(not enrolled yet\), above "
                                         r"this journey's limit of 50 new rows"):
        run_day(3)
    assert run_day(3, approve_volume=True)["enrolled"]["entered"] == 2000

    for i in (4, 5):  # the burst is selected again (day 4), but only 10 rows are new each day
        sign_up(10, END + i * day)
        result = run_day(i)
        assert (result["selected"], result["enrolled"]["entered"]) == (2010 if i == 4 else 20, 10)

    # A dry run (its own lane, no dry enrollments yet) previews day 4 again: what a live run would
    # enroll is new, so the burst enrolled live does not count either.
    assert run_day(4, mode="dry")["enrolled"]["entered"] == 2010

    sign_up(300, END + 6 * day)  # a burst of new rows among re-selected ones is still held
    with pytest.raises(VolumeHeld, match=r"selected 310 rows, 300 of them new \(not enrolled yet\)"):
        run_day(6)
    with warehouse.connect() as conn:
        runs = dict(conn.execute(sa.text("SELECT run_id || ':' || mode, rows_new FROM lifecycle.runs "
                                         "WHERE journey = 'lookback_probe'")).all())
        enrolled = conn.execute(sa.text("SELECT count(*) FROM lifecycle.enrollments WHERE mode = 'live'")).scalar()
    assert runs == {"day0:live": 10, "day1:live": 10, "day2:live": 10, "day3:live": 2000, "day4:live": 10,
                    "day5:live": 10, "day4-dry:dry": 0, "day6:live": 300}
    assert enrolled == 30 + 2000 + 20  # nothing of the held day 6


def test_validation_does_not_leave_connections_open(warehouse, tmp_path):
    spec = segment(tmp_path, "connection_probe", """
        SELECT g AS customer_id, 'k' || g AS row_key, :as_of AS entered_at, 'c' || g || '@example.com' AS email
        FROM generate_series(1, 5) AS g
    """)

    def open_connections() -> int:
        with warehouse.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")).scalar()

    run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel)  # warm the engine's own pool
    before = open_connections()
    for i in range(1, 6):
        run_interval(warehouse, spec, END + (i - 1) * timedelta(days=1), END + i * timedelta(days=1), no_channel)
    assert open_connections() <= before  # a long-lived worker must not run out of connections


def test_gx_validates_over_the_warehouse_engine_with_no_pool_or_data_source_per_run(warehouse, tmp_path, monkeypatch):
    """Each run's GX execution engine runs its queries on the warehouse's own engine (its pool):
    no engine from a connection string, no data source added to and deleted from a context, and
    the expectations' configurations are built once. Spy (not a mock): the real class runs."""
    from great_expectations.execution_engine import SqlAlchemyExecutionEngine

    from lifecycle import validate

    given = []
    real_init = SqlAlchemyExecutionEngine.__init__

    def spy(self, *args, **kwargs):
        given.append(kwargs.get("engine"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(SqlAlchemyExecutionEngine, "__init__", spy)
    monkeypatch.setattr(validate, "_gx", {})  # as in a fresh process
    spec = segment(tmp_path, "engine_probe", """
        SELECT g AS customer_id, 'k' || g AS row_key, :as_of AS entered_at, 'c' || g || '@example.com' AS email
        FROM generate_series(1, 3) AS g
    """)
    for i in range(1, 4):
        run_interval(warehouse, spec, END + (i - 1) * timedelta(days=1), END + i * timedelta(days=1), no_channel)
    assert given == [warehouse] * 3  # one execution engine per run, each on the warehouse engine
    assert len(validate._gx) == 1  # the journey's configurations, built on the first run


def test_an_empty_stage_table_passes_every_expectation_without_asking_gx(warehouse, tmp_path, monkeypatch):
    """A run that selects nobody records the summary GX gives an empty table (asked directly
    below: every expectation holds, no unexpected rows) without running GX's metric queries."""
    from great_expectations.validator.validator import Validator

    from lifecycle import stage, validate
    from lifecycle.run_context import RunContext

    spec = segment(tmp_path, "empty_probe", """
        SELECT 1 AS customer_id, 'k' AS row_key, :as_of AS entered_at, 'a@example.com' AS email WHERE false
    """)
    validations = []
    real_graph_validate = Validator.graph_validate
    monkeypatch.setattr(Validator, "graph_validate",
                        lambda self, *a, **k: validations.append(1) or real_graph_validate(self, *a, **k))
    result = run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel)

    assert (result["selected"], result["quarantined"], validations) == (0, 0, [])
    with warehouse.connect() as conn:
        validation = conn.execute(sa.text("SELECT validation FROM lifecycle.runs")).scalar_one()
    assert validation["success"] is True
    recorded, guard = validation["expectations"][:-1], validation["expectations"][-1]
    assert guard == {"expectation": "volume_guard_new_rows", "column": None, "success": True, "observed": 0,
                     "rows_selected": 0, "max": None}

    run = RunContext(spec.journey, "gx-itself", "dry", END - timedelta(days=1), END)
    assert stage.stage_segment(warehouse, spec, run) == 0
    try:
        gx_results, failed = validate._gx_results(warehouse, spec, run, validate.row_checks(spec))
    finally:
        stage.drop_stage(warehouse, run)
    assert failed == {}
    assert [(e["expectation"], e["column"], e["success"]) for e in recorded] == [
        (r.expectation_config.type, r.expectation_config.kwargs["column"], r.success) for r in gx_results]
    assert all(e["success"] and e["unexpected_count"] == 0 for e in recorded)
    assert not any(r.result.get("unexpected_count") for r in gx_results)  # GX: null (a SUM of no rows) or 0


def test_a_validate_task_whose_stage_table_is_empty_does_not_import_great_expectations(warehouse, tmp_path):
    """Airflow runs each task in a process of its own: for a run that selects nobody, validate
    costs neither GX's queries nor its import (seconds)."""
    import lifecycle

    spec = segment(tmp_path, "fresh_process_probe", """
        SELECT 1 AS customer_id, 'k' AS row_key, :as_of AS entered_at, 'a@example.com' AS email WHERE false
    """)
    task = f"""
import sys
from datetime import UTC, datetime, timedelta
import sqlalchemy as sa
from lifecycle import run_audit, stage, validate
from lifecycle.run_context import RunContext
from lifecycle.spec import load_spec
spec, engine = load_spec({str(spec.path)!r}), sa.create_engine({warehouse.url.render_as_string(hide_password=False)!r})
run = RunContext(spec.journey, "fresh", "live", datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))
run_audit.start_run(engine, run)
stage.stage_segment(engine, spec, run)
print(validate.validate_stage(engine, spec, run).rows_selected, "great_expectations" in sys.modules)
"""
    plugins = str(Path(lifecycle.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", task], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]


def test_validating_the_same_stage_table_again_judges_its_new_rows(warehouse, tmp_path):
    """A retried run stages into the same table name: the reused GX context must not answer from
    what it measured for the earlier attempt."""
    with warehouse.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE public.picks (customer_id bigint, row_key text, email text)")
        conn.exec_driver_sql("INSERT INTO public.picks VALUES (1, 'a', 'a@example.com'), (2, 'b', 'b@example.com')")
    spec = segment(tmp_path, "retry_probe", """
        SELECT customer_id, row_key, :as_of AS entered_at, email FROM public.picks
    """)
    first = run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel, run_id="retried", mode="dry")
    with warehouse.begin() as conn:
        conn.exec_driver_sql("INSERT INTO public.picks VALUES (3, 'a', 'c@example.com'), (4, 'd', 'not-an-email')")
    again = run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel, run_id="retried", mode="dry")

    assert (first["selected"], first["quarantined"]) == (2, 0)
    assert (again["selected"], again["quarantined"]) == (4, 3)  # two duplicate keys 'a', one bad address


def test_migration_013_gives_earlier_runs_their_new_rows(scratch_engine, tmp_path):
    """Runs recorded before the guard counted new rows get the same measure from the enrollments
    they created, so the history the guard compares with is like for like from the start."""
    schema.create_shop_schema(scratch_engine)
    before = tmp_path / "before_013"
    before.mkdir()
    for path in (SQL_DIR / "lifecycle").glob("*.sql"):  # the migrations and views, not queries/
        if not path.name.startswith("013_"):
            shutil.copy(path, before / path.name)
    schema.migrate(scratch_engine, before)
    runs = [("r1", "ok", 1000, 10), ("r2", "ok", 1000, 0), ("r3", "held", 5000, 0), ("r4", "running", None, 0)]
    with scratch_engine.begin() as conn:
        for i, (run_id, status, selected, enrolled) in enumerate(runs):
            conn.execute(sa.text(
                "INSERT INTO lifecycle.runs (journey, run_id, interval_start, interval_end, status, rows_selected) "
                "VALUES ('j', :r, :start, :end, :status, :selected)"),
                {"r": run_id, "start": END + i * timedelta(days=1), "end": END + (i + 1) * timedelta(days=1),
                 "status": status, "selected": selected})
            conn.execute(sa.text(
                "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
                "enrolled_run_id) SELECT 'j', :r || '-' || g, g, :end, :end, :r FROM generate_series(1, :n) g"),
                {"r": run_id, "end": END + (i + 1) * timedelta(days=1), "n": enrolled})
        # another journey's enrollments with the same run id do not count
        conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
            "enrolled_run_id) VALUES ('other', 'x', 1, :end, :end, 'r2')"), {"end": END})

    assert [m for m in schema.migrate(scratch_engine) if ":" not in m] == ["013_runs_rows_new"]  # the repeatables aside
    with scratch_engine.connect() as conn:
        rows_new = dict(conn.execute(sa.text("SELECT run_id, rows_new FROM lifecycle.runs")).all())
    assert rows_new == {"r1": 10, "r2": 0, "r3": 0, "r4": None}


def test_addresses_with_characters_email_headers_cannot_carry_are_quarantined(warehouse, tmp_path):
    """The characters email.policy refuses in a header (tests/channels/test_email.py finds them):
    each such row is quarantined naming the column and the character; the rest are enrolled."""
    breaks = ["\u2028", "\x0b", "\x1c", "\x85", "\u2029", "\x1e"]
    rows = ",\n".join(f"({i}, 'k{i}', TIMESTAMPTZ '2026-11-19', 'ann' || chr({ord(ch)}) || 'x@example.com')"
                      for i, ch in enumerate(breaks, start=1))
    spec = segment(tmp_path, "header_breaks", f"""
        SELECT * FROM (VALUES
            {rows},
            (99, 'ok', TIMESTAMPTZ '2026-11-19', 'ok@example.com')
        ) AS v(customer_id, row_key, entered_at, email)
    """)
    result = run_interval(warehouse, spec, END - timedelta(days=1), END, no_channel)

    assert (result["selected"], result["quarantined"]) == (len(breaks) + 1, len(breaks))
    with warehouse.connect() as conn:
        reasons = dict(conn.execute(sa.text(
            "SELECT (row_data ->> 'customer_id')::int, reasons FROM lifecycle.quarantine")).all())
        enrolled = conn.execute(sa.text("SELECT enrollment_key FROM lifecycle.enrollments")).scalars().all()
    for i, ch in enumerate(breaks, start=1):
        assert f"email: contains a line break email headers cannot carry (U+{ord(ch):04X})" in reasons[i], reasons[i]
    assert enrolled == ["ok"]
