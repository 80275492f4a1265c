"""`lifecycle` command line, the engine's commands: lint segment files, migrate and init a
warehouse, preview, promote, report. The demo adds its own (`lifecycle_demo.cli`).

    lifecycle lint [FILES...] [--warehouse-url URL]   check segment files and their templates (no Airflow
                                                      needed); with a warehouse, run each SELECT (LIMIT 0)
    lifecycle report [--warehouse-url URL] [--mode live|dry] [--journey NAME] [--since DAY] [--until DAY]
                     [--format table|csv|json]        entered / sent / converted / exited per journey
    lifecycle promote JOURNEY                         make a draft journey live (status: live)
    lifecycle migrate [--warehouse-url URL] [--demo-shop]   apply the lifecycle migrations + contact views
    lifecycle init [--warehouse-url URL] [--demo-shop]      create the (embedded) warehouse DB, migrate, create the pools
    lifecycle stop                                    stop the embedded PostgreSQL
    lifecycle preview JOURNEY [--customer ID] [--as-of T] [--step NAME] [--out DIR]
                                                      render one customer's messages to files (writes nothing)
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifecycle.config import CONDITIONS_DIR, SEGMENTS_DIR, settings

DEMO_DB = "lifecycle_demo"  # the embedded warehouse's database
AIRFLOW_DB = "airflow_demo"  # Airflow's metadata on the same embedded server: parallel dag.test workers
PERIODS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}


# ---------------------------------------------------------------------------- lint
# The run's "now" is :as_of; the clock of the warehouse makes a backfill select today's rows.
WALL_CLOCK = re.compile(r"\b(now\s*\(|current_date\b|current_timestamp\b|clock_timestamp\s*\(|localtimestamp\b|"
                        r"statement_timestamp\s*\(|transaction_timestamp\s*\(|timeofday\s*\()", re.I)
TEXT_TYPES = {"text", "varchar", "bpchar", "citext", "name"}
# information_schema's type names (what stage_segment checks) -> pg_type's (what a cursor reports)
PG_TYPE_NAMES = {"bigint": "int8", "integer": "int4", "smallint": "int2", "text": "text", "character varying": "varchar",
                 "character": "bpchar", "uuid": "uuid", "timestamp with time zone": "timestamptz",
                 "timestamp without time zone": "timestamp", "date": "date"}


def _run_types(names) -> set[str]:
    """The types stage_segment accepts, as pg_type names: lint and the run agree."""
    return {PG_TYPE_NAMES.get(name, name) for name in names}


def lint(paths: list[str], warehouse_url: str | None) -> int:
    from lifecycle.spec import condition_tie_problems, discover

    files = [Path(p) for p in paths] or discover(SEGMENTS_DIR)
    if not files:
        print(f"no segment files in {SEGMENTS_DIR}")
        return 1
    warehouse = _Warehouse(warehouse_url) if warehouse_url else None
    failures = 0
    try:
        for path in files:
            spec, problems = _lint_file(path, warehouse)
            if problems:
                failures += 1
                print(f"FAIL {path}")
                for problem in problems:
                    print(f"     - {problem}")
            else:
                steps = ", ".join(f"{s.name}@{_fmt(s.after)}" for s in spec.steps)
                print(f"ok   {path.name}: {spec.schedule}, steps {steps}")
    finally:
        if warehouse is not None:
            warehouse.dispose()
    print(f"\n{len(files) - failures} ok, {failures} broken")
    if not paths:  # every condition file too, used or not (README "Ties")
        failures += _lint_conditions(condition_tie_problems)
    if warehouse is not None and not warehouse.has_lifecycle:
        print("\nthe warehouse has no `lifecycle` schema (the segments read its contacts and consent views): "
              "run `lifecycle migrate` against it first; the SELECTs were not run")
        failures += 1
    return 1 if failures else 0


def _lint_file(path: Path, warehouse) -> tuple:
    """(spec or None, every problem): the header, the templates, the clock, and the warehouse's view."""
    from lifecycle.spec import SpecError, load_spec

    try:
        spec = load_spec(path)
    except SpecError as exc:
        return None, exc.problems
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is this file's problem
        return None, [f"{type(exc).__name__}: {exc}"]
    problems = [f"SQL line {_file_line(spec, m.start())}: {_clock_name(m)} reads the wall clock: "
                "use :as_of (the run's interval end) so backfills replay the past exactly"
                for m in WALL_CLOCK.finditer(_mask_sql(spec.sql))]
    fields_by_template: dict[str, set[str]] = {}
    for where, channels, template in _messages(spec):
        for channel in channels:
            found, fields = _check_template(template, channel)
            problems += [f"{where} ({template}, {channel}): {p}" for p in found]
            fields_by_template.setdefault(template, set()).update(fields)
    for where, label, subject in _variant_subjects(spec):
        found, fields = _check_subject(subject)
        problems += [f"{where} (subject, email): {p}" for p in found]
        fields_by_template.setdefault(label, set()).update(fields)
    if warehouse is not None and warehouse.has_lifecycle:
        problems += _warehouse_problems(spec, warehouse, fields_by_template)
    return spec, problems


