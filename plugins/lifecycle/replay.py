"""Run one interval of a journey in-process, stage by stage: the same calls the DAG's tasks
make, without Airflow. Used by the benchmark and by engine-level tests; production runs go
through the DAGs."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Engine

from lifecycle import plan, run_audit, schema, send, stage, validate
from lifecycle.enroll import enroll
from lifecycle.exits import evaluate_exits
from lifecycle.run_context import RunContext
from lifecycle.spec import JourneySpec


def run_interval(
    engine: Engine,
    spec: JourneySpec,
    start: datetime,
    end: datetime,
    channel_for: Callable[[str], object],
    *,
    run_id: str | None = None,
    mode: str = "live",
    approve_volume: bool = False,
    timings: dict | None = None,
    clock=None,
) -> dict:
    """Returns {'selected', 'valid', 'quarantined', 'enrolled', 'exits', 'messages': {status: n}}."""
    timer = time.perf_counter
    t = timings if timings is not None else {}

    def timed(name, fn, *args, **kwargs):
        t0 = timer()
        try:
            return fn(*args, **kwargs)
        finally:
            t[name] = t.get(name, 0.0) + timer() - t0

    run = RunContext(spec.journey, run_id or f"local__{end.isoformat()}", mode, start, end)
    schema.migrate(engine)
    run_audit.start_run(engine, run)
    selected = timed("stage", stage.stage_segment, engine, spec, run)
    outcome = timed("validate", validate.validate_stage, engine, spec, run, approve_volume=approve_volume)
    enrolled = timed("enroll", enroll, engine, spec, run)
    exits = timed("exits", evaluate_exits, engine, spec, run)
    timed("plan", plan.plan_due_steps, engine, spec, run)
    now = clock() if clock else run.as_of  # a simulation: the run happens at its as_of
    batches = timed("batch", plan.assign_batches, engine, spec, run, now=now)
    sent: Counter[str] = Counter()
    for batch in batches:
        # A simulation: the messages go out at the run's as_of unless the caller says otherwise.
        sent.update(timed("send", send.send_batch, engine, spec, batch, channel_for, dry_run=mode == "dry",
                          clock=clock or (lambda: run.as_of)))
    counts = run_audit.message_counts(engine, run)
    run_audit.finish_run(engine, run, "ok", counts)
    stage.drop_stage(engine, run)
    return {
        "selected": selected,
        "valid": outcome.rows_valid,
        "quarantined": outcome.rows_quarantined,
        "enrolled": enrolled,
        "exits": exits,
        "batches": len(batches),
        "messages": counts,
    }
