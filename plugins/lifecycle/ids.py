"""External ids (customers, orders, products): text in `lifecycle`, the shop's own type in the shop.

The engine stores every warehouse id as text, so a shop whose ids are hex strings, `#1001` or
UUIDs works as well as one with integers. Where lifecycle rows meet the shop (the contact
views, the `enrollments` CTE in front of each condition) the lifecycle side is cast to the
shop's type, read from the catalog: `o.customer_id = e.customer_id` then compares bigint with
bigint on an integer shop (the shop's index stays usable) and text with text on a text shop.
"""

from __future__ import annotations

import sqlalchemy as sa

CONTACTS = "lifecycle.contacts"
CONSENT = "lifecycle.consent"
PUSH_SUBSCRIPTIONS = "lifecycle.push_subscriptions"
# The provider's delivery/open/click export. Optional in the shop contract (a shop may track only
# through us): where it is missing, the engine reads an empty relation of the same shape instead.
PROVIDER_EVENTS = "shop.engagement_events"


def column_type(conn: sa.Connection, relation: str, column: str = "customer_id") -> str:
    """The SQL type of `relation.column` as PostgreSQL spells it (`bigint`, `text`, `uuid`, ...);
    `text` when the relation or column does not exist."""
    found = conn.execute(
        sa.text(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(:relation) AND a.attname = :column AND NOT a.attisdropped"
        ),
        {"relation": relation, "column": column},
    ).scalar()
    return found or "text"


def as_type(expression: str, sql_type: str) -> str:
    """`expression` (a text id from lifecycle) in the shop's `sql_type`."""
    return expression if sql_type == "text" else f"CAST({expression} AS {sql_type})"


def shop_id(conn: sa.Connection, expression: str, relation: str = CONTACTS) -> str:
    """`expression` cast to the type of `relation.customer_id` (the contacts view by default)."""
    return as_type(expression, column_type(conn, relation))


def shop_ids(conn: sa.Connection, expression: str = "c.customer_id") -> dict[str, str]:
    """`expression` (a lifecycle text id) cast to each contact view's customer_id type, keyed by
    view: lookups compare like with like and use the warehouse's indexes."""
    return {view: shop_id(conn, expression, view) for view in (CONTACTS, CONSENT, PUSH_SUBSCRIPTIONS)}


def typed_enrollments(conn: sa.Connection, from_where: str) -> str:
    """A SELECT of `lifecycle.enrollments e` rows (`from_where` starts with FROM) whose
    customer_id has the shop's type (that of lifecycle.contacts.customer_id): the `enrollments`
    CTE that conditions join to shop tables."""
    shop_type = column_type(conn, CONTACTS)
    if shop_type == "text":
        return f"SELECT e.* {from_where}"
    columns = conn.execute(
        sa.text(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'lifecycle.enrollments'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
    ).scalars().all()
    select = ", ".join(
        f"{as_type('e.customer_id', shop_type)} AS customer_id" if name == "customer_id" else f"e.{name}"
        for name in columns
    )
    return f"SELECT {select} {from_where}"


def provider_events(conn: sa.Connection) -> str:
    """What the engine's SQL reads as the provider's engagement events: `shop.engagement_events`,
    or, in a warehouse without it, an empty relation with its columns (customer_id in the
    contacts' type), so rules that also count the provider's opens and clicks still run."""
    if conn.execute(sa.text("SELECT to_regclass(:relation) IS NOT NULL"), {"relation": PROVIDER_EVENTS}).scalar():
        return PROVIDER_EVENTS
    return (
        f"(SELECT CAST(NULL AS {column_type(conn, CONTACTS)}) AS customer_id, CAST(NULL AS text) AS message_id,"
        " CAST(NULL AS text) AS channel, CAST(NULL AS text) AS event, CAST(NULL AS timestamptz) AS occurred_at"
        " WHERE false)"
    )
