"""Run one benchmark and stop every server it started, however it ends (`make bench` uses it).

    .venv/bin/python benchmarks/supervise.py .venv/bin/python benchmarks/<script>.py [args]

The benchmark runs in a session of its own with TMPDIR set to a fresh directory, so every
temp dir it makes (embedded PostgreSQL data dirs, outboxes, Airflow homes) is under it.
Ctrl-C or SIGTERM is passed on to the benchmark as Ctrl-C, so its own cleanup runs first.
Whatever it leaves behind is then stopped here:

- its process group (SMTP sinks, worker processes): SIGTERM, then SIGKILL;
- every PostgreSQL whose data dir is under that TMPDIR: `pg_ctl` starts the postmaster in a
  session of its own (so a Ctrl-C in the terminal never reaches it), which is how a killed
  benchmark used to leave one running with its data dir deleted. It gets SIGINT (fast
  shutdown), then SIGQUIT, then SIGKILL, read from its postmaster.pid;
- every other process that inherited that TMPDIR, wherever its session (an Airflow
  scheduler, api-server or dag-processor started with a session of its own, and their tasks):
  SIGTERM, then SIGKILL;

and the directory is removed. The exit status is the benchmark's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def stop_group(pgid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def postmasters(root: Path) -> list[tuple[int, Path]]:
    """(pid, data dir) of each PostgreSQL still running on a data dir under `root`."""
    found = []
    for pidfile in root.rglob("postmaster.pid"):
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if str(pidfile.parent) in cmdline:  # the pid is that server, not a reused pid
            found.append((pid, pidfile.parent))
    return found


def stop_postmasters(root: Path) -> list[Path]:
    stopped = []
    for pid, data_dir in postmasters(root):
        for sig, grace in ((signal.SIGINT, 20), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, grace):
                break
        stopped.append(data_dir)
    return stopped


def marked(root: Path) -> list[int]:
    """Processes (not this one) whose environment has TMPDIR=root: the benchmark's descendants."""
    mark, found = f"TMPDIR={root}".encode(), []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0") and int(environ.parent.name) != os.getpid():
                found.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return found


def stop_marked(root: Path) -> int:
    pids = marked(root)
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pids:
            break
    return len(pids)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="lcb-", dir="/tmp"))  # short: socket paths live in data dirs
    interrupted, child = [], None

    def forward(signum, _frame) -> None:
        interrupted.append(signum)
        try:
            if child is not None:
                os.killpg(child.pid, signal.SIGINT)  # the benchmark's own cleanup runs first
        except ProcessLookupError:
            pass

    # Handled (not ignored) before the child starts: it then gets SIGINT's default back at exec,
    # even where this runs in the background with SIGINT ignored (nohup ... &).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    child = subprocess.Popen(argv, env={**os.environ, "TMPDIR": str(root)}, start_new_session=True)
    try:
        while True:
            try:
                code = child.wait(timeout=30 if interrupted else None)
                break
            except subprocess.TimeoutExpired:  # its cleanup hangs: stop it
                stop_group(child.pid)
    finally:
        stop_group(child.pid)
        for data_dir in stop_postmasters(root):
            print(f"supervise: stopped the PostgreSQL the benchmark left running on {data_dir}", file=sys.stderr)
        if left := stop_marked(root):
            print(f"supervise: {left} process(es) of the benchmark survived SIGKILL", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    if code < 0:  # killed by a signal
        return 128 - code
    return 130 if interrupted and code == 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
