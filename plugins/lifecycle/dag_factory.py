"""Turn segment files into Airflow DAGs: one DAG per journey, one run per data interval.

    start_run → stage_segment → validate → enroll → evaluate_exits → plan_messages
              → send_batch (mapped over batch descriptors) → summarize (Asset)

Parsing reads files only (no database or network at parse time); engine modules are
imported inside tasks. A broken segment file becomes a DAG whose single task fails with
the file's error, so it is visible in Airflow and every other journey still loads.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import (
    DAG,
    Asset,
    CronDataIntervalTimetable,
    Param,
    dag,
    get_current_context,
    get_parsing_context,
    task,
)

from lifecycle import channels as registry
from lifecycle.config import SEGMENTS_DIR, settings
from lifecycle.fingerprint import journey_fingerprint
from lifecycle.mailbox import MAILBOX_DAG_ID, build_mailbox_dag
from lifecycle.model import Batch, Kind, Mode
from lifecycle.spec import SCHEDULES, JourneySpec, SpecError, discover, load_all
from lifecycle.ui.dag_docs import cut_words, journey_doc_md
from lifecycle.warehouse import task_engine

log = logging.getLogger(__name__)

# Pools rate-limit each channel (lifecycle.channels: `Channel.pool`); transactional journeys have
# their own so they never wait behind marketing sends. Slots are a deployment choice (`airflow pools set`).
TRANSACTIONAL_POOL = "lifecycle_transactional"
POOLS = {**{c.pool: c.pool_slots for c in registry.CHANNELS.values()}, TRANSACTIONAL_POOL: 4}
DRAFT_NOTE = ("\n\n**Draft**: every run is a dry run (what would be sent is recorded with mode `dry`, nothing "
              "is delivered). Go live with `lifecycle promote <journey>`.")
DEFAULT_ARGS = {"owner": "lifecycle", "retries": 3, "retry_delay": timedelta(minutes=2)}


def pool_for(kind: str, channel: str) -> str:
    return TRANSACTIONAL_POOL if kind == Kind.TRANSACTIONAL else registry.channel(channel).pool


def open_sender(name: str):
    """The sender of channel `name`, configured from its Airflow connection (inside a task)."""
    return registry.channel(name).open()


def fan_out(planned, channel: str, kind: str, specs: dict[str, JourneySpec], key: str | None = None):
    """`batches_<key>` picks that channel's descriptors from the plan (Airflow cannot map over
    one key of a dict), then `send_<key>` is mapped over them in the channel's pool."""
    key = key or channel

    @task(task_id=f"batches_{key}")
    def pick(plan: dict) -> list[dict]:
        return plan.get(key, [])

    return make_send_task(channel, kind, specs, key).expand(batch=pick(planned))


def sender_clock(as_of: str):
    """The wall clock, or, with LIFECYCLE_CLOCK=as_of (the demo and simulations), the run's as_of:
    replaying the past as if each run had happened on time."""
    if settings().clock == "as_of":
        fixed = datetime.fromisoformat(as_of)
        return lambda: fixed
    return lambda: datetime.now(UTC)


def make_send_task(channel: str, kind: str, specs: dict[str, JourneySpec], key: str | None = None):
    """A task that delivers one batch of `channel` messages (mapped over batch descriptors)."""

    @task(task_id=f"send_{key or channel}", pool=pool_for(kind, channel), retry_delay=timedelta(seconds=30),
          max_active_tis_per_dagrun=4)
    def send(batch: Batch) -> dict:
        from lifecycle.send import send_batch
        from lifecycle.tasklog import batch_line

        engine = task_engine()
        counts = send_batch(engine, specs[batch["journey"]], batch, open_sender,
                            dry_run=batch["mode"] == Mode.DRY, clock=sender_clock(batch["as_of"]))
        log.info("%s", batch_line(engine, batch, counts))
        return counts

    return send


def journey_asset(journey: str) -> Asset:
    return Asset(name=f"lifecycle_{journey}_runs", uri=f"lifecycle://runs/{journey}")


def _run_switch(name: str) -> bool:
    """A boolean param of this run. Read from the run's own conf (where the trigger form and
    `--dag-run-conf` put it): params resolved in-process can carry over between runs."""
    conf = get_current_context()["dag_run"].conf or {}
    return bool(conf.get(name, False))


