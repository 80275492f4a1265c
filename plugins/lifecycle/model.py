"""The words lifecycle's tables allow, and the batch descriptor that travels through XCom.

Each StrEnum lists exactly the values of a CHECK constraint in include/sql/lifecycle/
(tests/test_model.py compares them with the constraints of a migrated database, so the two
cannot drift). A StrEnum member is a str: it compares equal to, formats and binds as its value.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypedDict


class Mode(StrEnum):
    """A run's mode (runs, enrollments, messages, ...): a dry run records, never delivers."""

    LIVE = "live"
    DRY = "dry"


class Kind(StrEnum):
    """A journey's kind: marketing needs consent; transactional only stops for BLOCKS_TRANSACTIONAL."""

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class MessageStatus(StrEnum):
    """lifecycle.messages.status: planned -> claimed -> sent | failed, or settled without a send."""

    PLANNED = "planned"
    CLAIMED = "claimed"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUPPRESSED = "suppressed"
    EXPIRED = "expired"
    DRY_RUN = "dry_run"


class EnrollmentStatus(StrEnum):
    """lifecycle.enrollments.status: active until an exit rule, the last step or expiry ends it."""

    ACTIVE = "active"
    CONVERTED = "converted"
    EXITED = "exited"
    COMPLETED = "completed"
    EXPIRED = "expired"


class RunStatus(StrEnum):
    """lifecycle.runs.status: a held run waits for a person (the volume guard)."""

    RUNNING = "running"
    OK = "ok"
    HELD = "held"
    FAILED = "failed"


class EngagementKind(StrEnum):
    """lifecycle.engagement.kind: a request to the open pixel or to the click redirect."""

    OPEN = "open"
    CLICK = "click"


class AgentClass(StrEnum):
    """lifecycle.engagement.agent_class: who fetched the pixel or the link; only HUMAN counts."""

    HUMAN = "human"
    PRIVACY_PROXY = "privacy_proxy"  # Apple Mail Privacy Protection and other prefetchers
    SCANNER = "scanner"              # link scanners, security gateways
    BOT = "bot"


class Batch(TypedDict):
    """One send task's share of a run's messages (plan.assign_batches -> send.send_batch).
    Only this travels through XCom, never the messages: plain JSON values."""

    journey: str
    run_id: str
    mode: str  # a Mode value
    channel: str
    batch: int  # lifecycle.messages.batch_no
    size: int
    as_of: str  # the run's as_of, ISO 8601
