"""Plan due steps into lifecycle.messages and cut them into batches for the send tasks.

A message row is the unit of the at-most-once guarantee: its idempotency key
`[dry:]journey:enrollment_key:step:channel` is unique, so planning the same step twice
(a retry, a duplicate run, a backfill) inserts nothing. Only small batch descriptors
leave this module through XCom.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle import channels as registry
from lifecycle import variants
from lifecycle.conditions import materialise_condition
from lifecycle.coupons import collisions_raised, coupon_binds, coupon_cte
from lifecycle.ids import CONSENT, shop_ids, typed_enrollments
from lifecycle.model import Batch, Kind, MessageStatus, Mode
from lifecycle.run_context import RunContext
from lifecycle.spec import Coupon, JourneySpec, Step
from lifecycle.sql import query
from lifecycle.suppression import BLOCKS_TRANSACTIONAL, lift_sunsets, start_sunset

MAX_BATCHES = 256  # far below Airflow's max_map_length (1024) at any segment size
STALE_CLAIM = timedelta(hours=1)
ADVANCE_ENROLLMENTS_SQL = query("advance_enrollments")
# Per channel, how many of this run's planned messages already have a batch (a run plans several
# steps, and its exits, and adopts what was left open): read through messages_open_batches, so it
# costs this run's rows, not the table's.
NUMBERED_SQL = """
    SELECT channel, count(*) AS n FROM lifecycle.messages
     WHERE journey = :journey AND run_id = :run_id AND status = 'planned' AND batch_no IS NOT NULL
     GROUP BY channel
