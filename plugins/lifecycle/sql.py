"""SQL from files: the analysts' (bound parameters only, errors that name the file) and the
engine's own static statements (`query`)."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from lifecycle.config import CONDITIONS_DIR, SQL_DIR
from lifecycle.spec import bind_names, file_params

# The engine's static statements, one per file next to the migrations. Modules read theirs once,
# at import, into constants; statements assembled from fragments at run time stay inline.
QUERIES_DIR = SQL_DIR / "lifecycle" / "queries"


def query(name: str) -> str:
    """The text of `include/sql/lifecycle/queries/<name>.sql`. `{name}` placeholders in it are
    SQL fragments the caller fills in with str.format (e.g. an id cast to the shop's type)."""
    return (QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8")


class SegmentSQLError(RuntimeError):
    """SQL from an analyst's file failed in the warehouse."""


def bound(sql: str, values: dict) -> tuple[sa.TextClause, dict]:
    """A text() clause plus only the parameters it uses (extra keys would be rejected by some drivers)."""
    names = bind_names(sql)
    return sa.text(sql), {k: v for k, v in values.items() if k in names}


def execute_file_sql(conn: sa.Connection, source: Path | str, sql: str, values: dict):
    # A parameter the file declares under `params:` in its header and nobody set takes the
    # declared default (a condition's optional filters; a segment's params are always given).
    clause, params = bound(sql, {**file_params(Path(source)), **values})
    try:
        return conn.execute(clause, params)
    except sa.exc.DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise SegmentSQLError(f"{Path(source).name}: the warehouse rejected the SQL: {detail}") from exc
    except sa.exc.StatementError as exc:  # e.g. ':word' inside a string literal read as a parameter
        detail = str(exc.orig or exc).splitlines()[0]
        raise SegmentSQLError(
            f"{Path(source).name}: {detail} (a ':name' inside a quoted string is read as a parameter; "
            "write '\\:name' to keep the colon)"
        ) from exc


def condition_sql(name: str, conditions_dir: Path = CONDITIONS_DIR) -> tuple[Path, str]:
    path = conditions_dir / f"{name}.sql"
    return path, path.read_text(encoding="utf-8").strip().rstrip(";")


# Each enrollment's orders since it entered (after entered_at, before the run's as_of; only the
# orders that count, lifecycle.orders): one row per enrollment and order, the order's columns
# plus enrollment_id. Join `enrollments` on enrollment_id for the context.
ORDERS_SINCE_ENTRY = (
    "orders_since_entry AS (SELECT e.enrollment_id, o.* FROM enrollments e JOIN lifecycle.orders o"
    " ON o.customer_id = e.customer_id AND o.ordered_at > e.entered_at AND o.ordered_at < :as_of)"
)


# Each enrollment's opens and clicks before the run's as_of: human ones we tracked on its own
# messages (message_id set) and the provider's since entry (message_id NULL). See the file.
ENGAGEMENT_SINCE_ENTRY = query("engagement_since_entry").strip()
SHARED_CTES = {"orders_since_entry": ORDERS_SINCE_ENTRY, "engagement_since_entry": ENGAGEMENT_SINCE_ENTRY}


def shared_ctes(condition: str, provider_events: str = "shop.engagement_events") -> str:
    """The CTEs the engine offers a condition besides `enrollments`, as `, name AS (...)`: only
    those it reads (an unread CTE still counts as a reference to `enrollments`, which PostgreSQL
    then materialises instead of inlining). `provider_events`: see lifecycle.ids.provider_events."""
    return "".join(
        f", {cte.replace('{provider_events}', provider_events)}"
        for name, cte in SHARED_CTES.items() if re.search(rf"\b{name}\b", condition)
    )
