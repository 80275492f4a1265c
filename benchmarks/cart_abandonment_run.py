"""Benchmark one hourly cart-abandonment run on a generated shop (default 100k customers).

    .venv/bin/python benchmarks/cart_abandonment_run.py [--customers N] [--lenient] [--keep]

What it does (see benchmarks/README.md for the figures measured):

1. starts a fresh embedded PostgreSQL and a real SMTP server (``python -m
   lifecycle.smtp_sink`` in its own process, writing .eml files to a temp dir), generates
   the demo shop and migrates the lifecycle schema;
2. **cold start**: the hour ending at the anchor on empty lifecycle tables (a first run
   ever, which expires most reminders: they are more than max_lateness late);
3. empties the lifecycle tables, runs the six hours ending anchor-6h .. anchor-1h as a
   warm-up, then **steady state**: the hour ending at the anchor again.

Each measured run does stage, validate, enroll, exits, plan and batch in this process
(the calls `lifecycle.replay.run_interval` makes, timed the same way), then sends all
batches with `lifecycle.send.send_batch` in a child process ('spawn'), as Airflow runs
each mapped send task in a process of its own. The child's memory is read from
/proc/self/status: RSS after its imports and engine are ready, then the peak RSS
(VmHWM, reset with /proc/self/clear_refs just before sending) while it sends.

``--lenient`` replaces every step's max_lateness with 7 days (like tests/test_guarantees.py
LENIENT), so the cold start plans every due reminder: thousands of messages.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)  # the tests' anchor: the shop's history ends here
HOUR = timedelta(hours=1)
WARMUP_HOURS = 6
STAGES = ("stage", "validate", "enroll", "exits", "plan", "batch", "send")
LIFECYCLE_TABLES = (
    "lifecycle.messages, lifecycle.enrollments, lifecycle.runs, lifecycle.quarantine, "
    "lifecycle.conversions, lifecycle.suppressions, lifecycle.coupons"
)


# ------------------------------------------------------------------------------ helpers


def _not_noise(record: logging.LogRecord) -> bool:
    # GX sets INFO on some of its own loggers (e.g. "Created temporary directory ... for
    # ephemeral docs site" once per validation), so raising the parent's level is not enough.
    noisy = record.name.startswith(("great_expectations", "mail.log"))
    return not noisy or record.levelno >= logging.ERROR


def quiet() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_noise)
    warnings.filterwarnings("ignore")


def journey(lenient: bool):
    from lifecycle.config import SEGMENTS_DIR
    from lifecycle.spec import load_spec

    spec = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
    if lenient:
        steps = tuple(dataclasses.replace(s, max_lateness=timedelta(days=7)) for s in spec.steps)
        spec = dataclasses.replace(spec, steps=steps)
    return spec


def proc_status_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak since start or the last reset) of this process, in MB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakTracker:
    """The whole process's peak RSS, kept across the VmHWM resets done to measure one part."""

    def __init__(self) -> None:
        self.peak = 0.0

    def reset(self) -> bool:
        self.peak = max(self.peak, proc_status_mb("VmHWM"))
        return reset_peak_rss()

    def whole(self) -> float:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return max(self.peak, proc_status_mb("VmHWM"), maxrss)


def email_channel(port: int):
    from lifecycle.channels.email import EmailChannel

    return lambda name: EmailChannel("127.0.0.1", port)


# ------------------------------------------------------------------------ the send child


def send_worker(url: str, lenient: bool, batches: list[dict], smtp_port: int, pipe) -> None:
    """Child process: send every batch, report counts, seconds and memory through `pipe`."""
    try:
        quiet()
        import sqlalchemy as sa

        import lifecycle.channels.email  # noqa: F401  (imported before the baseline is read)
        import lifecycle.links  # noqa: F401
        import lifecycle.render  # noqa: F401
        from lifecycle import send

        spec = journey(lenient)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        channel_for = email_channel(smtp_port)
        import_peak = proc_status_mb("VmHWM")
        baseline = proc_status_mb("VmRSS")
        reset = reset_peak_rss()
        counts: Counter[str] = Counter()
        retried = 0
        t0 = time.perf_counter()
        for batch in batches:
            try:
                counts.update(send.send_batch(engine, spec, batch, channel_for,
                                              clock=lambda b=batch: datetime.fromisoformat(b["as_of"])))
            except send.RetryBatch:
                retried += 1
        seconds = time.perf_counter() - t0
        pipe.send({
            "counts": dict(counts), "seconds": seconds, "retried_batches": retried,
            "baseline_mb": baseline, "peak_mb": proc_status_mb("VmHWM"), "import_peak_mb": import_peak,
            "peak_reset": reset,
        })
        engine.dispose()
    except BaseException:
        pipe.send({"error": traceback.format_exc()})
        raise