"""


def batch_no_sql(position: str, total: str) -> str:
    """The batch of the message at 0-based `position` among this run's `total` planned messages of
    its channel (numbered ones `nb.n` first): spec.batch_size a batch, more if that would take
    over MAX_BATCHES."""
    size = f"greatest(:batch_size, ceil(({total}) / CAST(:max_batches AS numeric)))"
    return f"((coalesce(nb.n, 0) + {position}) / CAST({size} AS bigint))::int"


# A planned message's batch, numbered as it is inserted: no second pass over the new rows, so no
# plan that depends on statistics the insert just made stale.
INSERT_BATCH_NO_SQL = "CASE WHEN r.status = 'planned' THEN " + batch_no_sql(
    "row_number() OVER open - 1", "coalesce(nb.n, 0) + count(*) OVER (PARTITION BY r.channel, r.status = 'planned')"
) + " END"


def insert_messages(
    conn: sa.Connection,
    spec: JourneySpec,
    run: RunContext,
    candidates: str,
    *,
    step: str,
    template: str | None,
    lateness: timedelta,
    action: str | None = None,
    coupon: Coupon | None = None,
) -> dict[str, int]:
    """Insert one message per candidate row (enrollment_id, enrollment_key, customer_id, holdout,
    due_at, skip_reason, channel); rows whose key exists are left alone. With `coupon`, the same
    statement issues each planned message its code (lifecycle.coupons). Returns how many were
    inserted per status, counted in SQL (a big first day never travels to Python)."""
    with collisions_raised():
        rows = _insert(conn, spec, run, candidates, step, template, lateness, action, coupon)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + r.n
        if r.sunset:
            start_sunset(conn, r.sunset, r.channel, spec.journey, run.as_of)
    return counts


def _insert(conn: sa.Connection, spec: JourneySpec, run: RunContext, candidates: str, step: str,
            template: str | None, lateness: timedelta, action: str | None, coupon: Coupon | None) -> list:
    done = f"'{MessageStatus.DRY_RUN}'" if run.mode == Mode.DRY else f"'{MessageStatus.SENT}'"
    ready = done if action else f"'{MessageStatus.PLANNED}'"  # an action is carried out as it is planned
    sunset = action == "suppress" and run.mode == Mode.LIVE
    return conn.execute(
        sa.text(
            f"""
            WITH ins AS (
            INSERT INTO lifecycle.messages
                (idempotency_key, journey, mode, enrollment_id, customer_id, step, channel, template, kind,
                 status, reason, due_at, planned_for, planned_run_id, run_id, expires_at, batch_no, variant)
            SELECT :prefix || :journey || ':' || r.enrollment_key || ':' || :step || ':' || r.channel,
                   :journey, :mode, r.enrollment_id, r.customer_id, :step, r.channel, :template, :kind,
                   r.status, r.reason, r.due_at, :as_of, :run_id, :run_id, r.due_at + make_interval(secs => :lateness),
                   {INSERT_BATCH_NO_SQL}, {variants.assign_sql(spec, step)}
            FROM (
                SELECT c.*,
                       CASE WHEN c.holdout AND :kind = 'marketing' THEN 'skipped'
                            WHEN c.skip_reason IS NOT NULL THEN 'skipped'
                            WHEN c.due_at + make_interval(secs => :lateness) < :as_of THEN 'expired'
                            ELSE {ready} END AS status,
                       CASE WHEN c.holdout AND :kind = 'marketing' THEN 'holdout'
                            WHEN c.skip_reason IS NOT NULL THEN c.skip_reason
                            WHEN c.due_at + make_interval(secs => :lateness) < :as_of
                                 THEN 'late: due ' || to_char(c.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
                                      || ' UTC, more than ' || :lateness_text || ' before the run'
                            ELSE :action_reason END AS reason
                FROM {candidates} AS c
            ) AS r
            LEFT JOIN ({NUMBERED_SQL}) AS nb ON nb.channel = r.channel
            WINDOW open AS (PARTITION BY r.channel, r.status = 'planned' ORDER BY r.due_at, r.enrollment_id)
            ORDER BY r.enrollment_id
            ON CONFLICT DO NOTHING
            RETURNING journey, mode, enrollment_id, step, customer_id, due_at, status, channel
            ){coupon_cte(coupon, "ins") if coupon else ""}
            -- per status and channel; a sunset step also needs who was suppressed (the day's few)
            SELECT status, channel, count(*) AS n,
                   array_agg(customer_id ORDER BY customer_id) FILTER (WHERE :sunset AND status = 'sent') AS sunset
            FROM ins GROUP BY status, channel
            """
        ),
        {
            **run.binds(),
            "prefix": run.key_prefix,
            "run_id": run.run_id,
            "step": step,
            "template": template,
            "kind": spec.kind,
            "lateness": lateness.total_seconds(),
            "lateness_text": str(lateness),
            "action_reason": f"action: {action}" if action else None,
            "batch_size": spec.batch_size,
            "max_batches": MAX_BATCHES,
            "sunset": sunset,
            **variants.variant_binds(spec, step),
            **(coupon_binds(coupon, run) if coupon else {}),
        },
    ).all()


def reachable_sql(channel: str, kind: str, ids: dict[str, str]) -> str:
    """SQL test (on candidate row `c`) that the customer can receive `channel` right now.
    `ids`: c.customer_id in each contact view's id type (see shop_ids)."""
    address = registry.channel(channel).has_address(ids)
    if kind == Kind.TRANSACTIONAL:  # no consent needed; only an address-level suppression stops it
        reasons = ", ".join(f"'{r}'" for r in BLOCKS_TRANSACTIONAL)
        return (f"{address} AND NOT EXISTS (SELECT 1 FROM lifecycle.suppressions x WHERE x.customer_id = "
                f"c.customer_id AND x.channel = '{channel}' AND x.lifted_at IS NULL AND x.reason IN ({reasons}))")
    return (f"{address} AND EXISTS (SELECT 1 FROM lifecycle.consent k WHERE k.customer_id = {ids[CONSENT]} "
            f"AND k.channel = '{channel}' AND k.opted_in) AND NOT EXISTS (SELECT 1 FROM lifecycle.suppressions x "
            f"WHERE x.customer_id = c.customer_id AND x.channel = '{channel}' AND x.lifted_at IS NULL)")


def choose_channel_sql(channels: tuple[str, ...], kind: str, ids: dict[str, str]) -> str:
    """The first channel of the step the customer can receive; else the first (its send-time
    check then records why it could not go)."""
    if len(channels) == 1:
        return f"'{channels[0]}'"
    whens = " ".join(f"WHEN {reachable_sql(ch, kind, ids)} THEN '{ch}'" for ch in channels)
    return f"CASE {whens} ELSE '{channels[0]}' END"


def _due_candidates(conn: sa.Connection, spec: JourneySpec, run: RunContext, step: Step) -> None:
    """Temp table _due: active enrollments for which `step` is due and not yet planned,
    each with the channel it will go out on (chosen as the table is made: no second pass)."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS _due")
    channel = choose_channel_sql(step.channels, spec.kind, shop_ids(conn))
    conn.execute(
        sa.text(
            f"""
            CREATE TEMP TABLE _due ON COMMIT DROP AS
            SELECT c.enrollment_id, c.enrollment_key, c.customer_id, c.holdout,
                   c.entered_at + make_interval(secs => :after) AS due_at, CAST(NULL AS text) AS skip_reason,
                   CAST({channel} AS text) AS channel
            FROM lifecycle.enrollments c
            WHERE c.journey = :journey AND c.mode = :mode AND c.status = 'active'
              AND c.entered_at <= :as_of - make_interval(secs => :after)  -- enrollments_active's range
              AND NOT EXISTS (SELECT 1 FROM lifecycle.messages m
                              WHERE m.enrollment_id = c.enrollment_id AND m.step = :step)
            """
        ),
        {**run.binds(), "after": step.after.total_seconds(), "step": step.name},
    )


def _apply_step_conditions(conn: sa.Connection, spec: JourneySpec, run: RunContext, step: Step) -> None:
    """Mark candidates whose `when` condition fails (or `unless` holds) with a skip reason."""
    scope = typed_enrollments(conn, "FROM lifecycle.enrollments e JOIN _due USING (enrollment_id)")
    for name, holds_means_skip in ((step.when, False), (step.unless, True)):
        if not name:
            continue
        materialise_condition(conn, name, scope, run.binds(spec), "_cond_hits")
        hit = "EXISTS (SELECT 1 FROM _cond_hits h WHERE h.enrollment_id = _due.enrollment_id)"
        test = hit if holds_means_skip else f"NOT {hit}"
        reason = f"condition {'met' if holds_means_skip else 'not met'}: {name}"
        conn.execute(
            sa.text(f"UPDATE _due SET skip_reason = :reason WHERE skip_reason IS NULL AND {test}"),
            {"reason": reason},
        )


def plan_due_steps(engine: Engine, spec: JourneySpec, run: RunContext) -> dict[str, dict[str, int]]:
    """Insert a message for every step that came due by as_of; return statuses per step."""
    planned = {}
    with engine.begin() as conn:  # a returning customer's sunset ends before channels are chosen
        lift_sunsets(conn, run.as_of)
    variants.decide_winners(engine, spec, run)  # `winner: auto`: a decided test's new messages get the winner
    for step in spec.steps:
        with engine.begin() as conn:
            _due_candidates(conn, spec, run, step)
            if step.when or step.unless:
                _apply_step_conditions(conn, spec, run, step)
            planned[step.name] = insert_messages(
                conn, spec, run, "_due", step=step.name, template=step.template,
                lateness=step.max_lateness, action=step.action, coupon=step.coupon,
            )
    _advance_enrollments(engine, spec, run)
    return planned


def _advance_enrollments(engine: Engine, spec: JourneySpec, run: RunContext) -> None:
    """Record the current/next step of the active enrollments this run can have changed; complete
    those past their last step."""
    with engine.begin() as conn:
        conn.execute(sa.text(ADVANCE_ENROLLMENTS_SQL), {**run.binds(), **step_binds(spec)})


def step_binds(spec: JourneySpec) -> dict:
    """The journey's steps as the SQL of the advance and of progress_sql reads them: arrays in
    header order (1-based in SQL), the last step's name, and how long after entry one completes."""
    return {
        "ords": list(range(len(spec.steps))),
        "names": [s.name for s in spec.steps],
        "afters": [s.after.total_seconds() for s in spec.steps],
        "last_step": spec.steps[-1].name,
        "done_after": (spec.steps[-1].after + spec.complete_after).total_seconds(),
    }


def progress_sql(spec: JourneySpec, entered: str) -> tuple[str, str, str]:
    """A new enrollment's current step, next step and its due time as this run's plan leaves them
    (SQL on the entry time `entered`, with step_binds): plan_due_steps gives every active enrollment
    a message for each step due by as_of, so the current step is the latest of those (the last in
    header order among equal delays, as the advance orders them) and the next is the first step
    not yet due.

    Written by the enrollment's INSERT (enroll.py), they spare the advance a second write of each
    new enrollment: it rewrites only those it finds different (a plan that did not finish; an exit
    in the same run records the step last planned itself). At 1M customers that second write was
    669k rows of ~680 bytes for product_recommendations' first day, 1.0-1.5 GB of WAL when a
    checkpoint had just begun."""
    steps = range(len(spec.steps))
    name = [f"(CAST(:names AS text[]))[{i + 1}]" for i in steps]
    due = [f"{entered} + make_interval(secs => (CAST(:afters AS float8[]))[{i + 1}])" for i in steps]
    latest_first = sorted(steps, key=lambda i: (spec.steps[i].after, i), reverse=True)

    def case(whens) -> str:
        return f"CASE {' '.join(whens)} END"

    return (case(f"WHEN {due[i]} <= :as_of THEN {name[i]}" for i in latest_first),
            case(f"WHEN {due[i]} > :as_of THEN {name[i]}" for i in steps),
            case(f"WHEN {due[i]} > :as_of THEN {due[i]}" for i in steps))


OPEN = """
    journey = :journey AND mode = :mode AND status = 'planned' AND planned_for <= :as_of
    AND (not_before IS NULL OR not_before <= :now)
"""
# The dispatcher only takes messages that were waiting (not_before) or that a run left behind.
LEFT_BEHIND = " AND (not_before IS NOT NULL OR run_id IS NULL OR planned_for < :as_of - interval '1 hour')"


def assign_batches(
    engine: Engine, spec: JourneySpec, run: RunContext, *, only_waiting: bool = False, now: datetime | None = None
) -> list[Batch]:
    """Give this run the journey's open messages, cut into single-channel batches; return
    descriptors {journey, run_id, mode, channel, batch, size}.

    Planned rows left behind by an earlier run that died, and messages whose wait is over
    (an SMS held for the recipient's daytime), are picked up here, so nothing is lost; a row
    is sent only by whoever claims it first (see send.claim_message).
    """
    where = OPEN + (LEFT_BEHIND if only_waiting else "")
    binds = {**run.binds(), "now": now or datetime.now(UTC), "run_id": run.run_id}  # the sender's clock decides
    with engine.begin() as conn:
        _expire_stale_claims(conn, spec, run)
        _retire_removed_channels(conn, spec, run)
        if not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM lifecycle.messages WHERE {where})"),
                            binds).scalar_one():
            return []
        _adopt_open_messages(conn, spec, where, binds)
        rows = conn.execute(
            sa.text(
                "SELECT channel, batch_no, count(*) AS n FROM lifecycle.messages "
                "WHERE journey = :journey AND run_id = :run_id AND status = 'planned' "
                "GROUP BY channel, batch_no ORDER BY channel, batch_no"
            ),
            {**run.binds(), "run_id": run.run_id},
        ).all()
    return [
        Batch(journey=run.journey, run_id=run.run_id, mode=str(run.mode), channel=r.channel,
              batch=r.batch_no, size=r.n, as_of=run.as_of.isoformat())
        for r in rows
    ]