def _messages(spec):
    """(where, channels, template) of every template a message may be rendered from: each step's,
    each A/B variant's own (on the step's channels) and each exit message's."""
    for step in spec.steps:
        if step.template:
            yield f"steps ({step.name})", step.channels, step.template
        for variant in step.variants:
            if variant.template:
                yield f"steps ({step.name}) variant {variant.name}", step.channels, variant.template
    for i, rule in enumerate(spec.exits):
        if rule.template:
            yield f"exit[{i}].then", (rule.channel,), rule.template


def _variant_subjects(spec):
    """(where, how the row-field check names it, subject) of each A/B variant with a subject line
    of its own (it replaces the step template's .subject.txt)."""
    for step in spec.steps:
        for variant in step.variants:
            if variant.subject is not None:
                yield (f"steps ({step.name}) variant {variant.name}",
                       f"{step.template}, variant {variant.name}'s subject", variant.subject)


def _check_template(template: str, channel: str):
    from lifecycle.render import check_template

    return check_template(template, channel)


def _check_subject(subject: str) -> tuple[list[str], set[str]]:
    """Compile a variant's subject line as the sender will (load_spec only parses it: an unknown
    filter or test shows at compile time): (problems with the Jinja line, the `row` fields used)."""
    import jinja2

    from lifecycle import render

    env = render.get_environment(render.TEMPLATES_DIR)
    try:
        tree = env.parse(subject)
        env.compile(tree)
    except jinja2.TemplateSyntaxError as exc:
        return [f"line {exc.lineno}: {exc.message}"], set()
    return [], render._row_fields(tree)  # the same `row` field scan as check_template's


def _mask_sql(sql: str) -> str:
    """The SQL with comments and quoted text blanked out, character for character (offsets kept)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731
    return re.sub(r"/\*.*?\*/|--[^\n]*|'(?:[^']|'')*'", blank, sql, flags=re.S)


def _file_line(spec, offset: int) -> str:
    """`line L, column C` in the segment file for a character offset into spec.sql."""
    text = spec.path.read_text(encoding="utf-8")
    start = text.find(spec.sql)
    at = (start if start >= 0 else 0) + offset
    line = text.count("\n", 0, at) + 1
    return f"{line}, column {at - text.rfind(chr(10), 0, at)}"


class _Warehouse:
    """The warehouse lint runs the SELECTs on; whether it has the `lifecycle` schema, asked once."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.engine = sa.create_engine(url)
        with self.engine.connect() as conn:
            self.has_lifecycle = conn.exec_driver_sql(
                "SELECT to_regnamespace('lifecycle') IS NOT NULL").scalar()

    def dispose(self) -> None:
        self.engine.dispose()


