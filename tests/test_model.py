"""The engine's StrEnums list exactly what the database's CHECK constraints allow: read from
pg_constraint of a migrated database, so a migration that adds a status fails here until the
enum has it too (and the other way round)."""

from __future__ import annotations

import re

import sqlalchemy as sa

from lifecycle import schema
from lifecycle.model import AgentClass, EngagementKind, EnrollmentStatus, Kind, MessageStatus, Mode, RunStatus

# (table, column) -> the enum whose values its CHECK allows; `mode` of any table is Mode.
EXPECTED = {
    ("messages", "kind"): Kind,
    ("messages", "status"): MessageStatus,
    ("enrollments", "status"): EnrollmentStatus,
    ("runs", "status"): RunStatus,
    ("engagement", "kind"): EngagementKind,
    ("engagement", "agent_class"): AgentClass,
}
NOT_ENGINE_WORDS = {("preference_choices", "choice")}  # the unsubscribe page's one choice, 'stay'


def allowed_values(engine) -> dict[tuple[str, str], set[str]]:
    """Every one-column CHECK of the lifecycle schema that lists values: `col IN (...)`, which
    PostgreSQL keeps as `col = ANY (ARRAY[...])`, or `col = 'one'` when the list has one value."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            """
            SELECT c.conrelid::regclass::text AS tbl, a.attname AS col, pg_get_constraintdef(c.oid) AS def
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.contype = 'c' AND c.connamespace = 'lifecycle'::regnamespace AND cardinality(c.conkey) = 1
            ORDER BY 1, 2, c.conname
            """
        )).all()
    found: dict[tuple[str, str], set[str]] = {}
    for table, column, definition in rows:
        if "= ANY (ARRAY[" in definition or re.fullmatch(r"CHECK \(\(\w+ = '[^']*'::text\)\)", definition):
            found[(table.removeprefix("lifecycle."), column)] = set(re.findall(r"'([^']*)'", definition))
    return found


def test_every_enum_equals_its_check_constraint(scratch_engine):
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine)
    checks = allowed_values(scratch_engine)
    modes = {key for key in checks if key[1] == "mode"}
    assert {"runs", "enrollments", "messages"} <= {table for table, _ in modes}
    for key in modes:
        assert checks[key] == set(Mode), key
    for key, enum in EXPECTED.items():
        assert checks[key] == set(enum), key
    assert set(checks) == modes | set(EXPECTED) | NOT_ENGINE_WORDS  # a new enumerated CHECK needs its enum
