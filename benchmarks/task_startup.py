"""What every Airflow task process pays before its task runs: loading the plugins and parsing
dags/journeys.py. The old tree and this one side by side, in fresh processes.

    .venv/bin/python benchmarks/task_startup.py [--runs N] [--files N] [--baseline REV]

A task process (LocalExecutor or Celery worker alike) loads the plugins folder for its listeners
(airflow.sdk.listener.get_listener_manager) and parses the DAG file it was given inside Airflow's
parsing context, which names the DAG and task it is about to run (task_runner.startup and
parse). Each fresh `python -c` process here does the same with Airflow's own functions:

1. imports Airflow's task runner and BundleDagBag (the same in both trees; a task process forked
   from its supervisor may have them already: printed, not compared);
2. loads the plugins (`plugins/lifecycle_plugin.py`): the old one built the Journeys page's
   FastAPI app at import, the new one builds it on the API server's first request;
3. parses dags/journeys.py in the parsing context of `win_back`'s `send_email` task, as
   BundleDagBag: the old tree builds every journey's DAG (and checked the template files through
   the renderer: css_inline, babel), the new one only the DAG the task belongs to.

The old tree is `git archive BASELINE` of dags/, plugins/ and include/ (default: main before this
work); the new one is this checkout's. Both get `--files` segment files (the shipped ones, then
renamed copies), and the processes alternate old, new, old, ... after one uncounted warm-up each
(airflow.cfg, the .pyc files, the holidays cache). Printed: min / median / max wall clock and CPU
seconds of each part, the whole process's CPU, the load average, and last the ratio of the
median CPU seconds of steps 2 and 3 (old / new).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "a2d6678"  # main before the task start-up work (branch `startup`)
DAG_ID, TASK_ID = "win_back", "send_email"

# Runs in the fresh process, as airflow.sdk.execution_time.task_runner.startup() does.
CHILD = """
import json, os, time
clocks = lambda: (time.perf_counter(), time.process_time())
t = [clocks()]
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager
from airflow.sdk.execution_time import task_runner
from airflow.sdk.listener import get_listener_manager
t.append(clocks())
get_listener_manager()
t.append(clocks())
with _airflow_parsing_context_manager(dag_id={dag_id!r}, task_id={task_id!r}):
    bag = BundleDagBag(dag_folder={dag_file!r}, safe_mode=False, load_op_links=False,
                       bundle_path={bundle!r}, bundle_name="dags-folder")
task = bag.dags[{dag_id!r}].task_dict[{task_id!r}]
t.append(clocks())
parts = {{}}
for name, (a, b) in zip(("imports", "plugins", "parse"), zip(t, t[1:])):
    parts[name], parts[name + "_cpu"] = b[0] - a[0], b[1] - a[1]
print(json.dumps({{**parts, "dags": len(bag.dags), "errors": {{str(k): v for k, v in bag.import_errors.items()}}}}))
"""


def tree_from_git(rev: str, into: Path) -> Path:
    """dags/, plugins/ and include/ as commit `rev` has them."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "dags", "plugins", "include"],
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the old tree comes from git (`git archive {rev}`), which failed: "
                         f"{done.stderr.decode(errors='replace').strip()}")
    archive = done.stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def tree_from_checkout(into: Path) -> Path:
    for part in ("dags", "plugins", "include"):
        shutil.copytree(ROOT / part, into / part, ignore=shutil.ignore_patterns("__pycache__"))
    return into


def add_segment_copies(tree: Path, files: int) -> int:
    """Renamed copies of the shipped segment files until there are `files` (never fewer than shipped)."""
    segments = tree / "include" / "sql" / "segments"
    shipped = sorted(segments.glob("*.sql"))
    for n in range(len(shipped), files):
        source = shipped[n % len(shipped)]
        name = f"{source.stem}_copy{n:03d}"
        text = re.sub(r"(?m)^journey: \w+", f"journey: {name}", source.read_text(encoding="utf-8"), count=1)
        (segments / f"{name}.sql").write_text(text, encoding="utf-8")
    return len(list(segments.glob("*.sql")))


def environment(tree: Path, home: Path) -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE off: the warm-up writes the trees' .pyc files, as a deployment has them
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "LIFECYCLE_", "_AIRFLOW")) and k != "PYTHONDONTWRITEBYTECODE"}
    env.update({
        "PYTHONPATH": str(tree / "plugins"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tree / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(tree / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LIFECYCLE_PROJECT_DIR": str(tree),
        "LIFECYCLE_STATE_DIR": str(tree / ".lifecycle"),
    })
    return env


def task_process(tree: Path, env: dict[str, str]) -> dict:
    """One fresh process: its parts' figures, and its whole wall clock and CPU (user + system)."""
    code = CHILD.format(dag_id=DAG_ID, task_id=TASK_ID, dag_file=str(tree / "dags" / "journeys.py"),
                        bundle=str(tree / "dags"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the task process of {tree.name} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["errors"]:
        raise SystemExit(f"{tree.name}: dags/journeys.py did not parse cleanly: {figures['errors']}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**figures, "process": wall, "process_cpu": cpu,
            "engine": figures["plugins"] + figures["parse"], "engine_cpu": figures["plugins_cpu"] + figures["parse_cpu"]}


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


ROWS = (("imports", "Airflow's task runner imports (same code)"), ("plugins", "load the plugins"),
        ("parse", "parse dags/journeys.py for one task"), ("engine", "plugins + parse (the engine's share)"),
        ("process", "whole process"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per tree (default 7)")
    parser.add_argument("--files", type=int, default=0, help="segment files (default: the shipped ones)")
    parser.add_argument("--baseline", default=BASELINE, help=f"the old tree's commit (default {BASELINE})")
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min): {load()}")
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-startup-") as tmp:
        work = Path(tmp)
        trees = {"old": tree_from_git(args.baseline, work / "old"), "new": tree_from_checkout(work / "new")}
        envs = {}
        for name, tree in trees.items():
            files = add_segment_copies(tree, args.files)
            envs[name] = environment(tree, work / f"home-{name}")
            warm = task_process(tree, envs[name])  # airflow.cfg, .pyc files, the holidays cache
            print(f"{name} ({args.baseline if name == 'old' else 'this checkout'}): {files} segment files, "
                  f"the task process's bag holds {warm['dags']} DAG(s)")
        samples: dict[str, list[dict]] = {"old": [], "new": []}
        for _ in range(args.runs):
            for name, tree in trees.items():
                samples[name].append(task_process(tree, envs[name]))
    print(f"\n{args.runs} task processes each ({DAG_ID}.{TASK_ID}), alternating; min / median / max:")
    print(f"  {'':<44}{'old: wall s':>21}{'CPU s':>21}   {'new: wall s':>21}{'CPU s':>21}")
    for key, label in ROWS:
        cells = [spread([s[k] for s in samples[name]]) for name in ("old", "new") for k in (key, f"{key}_cpu")]
        print(f"  {label:<44}{cells[0]:>21}{cells[1]:>21}   {cells[2]:>21}{cells[3]:>21}")
    old, new = (statistics.median(s["engine_cpu"] for s in samples[name]) for name in ("old", "new"))
    whole_old, whole_new = (statistics.median(s["process_cpu"] for s in samples[name]) for name in ("old", "new"))
    print(f"\nper task process, median CPU: plugins + parse {old:.2f} -> {new:.2f} s, whole process "
          f"{whole_old:.2f} -> {whole_new:.2f} s ({whole_old - whole_new:.2f} s saved)")
    print(f"load average (1, 5, 15 min): {load()}")
    print(f"task start-up, plugins + parse CPU, old/new: {old / new:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