def replay_advice(journey: str, logical_date: str = "<interval start>") -> str:
    """How to run one past interval in Airflow 3.3. Not `airflow dags trigger --logical-date`:
    a manual run's data interval is inferred from the moment it is triggered (the latest finished
    interval), whatever logical date it is given."""
    return (
        f"replay it with `airflow backfill create --dag-id {journey} --from-date {logical_date} "
        f"--to-date {logical_date} --max-active-runs 1` (the date is the interval's start, its logical date; "
        "the DAG must be unpaused; add `--reprocess-behavior completed` if that interval already ran). "
        "`airflow dags trigger --logical-date` does not choose the interval: the run gets the latest finished one."
    )


def _asked_for_an_earlier_interval(ctx) -> bool:
    """A run whose logical date lies before its data interval: a manual run given a past logical
    date got the latest interval instead (see replay_advice); a backfill that cleared such a run
    keeps its wrong interval too."""
    logical_date = ctx.get("logical_date")
    return logical_date is not None and logical_date < ctx["data_interval_start"]


def _cli_date(moment) -> str:
    """A logical date as `airflow backfill create` takes it: the day alone when it is midnight."""
    return moment.date().isoformat() if moment.time() == moment.min.time() else moment.isoformat()


def _run_mode(spec: JourneySpec) -> Mode:
    """'dry' for a draft journey (every run records what it would send, delivers nothing) and for
    a run asked to be dry (`{"dry_run": true}`); otherwise 'live'."""
    return Mode.DRY if spec.status == "draft" or _run_switch("dry_run") else Mode.LIVE


def _run_context(spec: JourneySpec):
    from lifecycle.run_context import RunContext

    ctx = get_current_context()
    if ctx.get("data_interval_start") is None:  # Airflow 3 manual triggers default to no logical date
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"{spec.journey}: this run has no data interval. A journey run replays one interval: "
            f"{replay_advice(spec.journey)}"
        )
    if _asked_for_an_earlier_interval(ctx):
        from airflow.sdk.exceptions import AirflowFailException

        asked = ctx["logical_date"]
        raise AirflowFailException(
            f"{spec.journey}: this manual run was given the logical date {asked.isoformat()}, but Airflow gave it "
            f"the interval {ctx['data_interval_start'].isoformat()} .. {ctx['data_interval_end'].isoformat()}. "
            f"Nothing was done. To run the interval starting {asked.isoformat()}, delete this run first (its "
            f"logical date is taken, and a backfill that re-ran it would keep its wrong interval: Airflow UI, or "
            f"DELETE /api/v2/dags/{spec.journey}/dagRuns/{ctx['run_id']}), then "
            f"{replay_advice(spec.journey, _cli_date(asked))}"
        )
    return RunContext(
        journey=spec.journey,
        run_id=ctx["run_id"],
        mode=_run_mode(spec),
        interval_start=ctx["data_interval_start"],
        interval_end=ctx["data_interval_end"],
    )


def _failed_tasks(ctx) -> list[str]:
    """Tasks of this DAG run that failed (the summary records the run as failed then)."""
    states = ctx["ti"].get_task_states(dag_id=ctx["dag"].dag_id, run_ids=[ctx["run_id"]])
    return sorted({task for task, state in states.get(ctx["run_id"], {}).items()
                   if state in ("failed", "upstream_failed")})


