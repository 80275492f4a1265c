"""Create and migrate the warehouse schemas the engine needs.

`include/sql/lifecycle/NNN_*.sql` files run once each, in order, recorded in
lifecycle.schema_migrations; the repeatable files (`recommender.sql`, the warehouse recommender's
functions, and `contacts.sql`, views analysts adapt) are re-applied each time they change, after
the numbered ones: a change to them is an edit in place, not a copy in a new migration. A
transaction-scoped advisory lock makes concurrent migrations safe; a database that is already
current is recognised by one read without the lock (every run calls `migrate`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifecycle.config import SQL_DIR

_MIGRATION = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_ID = 7_412_001  # arbitrary, fixed: serialises migrations across workers


class MigrationError(RuntimeError):
    """A migration file the warehouse rejected: names the file; the transaction is rolled back."""


def _apply(conn: sa.Connection, name: str, sql: str) -> None:
    """Run one migration file's SQL; the warehouse's refusal names the file."""
    try:
        run_script(conn, sql)
    except Exception as exc:
        detail = str(getattr(exc, "pgerror", None) or exc).strip().splitlines()[0]
        hint = (" (contacts.sql's views read your own tables: point them at the warehouse's tables,"
                " README 'Who is reachable')" if name == "contacts.sql" and "does not exist" in detail else "")
        raise MigrationError(f"{name}: the warehouse rejected it: {detail}{hint}; "
                             "nothing was applied (one transaction)") from exc


def run_script(conn: sa.Connection, sql: str) -> None:
    """Run a multi-statement script in one round trip, with no parameter parsing
    (so a literal % or :name in the SQL is left alone)."""
    with conn.connection.cursor() as cursor:
        cursor.execute(sql)


def _run_script(conn: sa.Connection, path: Path) -> None:
    run_script(conn, path.read_text())


def create_shop_schema(engine: Engine) -> None:
    """The demo shop's tables (idempotent)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
        _run_script(conn, SQL_DIR / "shop" / "schema.sql")


# Re-applied whenever their text changes, in this order, after the numbered migrations; each is
# recorded as '<stem>:<content hash>'. CREATE OR REPLACE keeps them safe to run again.
REPEATABLE = ("recommender.sql", "contacts.sql")


def _repeatables(sql_dir: Path) -> list[tuple[str, str, str]]:
    """Each repeatable file the folder has (an older release's folder may lack one): its name, its
    text and the version it is recorded under ('<stem>:<content hash>')."""
    found = []
    for name in REPEATABLE:
        if (sql_dir / name).is_file():
            text = (sql_dir / name).read_text()
            found.append((name, text, f"{Path(name).stem}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"))
    return found


def _migrations(sql_dir: Path) -> list[Path]:
    return sorted(p for p in sql_dir.iterdir() if _MIGRATION.match(p.name))


def is_current(engine: Engine, sql_dir: Path = SQL_DIR / "lifecycle") -> bool:
    """Whether every migration and the current repeatable files are recorded: one read, no lock,
    so that the per-run `migrate` costs a single query once a database is up to date."""
    wanted = {p.stem for p in _migrations(sql_dir)} | {version for _, _, version in _repeatables(sql_dir)}
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('lifecycle.schema_migrations')")).scalar() is None:
            return False
        done = set(conn.execute(sa.text("SELECT version FROM lifecycle.schema_migrations")).scalars())
    return wanted <= done


def migrate(engine: Engine, sql_dir: Path = SQL_DIR / "lifecycle") -> list[str]:
    """Apply pending migrations and refresh the contact views; return what was applied."""
    if is_current(engine, sql_dir):
        return []
    applied = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_ID})
        conn.exec_driver_sql(
            # lifecycle_stage is created here, under the lock: concurrent CREATE SCHEMA IF NOT
            # EXISTS from parallel runs' staging transactions can fail with a unique violation.
            "CREATE SCHEMA IF NOT EXISTS lifecycle; CREATE SCHEMA IF NOT EXISTS lifecycle_stage;"
            "CREATE TABLE IF NOT EXISTS lifecycle.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = set(conn.execute(sa.text("SELECT version FROM lifecycle.schema_migrations")).scalars())
        for path in _migrations(sql_dir):
            if path.stem in done:
                continue
            _apply(conn, path.name, path.read_text())
            conn.execute(sa.text("INSERT INTO lifecycle.schema_migrations (version) VALUES (:v)"), {"v": path.stem})
            applied.append(path.stem)
        # A repeatable file is re-applied only when it changed: contacts.sql's CREATE OR REPLACE VIEW
        # takes an exclusive lock that would queue every run behind any open reader.
        for name, text, version in _repeatables(sql_dir):
            if version in done:
                continue
            _apply(conn, name, text)
            conn.execute(sa.text("DELETE FROM lifecycle.schema_migrations WHERE version LIKE :earlier"),
                         {"earlier": version.partition(":")[0] + ":%"})  # the file's earlier version
            conn.execute(sa.text("INSERT INTO lifecycle.schema_migrations (version) VALUES (:v)"), {"v": version})
            applied.append(version)
    return applied