def _literal_sql(spec, cursor) -> tuple[str, list[tuple[int, int, int]]]:
    """spec.sql with each bound parameter as the literal the driver would send (this hour's
    values), and the pieces (statement offset, sql offset, length) to map a position back."""
    from lifecycle.run_context import RunContext
    from lifecycle.spec import BIND

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    values = RunContext(spec.journey, "lint", "live", end - PERIODS[spec.schedule], end).binds(spec)
    masked, sql = _mask_sql(spec.sql), spec.sql
    out, pieces, pos = [], [], 0
    for match in BIND.finditer(masked):
        pieces.append((sum(map(len, out)), pos, match.start() - pos))
        out.append(sql[pos:match.start()])
        out.append(cursor.mogrify("%s", (values.get(match.group(1)),)).decode())
        pos = match.end()
    pieces.append((sum(map(len, out)), pos, len(sql) - pos))
    out.append(sql[pos:])
    return "".join(out), pieces


def _warehouse_problems(spec, warehouse: _Warehouse, fields_by_template: dict[str, set[str]]) -> list[str]:
    """Run the SELECT with LIMIT 0 (nothing is read) and check what it returns."""
    from lifecycle import stage
    from lifecycle.stage import channel_columns, coupon_product_columns, required_columns

    prefix = "SELECT * FROM (\n"
    raw = warehouse.engine.raw_connection()
    try:
        cursor = raw.cursor()
        body, pieces = _literal_sql(spec, cursor)
        try:
            cursor.execute(f"{prefix}{body}\n) q LIMIT 0")
        except Exception as exc:  # noqa: BLE001 - the warehouse's own words, with where in the file
            return [_warehouse_error(spec, exc, len(prefix), pieces)]
        columns = [(d.name, d.type_code) for d in cursor.description]
        cursor.execute("SELECT oid, typname FROM pg_type WHERE oid = ANY(%s)", ([t for _, t in columns],))
        types = dict(cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
    returned = {name: types.get(oid, str(oid)) for name, oid in columns}
    problems = []
    missing = sorted(required_columns(spec) - set(returned))
    if missing:
        problems.append(f"SQL: the SELECT must return column(s) {', '.join(missing)}; it returns {', '.join(returned)}")
    product_types = _run_types(getattr(stage, "ID_TYPES", None) or stage.INTEGER_TYPES)
    expected = [(spec.entered_at, _run_types(stage.TIMESTAMP_TYPES), "a timestamp (entered_at)")]
    expected += [(c, product_types, f"product ids ({', '.join(sorted(product_types))}; coupon.product)")
                 for c in coupon_product_columns(spec)]
    expected += [(c, TEXT_TYPES, f"text ({c})") for c in sorted(channel_columns(spec))]
    for column, allowed, what in expected:
        if column in returned and returned[column] not in allowed:
            problems.append(f"SQL: column {column!r} must be {what}, it is {returned[column]}")
    for template, fields in sorted(fields_by_template.items()):
        for field in sorted(fields - set(returned)):
            hint = difflib.get_close_matches(field, list(returned), n=1)
            problems.append(f"template {template} uses row.{field}, which the SELECT does not return"
                            + (f" (did you mean row.{hint[0]}?)" if hint else ""))
    return problems


def _warehouse_error(spec, exc: Exception, prefix_len: int, pieces) -> str:
    detail = str(getattr(exc, "pgerror", None) or exc).strip().splitlines()[0]
    position = getattr(getattr(exc, "diag", None), "statement_position", None)
    where = ""
    if position:
        at = int(position) - 1 - prefix_len  # PostgreSQL counts characters from 1
        for start, sql_start, length in reversed(pieces):
            if at >= start:
                where = f" at line {_file_line(spec, sql_start + min(at - start, length))}"
                break
    return f"{spec.path.name}: the warehouse rejected the SQL{where}: {detail}"


def _lint_conditions(condition_tie_problems) -> int:
    conditions, failures = sorted(CONDITIONS_DIR.glob("*.sql")), 0
    for path in conditions:
        problems = condition_tie_problems(path) + _wall_clock_problems(path)
        failures += bool(problems)
        print(f"FAIL {path}" if problems else f"ok   {path.name}")
        for problem in problems:
            print(f"     - {problem}")
    print(f"\nconditions: {len(conditions) - failures} ok, {failures} broken")
    return failures


def _clock_name(match: re.Match) -> str:
    """`now()`, `current_date`: the wall-clock call as the analyst knows it."""
    word = match.group(1)
    return re.sub(r"\s*\($", "()", word) if word.endswith("(") else word


def _wall_clock_problems(path: Path) -> list[str]:
    """A condition reading the wall clock instead of :as_of (backfills would not replay)."""
    text = path.read_text(encoding="utf-8")
    return [f"condition {path.name} line {text.count(chr(10), 0, m.start()) + 1}: "
            f"{_clock_name(m)} reads the wall clock: use :as_of"
            for m in WALL_CLOCK.finditer(_mask_sql(text))]


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0h"


# ---------------------------------------------------------------------------- promote
def promote_journey(journey: str, segments_dir: Path) -> int:
    """Set `status: live` in the journey's segment file (a path to the file works too)."""
    from lifecycle.promote import PromoteError, promote

    path = Path(journey) if journey.endswith(".sql") else segments_dir / f"{journey}.sql"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(segments_dir.glob("*.sql")))
        print(f"no segment file {path} (journeys: {known})")
        return 1
    try:
        print(promote(path).describe())
    except PromoteError as exc:
        print(exc)
        return 1
    return 0