def send_in_child(url: str, lenient: bool, batches: list[dict], smtp_port: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=send_worker, args=(url, lenient, batches, smtp_port, child_end), name="send")
    t0 = time.perf_counter()
    proc.start()
    child_end.close()
    try:
        result = parent_end.recv()
    except EOFError:
        result = {"error": f"send process died (exit code {proc.exitcode})"}
    proc.join()
    if "error" in result:
        raise RuntimeError(f"send process failed:\n{result['error']}")
    result["wall"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------- the runs


def measured_run(engine, url: str, spec, lenient: bool, end: datetime, smtp_port: int, label: str,
                 peaks: PeakTracker) -> dict:
    """One interval, stage by stage as lifecycle.replay.run_interval does, send in a child."""
    from lifecycle import plan, run_audit, schema, stage, validate
    from lifecycle.enroll import enroll
    from lifecycle.exits import evaluate_exits
    from lifecycle.run_context import RunContext

    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    peaks.reset()
    run = RunContext(spec.journey, f"bench_{label}__{end.isoformat()}", "live", end - HOUR, end)
    schema.migrate(engine)
    run_audit.start_run(engine, run)
    selected = timed("stage", stage.stage_segment, engine, spec, run)
    outcome = timed("validate", validate.validate_stage, engine, spec, run)
    enrolled = timed("enroll", enroll, engine, spec, run)
    exits = timed("exits", evaluate_exits, engine, spec, run)
    planned = timed("plan", plan.plan_due_steps, engine, spec, run)
    batches = timed("batch", plan.assign_batches, engine, spec, run)
    main_peak = proc_status_mb("VmHWM")
    child = send_in_child(url, lenient, batches, smtp_port) if batches else None
    timings["send"] = child["seconds"] if child else 0.0
    counts = run_audit.message_counts(engine, run)
    run_audit.finish_run(engine, run, "ok", counts)
    stage.drop_stage(engine, run)
    planned_total = Counter()
    for by_status in planned.values():
        planned_total.update(by_status)
    return {
        "selected": selected, "valid": outcome.rows_valid, "quarantined": outcome.rows_quarantined,
        "enrolled": enrolled, "exits": exits, "planned": dict(planned_total), "batches": batches,
        "counts": counts, "child": child, "timings": timings, "main_peak": main_peak,
    }


def warm_up(engine, spec, smtp_port: int, hours: int) -> tuple[float, Counter]:
    from lifecycle.replay import run_interval

    sent: Counter[str] = Counter()
    t0 = time.perf_counter()
    for k in range(hours, 0, -1):
        end = ANCHOR - k * HOUR
        result = run_interval(engine, spec, end - HOUR, end, email_channel(smtp_port),
                              run_id=f"bench_warmup__{end.isoformat()}")
        sent.update(result["messages"])
    return time.perf_counter() - t0, sent


# ------------------------------------------------------------------------------ the sink


def start_smtp_sink(outbox: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifecycle.smtp_sink", "--outbox", str(outbox), "--port", "0"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"listening on [\d.]+:(\d+)", log_path.read_text(errors="replace"))
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"SMTP sink did not start; its log:\n{log_path.read_text(errors='replace')}")


# ----------------------------------------------------------------------------- the report


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def report(results: dict[str, dict]) -> str:
    labels = list(results)
    rows: list[tuple[str, list[str]]] = []

    def row(name, fn):
        rows.append((name, [fn(results[label]) for label in labels]))

    row("rows segmented (staged)", lambda r: f"{r['selected']:,}")
    row("  valid / quarantined", lambda r: f"{r['valid']:,} / {r['quarantined']:,}")
    row("enrollments new / refreshed",
        lambda r: f"{r['enrolled'].get('entered', 0):,} / {r['enrolled'].get('refreshed', 0):,}")
    row("exits", lambda r: f"{sum(r['exits'].values()):,}")
    row("messages planned (new rows)", lambda r: f"{sum(r['planned'].values()):,}")
    row("  of which expired (too late)", lambda r: f"{r['planned'].get('expired', 0):,}")
    row("batches x size",
        lambda r: f"{len(r['batches'])} x {max((b['size'] for b in r['batches']), default=0)}")
    row("messages sent", lambda r: f"{r['counts'].get('sent', 0):,}")
    for stage_name in STAGES:
        row(f"{stage_name} (s)", lambda r, s=stage_name: f"{r['timings'].get(s, 0.0):.2f}")
    row("total (s)", lambda r: f"{sum(r['timings'].values()):.2f}")
    row("send: messages/s",
        lambda r: f"{r['counts'].get('sent', 0) / r['timings']['send']:.0f}" if r["timings"]["send"] else "-")
    row("send process: RSS ready (MB)", lambda r: f"{r['child']['baseline_mb']:.0f}" if r["child"] else "-")
    row("send process: peak RSS (MB)", lambda r: f"{r['child']['peak_mb']:.0f}" if r["child"] else "-")
    row("send process: peak - ready (MB)",
        lambda r: f"{r['child']['peak_mb'] - r['child']['baseline_mb']:.1f}" if r["child"] else "-")
    row("send process: wall incl. start (s)", lambda r: f"{r['child']['wall']:.2f}" if r["child"] else "-")
    row("main: peak RSS in stages (MB)", lambda r: f"{r['main_peak']:.0f}")

    width = max(len(name) for name, _ in rows)
    col = [max(len(label), *(len(values[i]) for _, values in rows)) for i, label in enumerate(labels)]
    lines = [" " * width + "  " + "  ".join(label.rjust(col[i]) for i, label in enumerate(labels))]
    lines.append("-" * len(lines[0]))
    for name, values in rows:
        lines.append(name.ljust(width) + "  " + "  ".join(v.rjust(col[i]) for i, v in enumerate(values)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000, help="shop size (default 100000)")
    parser.add_argument("--lenient", action="store_true",
                        help="steps' max_lateness = 7 days: the cold start plans every due reminder")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (database and .eml files)")
    args = parser.parse_args(argv)
    # Unsubscribe links are signed; the spawned send process inherits this throwaway key.
    os.environ.setdefault("LIFECYCLE_SIGNING_KEY", secrets.token_urlsafe(32))
    quiet()

    import sqlalchemy as sa

    from lifecycle import demo_shop, schema
    from lifecycle.warehouse import start_embedded, stop_embedded

    peaks = PeakTracker()
    spec = journey(args.lenient)
    t0 = time.perf_counter()
    import great_expectations  # noqa: F401  (a one-off cost per process, kept out of the validate figure)

    print(f"import great_expectations: {time.perf_counter() - t0:.1f} s (paid by every validate task process)")
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    pgdata, outbox = tmp / "pgdata", tmp / "outbox"
    sink = None
    started_pg = False
    try:
        sink, smtp_port = start_smtp_sink(outbox, tmp / "smtp_sink.log")
        t0 = time.perf_counter()
        with warnings.catch_warnings(action="ignore"):  # pgserver: "XDG_RUNTIME_DIR is not set"
            url = start_embedded(pgdata).replace("postgresql://", "postgresql+psycopg2://", 1)
        started_pg = True
        engine = sa.create_engine(url)
        print(f"embedded PostgreSQL started in {time.perf_counter() - t0:.1f} s; SMTP sink on port {smtp_port}")

        t0 = time.perf_counter()
        demo_shop.generate(engine, ANCHOR, customers=args.customers)
        schema.migrate(engine)
        with engine.connect() as conn:
            carts = conn.execute(sa.text("SELECT count(*) FROM shop.carts")).scalar_one()
        print(f"shop generated: {args.customers:,} customers, {carts:,} carts in "
              f"{time.perf_counter() - t0:.1f} s (anchor {ANCHOR:%Y-%m-%d %H:%M} UTC)")
        # Settle the fresh load (the insert-triggered autovacuum of the big tables would
        # otherwise compete with the cold-start run), as a warehouse in service would be.
        t0 = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
            conn.exec_driver_sql("CHECKPOINT")
        print(f"VACUUM (ANALYZE) and CHECKPOINT after the load: {time.perf_counter() - t0:.1f} s")
        mode = "lenient (max_lateness 7 days)" if args.lenient else "as shipped (max_lateness " + ", ".join(
            sorted({str(s.max_lateness) for s in spec.steps})) + ")"
        print(f"journey {spec.journey}, {mode}, batch_size {spec.batch_size}")

        results = {}
        interval = f"[{ANCHOR - HOUR:%H:%M}, {ANCHOR:%H:%M})"
        print(f"cold start: hour {interval} on empty lifecycle tables ...", flush=True)
        results["cold start"] = measured_run(engine, url, spec, args.lenient, ANCHOR, smtp_port, "cold", peaks)

        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {LIFECYCLE_TABLES} CASCADE")
        seconds, sent = warm_up(engine, spec, smtp_port, WARMUP_HOURS)
        print(f"warm-up: {WARMUP_HOURS} hourly runs ending anchor-{WARMUP_HOURS}h .. anchor-1h in {seconds:.1f} s "
              f"(messages: {fmt_counts(sent)})")
        print(f"steady state: hour {interval} after the warm-up ...", flush=True)
        results["steady state"] = measured_run(engine, url, spec, args.lenient, ANCHOR, smtp_port, "steady", peaks)

        print()
        print(report(results))
        print()
        for label, r in results.items():
            print(f"{label}: messages of the run by status: {fmt_counts(r['counts'])}")
        eml = sum(1 for _ in outbox.glob("*.eml"))
        print(f"SMTP sink received {eml:,} messages in all (both runs and the warm-up)")
        print(f"benchmark process peak RSS: {peaks.whole():.0f} MB (shop generation included)")
        print("send process memory: /proc/self/status of the child, RSS once imports and engine are ready, "
              "then VmHWM reset before the first batch and read after the last")
        engine.dispose()
        return 0
    finally:
        if sink is not None:
            sink.terminate()
            try:
                sink.wait(10)
            except subprocess.TimeoutExpired:
                sink.kill()
        if started_pg:
            with warnings.catch_warnings(action="ignore"):
                stop_embedded(pgdata)
        if args.keep:
            print(f"kept {tmp} (pgdata/: the database, restart it with lifecycle.warehouse.start_embedded; "
                  "outbox/: the .eml files)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