def build_journey_dag(spec: JourneySpec) -> DAG:
    @dag(
        dag_id=spec.journey,
        description=cut_words(spec.description) or None,
        doc_md=journey_doc_md(spec, journey_fingerprint(spec), DRAFT_NOTE if spec.status == "draft" else ""),
        schedule=CronDataIntervalTimetable(spec.cron, timezone="UTC"),
        start_date=spec.start_date,
        catchup=False,
        max_active_runs=1,  # a journey's state moves interval by interval: runs replay in order
        default_args={**DEFAULT_ARGS, "owner": spec.owner},
        tags=["lifecycle", spec.schedule, spec.kind, spec.status, *spec.tags],
        params={
            "dry_run": Param(False, type="boolean", description="Record what would be sent (status dry_run), deliver nothing."),
            "approve_volume": Param(False, type="boolean", description="Release a run held by the row-count guard."),
        },
    )
    def journey():
        @task
        def start_run() -> dict:
            from lifecycle.run_audit import refuse_if_an_earlier_run_is_unfinished
            from lifecycle.run_audit import start_run as record_start
            from lifecycle.schema import migrate

            engine, run = task_engine(), _run_context(spec)
            migrate(engine)
            refuse_if_an_earlier_run_is_unfinished(engine, run)
            record_start(engine, run)
            log.info("run %s: interval %s .. %s, mode %s", run.run_id, run.interval_start.isoformat(),
                     run.interval_end.isoformat(), run.mode)
            return run.to_xcom()

        @task
        def stage_segment(run: dict) -> int:
            from lifecycle.run_context import RunContext
            from lifecycle.stage import stage_segment as stage

            rows = stage(task_engine(), spec, RunContext.from_xcom(run))
            log.info("segment selected %d rows", rows)
            return rows

        @task
        def validate(run: dict, rows_selected: int) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from lifecycle.run_context import RunContext
            from lifecycle.tasklog import validation_line
            from lifecycle.validate import VolumeHeld, validate_stage

            approve = _run_switch("approve_volume")
            try:
                outcome = validate_stage(task_engine(), spec, RunContext.from_xcom(run), approve_volume=approve).to_xcom()
            except VolumeHeld as exc:
                if exc.outcome:
                    log.info("%s", validation_line(exc.outcome))
                raise AirflowFailException(str(exc)) from exc  # retrying cannot help: a person must look
            log.info("%s", validation_line(outcome))
            return outcome

        @task
        def enroll(run: dict, validation: dict) -> dict:
            from lifecycle.enroll import enroll as upsert
            from lifecycle.run_context import RunContext
            from lifecycle.tasklog import mapping_line

            counts = upsert(task_engine(), spec, RunContext.from_xcom(run))
            log.info("%s", mapping_line("enrollments", counts))
            return counts

        @task
        def evaluate_exits(run: dict, enrolled: dict) -> dict:
            from lifecycle.exits import evaluate_exits as exits
            from lifecycle.run_context import RunContext
            from lifecycle.tasklog import mapping_line

            counts = exits(task_engine(), spec, RunContext.from_xcom(run))
            log.info("%s", mapping_line("exits", counts))
            return counts

        @task
        def plan_messages(run: dict, exited: dict) -> dict[str, list[dict]]:
            from lifecycle.plan import assign_batches, by_channel, plan_due_steps
            from lifecycle.run_audit import refuse_if_an_earlier_run_is_unfinished
            from lifecycle.run_context import RunContext
            from lifecycle.tasklog import plan_line

            engine, ctx = task_engine(), RunContext.from_xcom(run)
            refuse_if_an_earlier_run_is_unfinished(engine, ctx)  # one may have started since start_run
            plan_due_steps(engine, spec, ctx)
            now = sender_clock(ctx.as_of.isoformat())()
            planned = by_channel(assign_batches(engine, spec, ctx, now=now), spec.channels)
            log.info("%s", plan_line(engine, ctx.journey, ctx.run_id, planned))
            return planned

        @task
        def sync_audience(run: dict, planned: dict) -> dict:
            """Keep the journey's Meta custom audience equal to its active members (diff only);
            after planning, which is where finished enrollments complete."""
            from lifecycle.audiences import MetaAudienceClient
            from lifecycle.audiences import sync_audience as sync
            from lifecycle.run_context import RunContext

            ctx = RunContext.from_xcom(run)
            if ctx.mode == Mode.DRY:
                return {"skipped": "dry run: audiences are not changed"}
            return sync(task_engine(), spec.journey, spec.audience_id, MetaAudienceClient.from_airflow())

        @task(trigger_rule="all_done", outlets=[journey_asset(spec.journey)])
        def summarize(run: dict | None) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from lifecycle.run_audit import finish_run, message_counts
            from lifecycle.run_context import RunContext
            from lifecycle.stage import drop_stage
            from lifecycle.tasklog import mapping_line
            from lifecycle.ui.run_note import NOTE_XCOM_KEY, note_text, run_figures

            if run is None:  # start_run refused the run (its log says why): nothing to record, nothing to retry
                raise AirflowFailException(f"{spec.journey}: start_run failed, so this run did nothing")
            ctx = get_current_context()
            engine, r = task_engine(), RunContext.from_xcom(run)
            failed = _failed_tasks(ctx)
            counts = message_counts(engine, r)
            finish_run(engine, r, "failed" if failed else "ok", counts,
                       error=f"failed tasks: {', '.join(sorted(set(failed)))}" if failed else None)
            drop_stage(engine, r)
            log.info("run %s: interval %s .. %s: %s", "failed" if failed else "ok", r.interval_start.isoformat(),
                     r.interval_end.isoformat(), mapping_line("messages", dict(sorted(counts.items()))))
            # The run note (copied onto the DAG run by lifecycle.ui.run_note_listener) and the asset
            # event's extra: what the run did, readable in the run list and by asset consumers.
            figures = run_figures(engine, r, counts)
            note = note_text(figures, failed)
            ctx["ti"].xcom_push(key=NOTE_XCOM_KEY, value=note)
            ctx["outlet_events"][journey_asset(spec.journey)].extra.update(figures)
            if failed:  # recorded above; now make the DAG run itself show the failure
                raise AirflowFailException(
                    f"{r.journey}: task(s) {', '.join(failed)} failed; the run is recorded as failed in "
                    "lifecycle.runs and messages still planned will be sent by the next run"
                )
            return {"journey": r.journey, "run_id": r.run_id, "messages": counts, "note": note}

        run = start_run()
        rows = stage_segment(run)
        checked = validate(run, rows)
        enrolled = enroll(run, checked)
        exited = evaluate_exits(run, enrolled)
        planned = plan_messages(run, exited)
        done = [fan_out(planned, ch, spec.kind, {spec.journey: spec}) for ch in sorted(spec.channels)]
        if spec.audience_id:
            done.append(sync_audience(run, planned))
        done >> summarize(run)

    return journey()


