"""One journey run = one data interval: its identity, its bound parameters, its XCom form.

Its audit row in lifecycle.runs is lifecycle.run_audit."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime

from lifecycle.config import SHOP
from lifecycle.model import Mode
from lifecycle.spec import JourneySpec


@dataclass(frozen=True)
class RunContext:
    journey: str
    run_id: str
    mode: Mode
    interval_start: datetime
    interval_end: datetime

    @property
    def as_of(self) -> datetime:
        """The run's 'now': segments and conditions never look past it (backfills replay exactly)."""
        return self.interval_end

    @property
    def key_prefix(self) -> str:
        return "dry:" if self.mode == Mode.DRY else ""

    @property
    def short_id(self) -> str:
        return hashlib.sha1(f"{self.journey}|{self.mode}|{self.run_id}".encode()).hexdigest()[:12]

    def binds(self, spec: JourneySpec | None = None) -> dict:
        base = {
            "interval_start": self.interval_start,
            "interval_end": self.interval_end,
            "as_of": self.as_of,
            "journey": self.journey,
            "mode": self.mode,
            "shop_url": SHOP["base_url"],
            "part": 0,  # a segment with `parts:` is staged part by part (stage.py); otherwise all of it
            "parts": 1,
        }
        if spec is not None and spec.offers:  # holiday-dated offers around as_of (lifecycle.offers)
            from lifecycle.offers import offers_json

            base["offers"] = offers_json(spec.offers, self.as_of)
        return {**(spec.params if spec else {}), **base}

    def to_xcom(self) -> dict:
        d = asdict(self)
        d["interval_start"], d["interval_end"] = self.interval_start.isoformat(), self.interval_end.isoformat()
        d["mode"] = str(self.mode)  # XCom carries plain JSON
        return d

    @classmethod
    def from_xcom(cls, d: dict) -> RunContext:
        return cls(
            journey=d["journey"],
            run_id=d["run_id"],
            mode=Mode(d["mode"]),
            interval_start=datetime.fromisoformat(d["interval_start"]),
            interval_end=datetime.fromisoformat(d["interval_end"]),
        )