# ---------------------------------------------------------------------------- init / migrate / stop
def _warehouse_target(warehouse_url: str | None, state_dir: Path) -> tuple[str, bool]:
    """(URL, is it the embedded one): --warehouse-url, else the Airflow connection in the environment
    (AIRFLOW_CONN_LIFECYCLE_WAREHOUSE, as in docker-compose), else the embedded demo warehouse."""
    from lifecycle.config import WAREHOUSE_CONN_ID
    from lifecycle.warehouse import warehouse_url as url_from_environment

    if warehouse_url or os.environ.get(f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}"):
        url = url_from_environment(warehouse_url)
        if not _on_embedded_server(url, state_dir):
            return url.render_as_string(hide_password=False), False
        return _embedded_url(state_dir, url.database or DEMO_DB), True  # `lifecycle env`'s connection
    return _embedded_url(state_dir, DEMO_DB), True


def _on_embedded_server(url, state_dir: Path) -> bool:
    """Whether `url` is the embedded server's (its unix socket lives in the data directory)."""
    host = url.query.get("host") or url.host or ""
    return host.startswith("/") and Path(host).resolve() == (state_dir / "pgdata").resolve()


def _embedded_url(state_dir: Path, database: str) -> str:
    """The embedded server's URL for `database` (started if it is not running)."""
    import sqlalchemy as sa

    from lifecycle.warehouse import start_embedded

    uri = start_embedded(state_dir / "pgdata").replace("postgresql://", "postgresql+psycopg2://", 1)
    return sa.make_url(uri).set(database=database).render_as_string(hide_password=False)


def _create_database_if_missing(url: str) -> bool:
    """CREATE DATABASE for the URL's database on its server unless it exists; whether it was made.
    Never drops: unlike `lifecycle demo`, init keeps what is there."""
    import sqlalchemy as sa

    target = sa.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}).first():
                return False
            conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
            return True
    finally:
        admin.dispose()


