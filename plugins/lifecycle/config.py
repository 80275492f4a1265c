"""Where the project's files live and the few settings read from the environment."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

from lifecycle.channels import CHANNELS

# plugins/lifecycle/config.py -> project root (also true inside the Airflow image,
# where plugins/ and include/ are mounted side by side under /opt/airflow).
PROJECT_DIR = Path(os.environ.get("LIFECYCLE_PROJECT_DIR", Path(__file__).resolve().parents[2]))
INCLUDE_DIR = PROJECT_DIR / "include"
SQL_DIR = INCLUDE_DIR / "sql"
SEGMENTS_DIR = SQL_DIR / "segments"
CONDITIONS_DIR = SQL_DIR / "conditions"
TEMPLATES_DIR = INCLUDE_DIR / "templates"

# Local state for the embedded warehouse and the demo (git-ignored).
STATE_DIR = Path(os.environ.get("LIFECYCLE_STATE_DIR", PROJECT_DIR / ".lifecycle"))

WAREHOUSE_CONN_ID = os.environ.get("LIFECYCLE_WAREHOUSE_CONN_ID", "lifecycle_warehouse")
SMTP_CONN_ID = os.environ.get("LIFECYCLE_SMTP_CONN_ID", "lifecycle_smtp")

# Shown in every email footer and used to build links; override per deployment.
SHOP = {
    "name": os.environ.get("LIFECYCLE_SHOP_NAME", "Northwind Goods"),
    "base_url": os.environ.get("LIFECYCLE_SHOP_URL", "https://shop.example.com"),
    "address": os.environ.get("LIFECYCLE_SHOP_ADDRESS", "Northwind Goods Ltd, 12 Harbour Street, Bristol BS1 4RN, UK"),
    "from_email": os.environ.get("LIFECYCLE_FROM_EMAIL", "hello@shop.example.com"),
    "support_email": os.environ.get("LIFECYCLE_SUPPORT_EMAIL", "help@shop.example.com"),
}


def frequency_caps() -> dict[str, tuple[int, timedelta]]:
    """LIFECYCLE_FREQUENCY_CAPS, e.g. "email=2/1d, sms=1/1d, push=3/7d": at most N marketing
    messages per customer on that channel in the rolling window, across all journeys.
    Unset or empty: no cap. Read at send time, so a change applies to the next batch."""
    text = os.environ.get("LIFECYCLE_FREQUENCY_CAPS", "").strip()
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