def broken_dag_id(path: Path) -> str:
    """The file's name as a DAG id Airflow accepts (letters, digits, `_`, `.`, `-`)."""
    return re.sub(r"[^\w.-]", "_", path.stem)[:200] or "unnamed_segment"


def build_broken_dag(error: SpecError) -> DAG:
    """Stand-in for a segment file that does not parse: one task that fails with the error.

    It keeps the file's schedule and owner when the header says them: every interval then
    fails (and alerts whoever watches that owner's failures) until the file is fixed, instead
    of the journey silently stopping. Without a readable schedule it only runs when triggered."""
    message = str(error)
    schedule = CronDataIntervalTimetable(SCHEDULES[error.schedule], timezone="UTC") if error.schedule else None

    @dag(
        dag_id=broken_dag_id(error.path),
        description=f"BROKEN segment file: {message}"[:200],
        doc_md=f"### This segment file is broken\n\n`{error.path.name}`\n\n" + "\n".join(f"- {p}" for p in error.problems),
        schedule=schedule,
        start_date=error.start_date or datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": error.owner or DEFAULT_ARGS["owner"]},
        tags=["lifecycle", "broken", *([error.schedule] if error.schedule else [])],
    )
    def broken():
        @task(retries=0)
        def report_segment_error():
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(message)

        report_segment_error()

    return broken()


DISPATCH_DAG_ID = "lifecycle_dispatch"


def build_dispatch_dag(specs: list[JourneySpec]) -> DAG:
    """Hourly: send messages that were waiting (an SMS held for the recipient's daytime, a
    fallback) or that a run left behind, whatever the journey's own schedule."""
    by_journey = {s.journey: s for s in specs}
    channels = sorted({c for s in specs if s.kind == "marketing" for c in s.channels})
    # Transactional messages have their own send tasks in their own pool: an order confirmation
    # left behind never queues behind a marketing backlog.
    transactional = sorted({c for s in specs if s.kind == "transactional" for c in s.channels})

    @dag(
        dag_id=DISPATCH_DAG_ID,
        description="Send waiting and left-behind messages of every journey",
        schedule=CronDataIntervalTimetable("30 * * * *", timezone="UTC"),
        start_date=min((s.start_date for s in specs), default=None),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["lifecycle", "dispatch"],
    )
    def dispatch():
        @task
        def collect() -> dict[str, list[dict]]:
            from lifecycle.plan import assign_batches, by_channel
            from lifecycle.tasklog import batches_text

            ctx = get_current_context()
            batches = {"marketing": [], "transactional": []}
            for journey in sorted(by_journey):
                run = _dispatch_context(journey, ctx)
                now = sender_clock(run.as_of.isoformat())()
                batches[by_journey[journey].kind] += assign_batches(
                    task_engine(), by_journey[journey], run, only_waiting=True, now=now)
            waiting = by_channel(batches["marketing"], channels)
            for channel, found in by_channel(batches["transactional"], transactional).items():
                waiting[f"transactional_{channel}"] = found
            log.info("waiting or left behind: %s", batches_text(waiting))
            return waiting

        waiting = collect()
        for channel in channels:
            fan_out(waiting, channel, "marketing", by_journey)
        for channel in transactional:
            fan_out(waiting, channel, "transactional", by_journey, key=f"transactional_{channel}")

    return dispatch()


