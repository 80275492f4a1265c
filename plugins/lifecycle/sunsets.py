"""Sunsets that end: a journey's `action: suppress` writes a 'no_response' suppression (we stop
mailing someone who stopped reading). It must not outlive the customer's silence: it is lifted
when they come back, i.e. place a non-cancelled order, or click a link on that channel, after the
sunset began and before the run's as_of (so a backfill replays the past), or choose "keep me
subscribed" (the unsubscribe service lifts it at once, see `lift_for_stay_choice`).

Lifting closes the row (lifted_at = the moment they came back, lifted_reason, lifted_ref) and
keeps it as history; a later sunset is a new row. Only 'no_response' is ever lifted: an
unsubscribe, a hard bounce, a complaint or a provider opt-out stays until a person removes it.

`lift_sunsets` runs at the start of planning (channel choice reads suppressions) and of every
send batch's send-time checks (so a run, a retry and the dispatcher all see it before sending).
It is set-based, idempotent and visits only active sunsets (a partial index).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

LIFTABLE = ("no_response",)  # the only reason a customer's return lifts

# For each active sunset (of the given customers), the first sign of life after it began and
# before :as_of. Set-based joins, not a per-row lookup: a warehouse's click table may have no
# index on the customer. Lifecycle ids are text: they are cast to the shop's id type, so the
# shop's indexes stay usable (see lifecycle.ids). Ties (an order and a click at the same instant) go to the order, then
# the smaller reference. Rows are locked in suppression_id order, so that parallel send batches
# lifting the same rows wait for each other, never deadlock.
LIFT_SQL = """
WITH sunsets AS (
    SELECT s.suppression_id, s.customer_id, s.channel, s.since
    FROM lifecycle.suppressions s
    WHERE s.reason = ANY(CAST(:liftable AS text[])) AND s.lifted_at IS NULL
      AND (CAST(:customer_ids AS text[]) IS NULL OR s.customer_id = ANY(CAST(:customer_ids AS text[])))
), signs_of_life AS (
    -- an order that counts (lifecycle.orders: not cancelled)
    SELECT su.suppression_id, o.ordered_at AS at, 'ordered' AS why, CAST(o.order_id AS text) AS ref, 1 AS rank
    FROM sunsets su
    JOIN lifecycle.orders o
      ON o.customer_id = {order_customer} AND o.ordered_at >= su.since AND o.ordered_at < :as_of
    UNION ALL
    -- a click on the sunset's channel (provider events; per-message tracking may add the message id)
    SELECT su.suppression_id, ev.occurred_at, 'clicked',
           coalesce('message ' || ev.message_id, 'click at ' || CAST(ev.occurred_at AS text)), 2
    FROM sunsets su
    JOIN shop.engagement_events ev
      ON ev.customer_id = {event_customer} AND ev.channel = su.channel
     AND ev.occurred_at >= su.since AND ev.occurred_at < :as_of
    WHERE ev.event = 'click'
), comeback AS (
    SELECT DISTINCT ON (suppression_id) suppression_id, at, why, ref
    FROM signs_of_life
    ORDER BY suppression_id, at, rank, ref
), locked AS (
    SELECT s.suppression_id
    FROM lifecycle.suppressions s
    WHERE s.suppression_id IN (SELECT suppression_id FROM comeback) AND s.lifted_at IS NULL
    ORDER BY s.suppression_id
    FOR UPDATE
)
UPDATE lifecycle.suppressions s
   SET lifted_at = c.at, lifted_reason = c.why, lifted_ref = c.ref
  FROM comeback c
 WHERE s.suppression_id = c.suppression_id AND s.lifted_at IS NULL
   AND s.suppression_id IN (SELECT suppression_id FROM locked)
"""


def lift_sunsets(conn: sa.Connection, as_of: datetime, customer_ids: Sequence[str | int] | None = None) -> int:
    """Lift every active sunset whose customer came back before `as_of` (only those of
    `customer_ids` when given, e.g. one send batch's recipients); return how many."""
    from lifecycle.ids import as_type, column_type

    if customer_ids is not None and not customer_ids:
        return 0
    sql = LIFT_SQL.format(
        order_customer=as_type("su.customer_id", column_type(conn, "lifecycle.orders")),
        event_customer=as_type("su.customer_id", column_type(conn, "shop.engagement_events")),
    )
    return conn.execute(
        sa.text(sql),
        {"as_of": as_of, "liftable": list(LIFTABLE),
         "customer_ids": sorted({str(c) for c in customer_ids}) if customer_ids is not None else None},
    ).rowcount


def lift_for_stay_choice(conn: sa.Connection, customer_id: str, channel: str, choice_id: int,
                         chosen_at: datetime) -> int:
    """"Keep me subscribed": lift the customer's active sunset on `channel` if it began before the
    choice (a sunset written after it is a newer decision and stays)."""
    return conn.execute(
        sa.text(
            """
            UPDATE lifecycle.suppressions
               SET lifted_at = :at, lifted_reason = 'chose_to_stay', lifted_ref = 'choice ' || :choice_id
             WHERE customer_id = :customer_id AND channel = :channel AND lifted_at IS NULL
               AND reason = ANY(CAST(:liftable AS text[])) AND since <= :at
            """
        ),
        {"at": chosen_at, "choice_id": str(choice_id), "customer_id": str(customer_id), "channel": channel,
         "liftable": list(LIFTABLE)},
    ).rowcount
