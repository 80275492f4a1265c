"""Where the project's files live, and the settings the engine reads from the environment.

Every LIFECYCLE_* variable is read here, into one frozen `Settings` (see `settings()`); the other
modules ask it rather than `os.environ`, so what can be configured is listed in one place."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from lifecycle.channels import CHANNELS

_DEFAULT_PROJECT_DIR = Path(__file__).resolve().parents[2]  # plugins/lifecycle/config.py -> project root


@dataclass(frozen=True)
class Settings:
    """The engine's configuration, as the environment gives it (variable: default)."""

    # LIFECYCLE_PROJECT_DIR: where include/ is (inside the Airflow image, plugins/ and include/
    # are mounted side by side under /opt/airflow)
    project_dir: Path
    state_dir: Path  # LIFECYCLE_STATE_DIR: the embedded warehouse and the demo (git-ignored)
    warehouse_conn_id: str  # LIFECYCLE_WAREHOUSE_CONN_ID: lifecycle_warehouse (and _SMTP_, _SMS_, ...)
    smtp_conn_id: str
    sms_conn_id: str
    push_conn_id: str
    meta_conn_id: str
    shop: Mapping[str, str]  # LIFECYCLE_SHOP_NAME, _SHOP_URL, ...: every email footer and link
    signing_key: str  # LIFECYCLE_SIGNING_KEY: checked where it is used (links.signing_key)
    frequency_caps: str  # LIFECYCLE_FREQUENCY_CAPS, parsed by frequency_caps()
    clock: str  # LIFECYCLE_CLOCK: "as_of" replays the past as if each run had happened on time
    maildir: str  # LIFECYCLE_MAILDIR: the return mailbox (no mailbox DAG when empty)
    push_allow_private: bool  # LIFECYCLE_PUSH_ALLOW_PRIVATE: a local push service (tests, demo)
    send_window: int  # LIFECYCLE_SEND_WINDOW: messages claimed per statement when sending (default 50)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def get(name: str, default: str = "") -> str:
            return environ.get(f"LIFECYCLE_{name}", default)

        project_dir = Path(get("PROJECT_DIR") or _DEFAULT_PROJECT_DIR)
        return cls(
            project_dir=project_dir,
            state_dir=Path(get("STATE_DIR") or project_dir / ".lifecycle"),
            warehouse_conn_id=get("WAREHOUSE_CONN_ID", "lifecycle_warehouse"),
            smtp_conn_id=get("SMTP_CONN_ID", "lifecycle_smtp"),
            sms_conn_id=get("SMS_CONN_ID", "lifecycle_sms"),
            push_conn_id=get("PUSH_CONN_ID", "lifecycle_push"),
            meta_conn_id=get("META_CONN_ID", "lifecycle_meta"),
            shop=MappingProxyType({
                "name": get("SHOP_NAME", "Northwind Goods"),
                "base_url": get("SHOP_URL", "https://shop.example.com"),
                "address": get("SHOP_ADDRESS", "Northwind Goods Ltd, 12 Harbour Street, Bristol BS1 4RN, UK"),
                "from_email": get("FROM_EMAIL", "hello@shop.example.com"),
                "support_email": get("SUPPORT_EMAIL", "help@shop.example.com"),
            }),
            signing_key=get("SIGNING_KEY"),
            frequency_caps=get("FREQUENCY_CAPS"),
            clock=get("CLOCK"),
            maildir=get("MAILDIR"),
            push_allow_private=get("PUSH_ALLOW_PRIVATE").strip().lower() in ("1", "true", "yes"),
            send_window=_whole_number("SEND_WINDOW", get("SEND_WINDOW", "50"), 1, 1000),
        )


def _whole_number(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"LIFECYCLE_{name} must be a whole number from {low} to {high}, got {text!r}")
    return value


def settings() -> Settings:
    """The settings of this process's environment. Parsed once: a process's environment does
    not change, and a test that sets a variable gets new settings at the next call (the cache
    is keyed by the LIFECYCLE_* variables, so no cache has to be cleared)."""
    return _parsed(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("LIFECYCLE_"))))


@functools.lru_cache(maxsize=8)
def _parsed(variables: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_environ(dict(variables))


# Read once, at import (a deployment sets them before Airflow starts).
PROJECT_DIR = settings().project_dir
INCLUDE_DIR = PROJECT_DIR / "include"
SQL_DIR = INCLUDE_DIR / "sql"
SEGMENTS_DIR = SQL_DIR / "segments"
CONDITIONS_DIR = SQL_DIR / "conditions"
TEMPLATES_DIR = INCLUDE_DIR / "templates"

WAREHOUSE_CONN_ID = settings().warehouse_conn_id
SMTP_CONN_ID = settings().smtp_conn_id

# Shown in every email footer and used to build links; override per deployment.
SHOP = dict(settings().shop)


def frequency_caps() -> dict[str, tuple[int, timedelta]]:
    """LIFECYCLE_FREQUENCY_CAPS, e.g. "email=2/1d, sms=1/1d, push=3/7d": at most N marketing
    messages per customer on that channel in the rolling window, across all journeys.
    Unset or empty: no cap. Read at send time, so a change applies to the next batch."""
    text = settings().frequency_caps.strip()
    caps: dict[str, tuple[int, timedelta]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _CAP.match(part)
        if not match or match["channel"] not in CHANNELS:
            raise ValueError(f"LIFECYCLE_FREQUENCY_CAPS: {part!r} is not <{'|'.join(CHANNELS)}>=<count>/<window> "
                             "(window like 12h, 1d, 1w)")
        seconds = int(match["n"]) * {"h": 3600, "d": 86400, "w": 604800}[match["unit"]]
        caps[match["channel"]] = (int(match["count"]), timedelta(seconds=seconds))
    return caps


_CAP = re.compile(r"^(?P<channel>[a-z]+)\s*=\s*(?P<count>\d+)\s*/\s*(?P<n>\d+)\s*(?P<unit>[hdw])$")