def _dispatch_context(journey: str, ctx):
    from lifecycle.run_context import RunContext

    return RunContext(journey, ctx["run_id"], Mode.LIVE, ctx["data_interval_start"], ctx["data_interval_end"])


def build_dags(segments_dir: Path = SEGMENTS_DIR, dag_id: str | None = None) -> dict[str, DAG]:
    """Every segment file's DAG, and the dispatcher. Whatever goes wrong with one file (its
    header, or Airflow refusing the DAG built from it) becomes that file's broken DAG: this
    never raises, so dags/journeys.py always imports and the other journeys stay.

    A task process parses this file only to run one task of one DAG, and Airflow tells it which
    (`get_parsing_context().dag_id`; the dag-processor and the scheduler leave it unset). Then only
    the segment files that can make that DAG are read and built (0.2-0.3 CPU s saved per task at
    16 journeys, more with every journey added: benchmarks/task_startup.py), and the DAG is the one
    a full parse builds. The dispatcher and the mailbox DAG read every journey: those build all."""
    wanted = dag_id if dag_id is not None else get_parsing_context().dag_id
    if wanted and wanted not in (DISPATCH_DAG_ID, MAILBOX_DAG_ID):
        # A journey's DAG id is its file's name; a broken file's is that name made safe. Any file
        # could be the DAG's, so each is read in the order a full parse reads them.
        paths = [path for path in discover(segments_dir) if broken_dag_id(path) == wanted]
        specs, errors = load_all(segments_dir, paths=paths)
        dags = _journey_dags(specs, errors)
        _add_broken_dags(dags, errors)
        if wanted in dags:
            return {wanted: dags[wanted]}
    return _all_dags(segments_dir)


def _all_dags(segments_dir: Path) -> dict[str, DAG]:
    specs, errors = load_all(segments_dir)
    dags = _journey_dags(specs, errors)
    # a draft never delivers, not even messages it left planned while it was live
    built = [spec for spec in specs if spec.journey in dags and spec.status == "live"]
    if built:
        try:
            dags[DISPATCH_DAG_ID] = build_dispatch_dag(built)
        except Exception:
            log.exception("the %s DAG could not be built; the journeys' own runs still send", DISPATCH_DAG_ID)
    if settings().maildir:  # the return mailbox: only where one is configured
        try:
            dags[MAILBOX_DAG_ID] = build_mailbox_dag()
        except Exception:
            log.exception("the %s DAG could not be built", MAILBOX_DAG_ID)
    _add_broken_dags(dags, errors)
    return dags


def _journey_dags(specs: list[JourneySpec], errors: list[SpecError]) -> dict[str, DAG]:
    """The journeys' DAGs; a spec Airflow refuses joins `errors` (it becomes a broken file's DAG)."""
    dags: dict[str, DAG] = {}
    for spec in specs:
        try:
            dags[spec.journey] = build_journey_dag(spec)
        except Exception as exc:
            errors.append(SpecError(spec.path, [f"Airflow refused the DAG: {type(exc).__name__}: {exc}"])
                          .remember_header({"schedule": spec.schedule, "owner": spec.owner,
                                            "start_date": spec.start_date}))
    return dags


def _add_broken_dags(dags: dict[str, DAG], errors: list[SpecError]) -> None:
    for error in errors:
        log.error("segment file %s is broken: %s", error.path, "; ".join(error.problems))
        try:
            dags.setdefault(broken_dag_id(error.path), build_broken_dag(error))
        except Exception:
            log.exception("segment file %s: not even its broken stand-in DAG could be built", error.path)