def _adopt_open_messages(conn: sa.Connection, spec: JourneySpec, where: str, binds: dict) -> None:
    """Number into this run's batches, after the ones insert_messages numbered, the open
    messages it did not plan: left behind by a run that died, or whose wait is over."""
    adopt = f"{where} AND (run_id IS DISTINCT FROM :run_id OR batch_no IS NULL)"
    if not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM lifecycle.messages WHERE {adopt})"),
                        binds).scalar_one():
        return
    # With stale statistics (rows just planned) a nested loop here re-runs the numbering per row;
    # hash or merge joins stay linear in the open rows whatever the statistics say. Until commit.
    conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
    conn.execute(
        sa.text(
            f"""
            WITH open AS (
                SELECT message_id, channel, count(*) OVER (PARTITION BY channel) AS n,
                       row_number() OVER (PARTITION BY channel
                                          ORDER BY (kind = 'transactional') DESC, due_at, message_id) - 1 AS rn
                FROM lifecycle.messages WHERE {adopt}
            )
            UPDATE lifecycle.messages m
               SET run_id = :run_id, batch_no = {batch_no_sql("open.rn", "coalesce(nb.n, 0) + open.n")},
                   not_before = NULL, updated_at = now()
              FROM open LEFT JOIN ({NUMBERED_SQL}) AS nb ON nb.channel = open.channel
             WHERE m.message_id = open.message_id AND m.status = 'planned'
            """
        ),
        {**binds, "batch_size": spec.batch_size, "max_batches": MAX_BATCHES},
    )


