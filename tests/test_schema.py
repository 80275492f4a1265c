"""Migrations: every run calls `schema.migrate`, so a database that is already current must cost
one read, never the migration lock (a run must not queue behind another worker's migration);
a database that is behind is still migrated, under the lock."""

from __future__ import annotations

import shutil
import threading

import pytest
import sqlalchemy as sa

from lifecycle import schema
from lifecycle.config import SQL_DIR

LOCK_ID = 7_412_001  # schema._LOCK_ID: the key every migration locks


@pytest.fixture()
def warehouse(scratch_engine):
    schema.create_shop_schema(scratch_engine)  # the contact views read the shop's tables
    return scratch_engine


def migrate_in_background(engine) -> tuple[threading.Thread, list]:
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(schema.migrate(engine)), daemon=True)
    thread.start()
    return thread, outcome


def test_a_current_database_is_recognised_without_waiting_for_the_migration_lock(warehouse):
    assert schema.migrate(warehouse)  # the first call applies everything
    holder = sa.create_engine(warehouse.url)
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_ID})  # another worker migrating
        thread, outcome = migrate_in_background(warehouse)
        thread.join(timeout=10)
        finished_while_locked = not thread.is_alive()
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_ID})
    thread.join(timeout=10)
    holder.dispose()
    assert finished_while_locked, "migrate() on a current database waited for the migration lock"
    assert outcome == [[]]


def test_a_database_behind_is_migrated_and_then_current(warehouse, tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    newest = max(p.name for p in (SQL_DIR / "lifecycle").glob("[0-9][0-9][0-9]_*.sql"))
    for path in (SQL_DIR / "lifecycle").glob("*.sql"):  # the migrations and views, not queries/
        if path.name != newest:
            shutil.copy(path, older / path.name)
    schema.migrate(warehouse, older)
    assert schema.is_current(warehouse, older)
    assert not schema.is_current(warehouse)  # the newest migration is missing

    assert schema.migrate(warehouse) == [newest.removesuffix(".sql")]
    assert schema.is_current(warehouse)
    assert schema.migrate(warehouse) == []


def test_changed_contact_views_are_reapplied(warehouse, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(SQL_DIR / "lifecycle", edited)
    schema.migrate(warehouse, edited)
    contacts = edited / "contacts.sql"
    contacts.write_text(contacts.read_text() + "\nCREATE OR REPLACE VIEW lifecycle.analyst_added AS SELECT 1 AS one;\n")
    assert not schema.is_current(warehouse, edited)

    applied = schema.migrate(warehouse, edited)
    assert [v for v in applied if v.startswith("contacts:")] == applied and len(applied) == 1
    with warehouse.connect() as conn:
        assert conn.execute(sa.text("SELECT one FROM lifecycle.analyst_added")).scalar_one() == 1


def test_a_changed_recommender_is_reapplied_in_place(warehouse, tmp_path):
    """recommender.sql is repeatable: an edit is applied on the next migrate (no new numbered file),
    once, and the functions are re-created with it."""
    edited = tmp_path / "edited"
    shutil.copytree(SQL_DIR / "lifecycle", edited)
    schema.migrate(warehouse, edited)
    recommender = edited / "recommender.sql"
    recommender.write_text(recommender.read_text() + "\nCOMMENT ON FUNCTION lifecycle.in_part(anyelement, integer, "
                           "integer) IS 'edited in place';\n")
    assert not schema.is_current(warehouse, edited)

    applied = schema.migrate(warehouse, edited)
    assert len(applied) == 1 and applied[0].startswith("recommender:")
    assert schema.migrate(warehouse, edited) == []
    with warehouse.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT obj_description('lifecycle.in_part(anyelement, integer, integer)'::regprocedure)")).scalar_one() \
            == "edited in place"
        versions = conn.execute(sa.text(
            "SELECT version FROM lifecycle.schema_migrations WHERE version LIKE 'recommender:%'")).scalars().all()
    assert versions == applied  # the earlier version's row is replaced, not kept beside it