def _shown(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def migrate_warehouse(warehouse_url: str | None, state_dir: Path, demo_shop: bool = False) -> int:
    """Apply the lifecycle migrations and the contact views to the warehouse (idempotent)."""
    try:
        url, embedded = _warehouse_target(warehouse_url, state_dir)
    except ValueError as exc:
        print(f"lifecycle migrate: {exc}")
        return 1
    return _migrate(url, embedded, state_dir, demo_shop)


def _migrate(url: str, embedded: bool, state_dir: Path, demo_shop: bool) -> int:
    """Migrate `url`; the embedded warehouse (or --demo-shop) also gets the demo shop's tables,
    which the default contact views read."""
    import sqlalchemy as sa

    from lifecycle.schema import MigrationError, create_shop_schema, migrate

    if embedded and _create_database_if_missing(url):
        print(f"created database {sa.make_url(url).database} on the embedded PostgreSQL ({state_dir / 'pgdata'})")
    engine = sa.create_engine(url)
    try:
        if embedded or demo_shop:
            create_shop_schema(engine)
        applied = migrate(engine)
    except MigrationError as exc:
        print(f"lifecycle migrate: warehouse {_shown(url)}: {exc}")
        return 1
    except sa.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        print(f"lifecycle migrate: warehouse {_shown(url)}: {detail}; nothing was applied")
        return 1
    finally:
        engine.dispose()
    if applied:
        print(f"warehouse {_shown(url)}: applied {', '.join(applied)}")
    else:
        print(f"warehouse {_shown(url)}: already current")
    return 0


def create_pools() -> int:
    """The Airflow pools the send tasks run in (dag_factory.POOLS), in the metadata database this
    environment configures; a pool that exists keeps the slots an operator gave it."""
    import sqlalchemy as sa
    from airflow.models.pool import Pool

    from lifecycle.dag_factory import POOLS

    try:
        existing = {name: Pool.get_pool(name) for name in POOLS}
    except sa.exc.SQLAlchemyError as exc:
        print(f"lifecycle init: Airflow's metadata database is not reachable or not migrated "
              f"({str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}): run `airflow db migrate` first "
              "(docker-compose's airflow-init does); no pools were created")
        return 1
    for name, slots in POOLS.items():
        if existing[name] is not None:
            print(f"pool {name}: exists ({existing[name].slots} slots), left as it is")
            continue
        Pool.create_or_update_pool(name, slots=slots, description="lifecycle sends", include_deferred=False)
        print(f"pool {name}: created with {slots} slots")
    return 0


def init(warehouse_url: str | None, state_dir: Path, demo_shop: bool = False) -> int:
    """Everything a new installation needs before the DAGs run: the warehouse database (if it is
    the embedded one), its schemas, and the Airflow pools."""
    try:
        url, embedded = _warehouse_target(warehouse_url, state_dir)
    except ValueError as exc:
        print(f"lifecycle init: {exc}")
        return 1
    if _migrate(url, embedded, state_dir, demo_shop):
        return 1
    if embedded:  # the embedded setup keeps Airflow's metadata on the same server (`lifecycle env`)
        if _create_database_if_missing(_embedded_url(state_dir, AIRFLOW_DB)):
            print(f"created database {AIRFLOW_DB} on the embedded PostgreSQL (Airflow's metadata, see `lifecycle env`)")
    return create_pools()


def stop(state_dir: Path) -> int:
    """Stop the embedded PostgreSQL that `demo`, `env`, `init` or `report` started."""
    from lifecycle.warehouse import stop_embedded

    data_dir = state_dir / "pgdata"
    if stop_embedded(data_dir):
        print(f"stopped the embedded PostgreSQL ({data_dir})")
    else:
        print(f"no embedded PostgreSQL running on {data_dir}")
    return 0


# ---------------------------------------------------------------------------- report / preview
def default_warehouse_url() -> str:
    """The embedded warehouse (`lifecycle demo` fills it), for report and preview without a URL."""
    return _embedded_url(settings().state_dir, DEMO_DB)


def report(warehouse_url: str | None, mode: str, journey: str | None = None, since: datetime | None = None,
           until: datetime | None = None, fmt: str = "table") -> int:
    """The per-journey summary (and, for dry runs, what they would have sent) as a table, CSV or JSON.
    A warehouse without the `lifecycle` schema, or one that cannot be reached, gets a sentence, not a
    traceback."""
    import json

    import sqlalchemy as sa

    from lifecycle.report import (
        COLUMNS,
        DRY_RUN_COLUMNS,
        NoLifecycleSchema,
        dry_run_messages,
        format_rows,
        journey_summary,
    )

    engine = sa.create_engine(warehouse_url or default_warehouse_url())
    try:
        rows = journey_summary(engine, mode, journey, since, until)
        dry = dry_run_messages(engine, journey, since, until) if mode == "dry" else None
    except NoLifecycleSchema as exc:
        print(f"lifecycle report: {exc}", file=sys.stderr)
        return 1
    except sa.exc.OperationalError as exc:
        detail = str(exc.orig or exc).strip().splitlines()[0]
        print(f"lifecycle report: cannot reach the warehouse ({engine.url.render_as_string()}): {detail}",
              file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if fmt == "json":
        out = {"mode": mode, "journey": journey, "since": since and since.isoformat(),
               "until": until and until.isoformat(), "journeys": json.loads(format_rows(rows, COLUMNS, "json"))}
        if dry is not None:
            out["dry_run_messages"] = json.loads(format_rows(dry, DRY_RUN_COLUMNS, "json"))
        print(json.dumps(out, indent=2))
        return 0
    if fmt == "table" and not rows:
        print("no runs, enrollments or messages" + (f" of {journey}" if journey else "")
              + (" in that period" if since or until else "") + f" (mode {mode})")
    else:
        print(format_rows(rows, COLUMNS, fmt))
    if dry is not None:
        if fmt == "table":
            print("\nWhat the dry runs would have sent (distinct subjects and bodies, and the first message's subject):")
        else:
            print()  # CSV: a blank line, then the second table with its own header
        print(format_rows(dry, DRY_RUN_COLUMNS, fmt))
    return 0


def _report_args(args) -> int:
    if args.since and args.until and args.since >= args.until:
        print(f"lifecycle report: --since ({args.since.isoformat()}) must be before --until "
              f"({args.until.isoformat()})", file=sys.stderr)
        return 2
    return report(args.warehouse_url, args.mode, args.journey, args.since, args.until, args.fmt)


def _period_bound(end_of_day: bool):
    """argparse type for --since / --until: a date (YYYY-MM-DD; --until's counts whole) or an ISO time."""
    def parse(text: str) -> datetime:
        from lifecycle.ui.data import PeriodError, moment

        try:
            return moment("until" if end_of_day else "since", text, end_of_day=end_of_day)
        except PeriodError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def preview(journey: str, customer: str | None, as_of: datetime | None, step: str | None,
            out: Path | None, warehouse_url: str | None) -> int:
    """Render one customer's messages of a journey to files; nothing is written to `lifecycle`."""
    import sqlalchemy as sa

    from lifecycle.links import signing_key
    from lifecycle.preview import NotSelected
    from lifecycle.preview import preview as render_preview
    from lifecycle.render import TemplateRenderError
    from lifecycle.spec import load_all
    from lifecycle.sql import SegmentSQLError

    try:
        signing_key()  # the messages carry signed unsubscribe links, as sent ones do
    except RuntimeError as exc:
        print(f"lifecycle preview: {exc}", file=sys.stderr)
        return 2
    specs, _errors = load_all()
    spec = next((s for s in specs if s.journey == journey), None)
    if spec is None:
        print(f"lifecycle preview: no journey {journey!r} (valid segment files: "
              f"{', '.join(sorted(s.journey for s in specs))}; `lifecycle lint` shows the broken ones)", file=sys.stderr)
        return 2
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    out = out or Path("preview") / journey
    engine = sa.create_engine(warehouse_url or default_warehouse_url())
    try:
        result = render_preview(engine, spec, out, customer=customer, as_of=as_of, step=step)
    except (NotSelected, ValueError, SegmentSQLError, TemplateRenderError) as exc:  # each names what is wrong
        print(f"lifecycle preview: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{journey}: customer {result.customer_id}, interval {result.interval_start.isoformat()} .. "
          f"{result.interval_end.isoformat()} (nothing written to the lifecycle schema)")
    for path in result.written:
        print(f"  wrote {path}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def parser(description: str = __doc__) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The engine's commands; each sets `run(args) -> exit code`. Returns the subparsers too, so
    the demo's command line can add its own."""
    parser = argparse.ArgumentParser(prog="lifecycle", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_lint = sub.add_parser("lint", help="check segment files")
    p_lint.add_argument("files", nargs="*")
    p_lint.add_argument("--warehouse-url", help="also run each SELECT with LIMIT 0 on this warehouse and check its columns")
    p_lint.set_defaults(run=lambda a: lint(a.files, a.warehouse_url))
    p_report = sub.add_parser("report", help="per-journey summary")
    p_report.add_argument("--warehouse-url")
    p_report.add_argument("--mode", default="live", choices=["live", "dry"])
    p_report.add_argument("--journey", help="only this journey")
    p_report.add_argument("--since", type=_period_bound(False), help="from this day (YYYY-MM-DD, UTC) or ISO time")
    p_report.add_argument("--until", type=_period_bound(True), help="to this day, inclusive, or before this ISO time")
    p_report.add_argument("--format", dest="fmt", default="table", choices=["table", "csv", "json"])
    p_report.set_defaults(run=lambda a: _report_args(a))
    p_promote = sub.add_parser("promote", help="make a draft journey live: set `status: live` in its header")
    p_promote.add_argument("journey", help="journey name (or the segment file's path)")
    p_promote.add_argument("--segments-dir", type=Path, default=SEGMENTS_DIR)
    p_promote.set_defaults(run=lambda a: promote_journey(a.journey, a.segments_dir))
    for name, text, command in (
            ("migrate", "apply the lifecycle migrations and contact views to the warehouse", migrate_warehouse),
            ("init", "create the warehouse database (embedded), migrate it, create the Airflow pools", init)):
        p_ops = sub.add_parser(name, help=text)
        p_ops.add_argument("--warehouse-url", help="default: AIRFLOW_CONN_LIFECYCLE_WAREHOUSE, else the embedded warehouse")
        p_ops.add_argument("--demo-shop", action="store_true",
                           help="also create the demo shop's tables (schema `shop`) the default contact views read")
        p_ops.set_defaults(run=lambda a, command=command: command(a.warehouse_url, settings().state_dir, a.demo_shop))
    sub.add_parser("stop", help="stop the embedded PostgreSQL").set_defaults(run=lambda a: stop(settings().state_dir))
    p_preview = sub.add_parser("preview", help="render one customer's messages of a journey to files (writes nothing)")
    p_preview.add_argument("journey")
    p_preview.add_argument("--customer", help="customer id (default: the first the segment selects)")
    p_preview.add_argument("--as-of", type=datetime.fromisoformat,
                           help="the interval ending at this moment (default: the latest complete one; UTC if no offset)")
    p_preview.add_argument("--step", help="only this step (default: every message step and exit message)")
    p_preview.add_argument("--out", type=Path, help="directory for the files (default: ./preview/<journey>/)")
    p_preview.add_argument("--warehouse-url", help="default: the embedded demo warehouse")
    p_preview.set_defaults(run=lambda a: preview(a.journey, a.customer, a.as_of, a.step, a.out, a.warehouse_url))
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    args = parser()[0].parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
