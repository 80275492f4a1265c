"""Who may receive what: the suppression rules, and the rows of lifecycle.suppressions that
carry them (one active row per customer and channel).

Which reasons stop what. A marketing message needs no active suppression at all on its channel;
a transactional one (an order confirmation) is stopped only by a reason in BLOCKS_TRANSACTIONAL
(the address is unusable, or its owner reported us as spam). The send-time checks (lifecycle.send)
and the planner's channel choice (lifecycle.plan) both read these rules from here.

Sunsets that end: a journey's `action: suppress` writes a 'no_response' suppression (we stop
mailing someone who stopped reading). It must not outlive the customer's silence: it is lifted
when they come back, i.e. place a non-cancelled order, or click a link on that channel, after the
sunset began and before the run's as_of (so a backfill replays the past), or choose "keep me
subscribed" (the web service lifts it at once, see `lift_for_stay_choice`). A click counts from
either source: our own tracking (lifecycle.engagement, human rows only: a link scanner or an
Apple MPP prefetch is not the customer coming back; lifted_ref names our message) or the
provider's events (shop.engagement_events).

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

from lifecycle.channels import blocks_transactional
from lifecycle.ids import CONTACTS, PROVIDER_EVENTS, as_type, column_type, provider_events
from lifecycle.sql import query

# Suppression reasons that stop transactional messages (order confirmations, shipping notices)
# too: the address itself is unusable or its owner reported us as spam. Every other reason
# (unsubscribe, a journey's no_response sunset, ...) is a marketing opt-out only. Each channel
# names its own (Channel.blocks_transactional: email hard_bounce, complaint; SMS provider_opt_out,
# a carrier-level STOP that refuses every text from our number anyway).
BLOCKS_TRANSACTIONAL = blocks_transactional()
LIFTABLE = ("no_response",)  # the only reason a customer's return lifts
LIFT_SQL = query("lift_sunsets")  # a customer's first sign of life after each active sunset


def record_suppression(conn: sa.Connection, customer_id: str, channel: str, reason: str, source: str) -> bool:
    """One suppression per (customer, channel). A blocking reason (hard bounce, complaint) replaces
    a marketing-only one (say, of an order confirmation to someone who had unsubscribed): otherwise
    it would be lost and transactional mail would keep going to a dead address. True when written."""
    return conn.execute(
        sa.text(
            "INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source) "
            "VALUES (:c, :ch, :r, :src) ON CONFLICT (customer_id, channel) WHERE lifted_at IS NULL DO UPDATE "
            "SET reason = EXCLUDED.reason, source = EXCLUDED.source, since = now() "
            "WHERE EXCLUDED.reason = ANY(CAST(:blocking AS text[])) "
            "AND lifecycle.suppressions.reason <> ALL(CAST(:blocking AS text[]))"
        ),
        {"c": customer_id, "ch": channel, "r": reason, "src": source, "blocking": list(BLOCKS_TRANSACTIONAL)},
    ).rowcount == 1


# An unsubscribe outranks a sunset: close the active no_response row (kept as history), so
# that an order, which lifts sunsets, can never lift the customer's unsubscribe with it.
SUPERSEDE_SUNSET_SQL = sa.text(
    """
    UPDATE lifecycle.suppressions
       SET lifted_at = now(), lifted_reason = 'superseded', lifted_ref = 'unsubscribe'
     WHERE customer_id = :customer_id AND channel = :channel AND lifted_at IS NULL
       AND reason = ANY(CAST(:liftable AS text[]))
    """
)
SUPPRESS_SQL = sa.text(
    """
    INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source)
    VALUES (:customer_id, :channel, 'unsubscribe', :source)
    ON CONFLICT (customer_id, channel) WHERE lifted_at IS NULL DO NOTHING
    """
)


def record_unsubscribe(conn: sa.Connection, customer_id: str, channel: str, source: str) -> bool:
    """Suppress `channel` for the customer (the link, one-click, or the mailbox's mailto);
    True when this made a new suppression, False when one was already active."""
    subject = {"customer_id": str(customer_id), "channel": channel}
    conn.execute(SUPERSEDE_SUNSET_SQL, {**subject, "liftable": list(LIFTABLE)})
    return conn.execute(SUPPRESS_SQL, {**subject, "source": source}).rowcount == 1


def start_sunset(conn: sa.Connection, customer_ids: list[str], channel: str, journey: str, as_of: datetime) -> None:
    """A sunset ('no_response') of `journey`, dated the run's as_of: an order or click after it
    lifts it (lift_sunsets), also in a replay of the past. An active suppression is left as it is."""
    if customer_ids:
        conn.execute(
            sa.text(
                """
                INSERT INTO lifecycle.suppressions (customer_id, channel, reason, source, since)
                SELECT unnest(CAST(:ids AS text[])), :channel, 'no_response', :journey, :as_of
                ON CONFLICT (customer_id, channel) WHERE lifted_at IS NULL DO NOTHING
                """
            ),
            {"ids": customer_ids, "channel": channel, "journey": journey, "as_of": as_of},
        )


def lift_sunsets(conn: sa.Connection, as_of: datetime, customer_ids: Sequence[str | int] | None = None) -> int:
    """Lift every active sunset whose customer came back before `as_of` (only those of
    `customer_ids` when given, e.g. one send batch's recipients); return how many."""
    if customer_ids is not None and not customer_ids:
        return 0
    events = provider_events(conn)
    sql = LIFT_SQL.format(
        order_customer=as_type("su.customer_id", column_type(conn, "lifecycle.orders")),
        event_customer=as_type("su.customer_id", column_type(conn, events if events == PROVIDER_EVENTS else CONTACTS)),
        provider_events=events,
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
