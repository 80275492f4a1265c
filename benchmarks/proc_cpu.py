"""CPU seconds read from /proc, and the load average: what the benchmarks print next to their wall
clocks, which a loaded machine inflates and these do not. Imported by the scripts beside it."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu(pid: int, *, ended_children: bool = False) -> float:
    """CPU seconds (user + system) a process has used; with `ended_children`, also what its
    reaped children used."""
    fields = _stat(pid)
    return sum(int(f) for f in fields[11:15 if ended_children else 13]) / TICK if fields else 0.0


def postgres_cpu(pgdata: Path, process_groups: frozenset[int] | set[int] = frozenset()) -> float:
    """CPU seconds so far of the PostgreSQL server of `pgdata`: the postmaster, its live backends and
    (the postmaster's cutime and cstime) those that have ended, since a connection closed mid-run
    takes its seconds with it; plus every process in one of `process_groups` (other services)."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (fields := _stat(entry.name)) is None:
            continue
        if int(entry.name) == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        elif int(fields[1]) == postmaster or int(fields[2]) in process_groups:  # ppid, pgrp
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