def by_channel(batches: list[Batch], channels) -> dict[str, list[Batch]]:
    """Descriptors grouped per channel (every channel present, maybe empty): one mapped send
    task per channel, each in its own pool."""
    return {channel: [b for b in batches if b["channel"] == channel] for channel in sorted(channels)}


def _retire_removed_channels(conn: sa.Connection, spec: JourneySpec, run: RunContext) -> None:
    """Planned messages on a channel the journey no longer uses would wait forever: record why."""
    conn.execute(
        sa.text("UPDATE lifecycle.messages SET status = 'skipped', updated_at = now(), "
                "reason = 'channel ' || channel || ' is no longer in the journey' "
                "WHERE journey = :journey AND mode = :mode AND status = 'planned' "
                "AND NOT (channel = ANY(CAST(:channels AS text[])))"),
        {**run.binds(), "channels": sorted(spec.channels)},
    )


def _expire_stale_claims(conn: sa.Connection, spec: JourneySpec, run: RunContext) -> None:
    """A claim older than STALE_CLAIM belongs to a worker that died mid-send: its outcome is
    unknown, so it is recorded as such and never re-sent blindly."""
    conn.execute(
        sa.text(
            """
            UPDATE lifecycle.messages
               SET status = 'failed', updated_at = now(),
                   reason = 'outcome unknown: claimed by run ' || coalesce(run_id, '?') || ' at '
                            || to_char(claimed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC, never confirmed'
             WHERE journey = :journey AND mode = :mode AND status = 'claimed' AND claimed_at < now() - :stale
            """
        ),
        {**run.binds(), "stale": STALE_CLAIM},
    )
