"""How long Airflow takes to parse dags/journeys.py, with the shipped segment files and with 50.

    .venv/bin/python benchmarks/parse_dags.py [--runs N] [--files N]

The DAG processor parses the DAG file again and again, in a process of its own, so what counts
is a fresh process. The script copies include/ and dags/journeys.py to a temp dir (pointed at
with LIFECYCLE_PROJECT_DIR), adds renamed copies of the shipped segment files until there are
`--files` of them, and for each folder runs `--runs` fresh `python -c` processes (after one
warm-up run that is not counted: it writes airflow.cfg, the .pyc files and the holidays cache,
lifecycle.holiday_cache, as the DAG processor's first parse does). Each process

1. imports `airflow.sdk` and Airflow's DagBag: the bare imports, paid by every DAG file (the DAG
   processor has them imported and its heap frozen, `gc.freeze()`, before it forks a parser; so
   does this process);
2. builds a DagBag over the temp dags/ folder, as Airflow's parser does: the engine's share
   (lifecycle's imports, reading and checking every segment file, building the DAGs).

It prints min/median/max of both (wall clock and CPU: on a busy machine the CPU time is the
steadier figure), the whole process, the first (uncounted) parse, the engine's share split in
its parts (one more process: import, read and check the files, build the DAGs), the load
average, and last `parse 50 files: X.XX s (median)` (the DagBag step, wall clock). Goal: under
0.5 s (issue 11).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 0.5

# Runs in the fresh process: times its own phases (wall clock and CPU) and prints them as JSON.
CHILD = """
import gc, json, time
clocks = lambda: (time.perf_counter(), time.process_time())
started = clocks()
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
{freeze}
imported = clocks()
bag = DagBag(dag_folder={folder!r})
parsed = clocks()
broken = sorted(d for d, dag in bag.dags.items() if "broken" in dag.tags)
print(json.dumps({{"imports": imported[0] - started[0], "imports_cpu": imported[1] - started[1],
                  "parse": parsed[0] - imported[0], "parse_cpu": parsed[1] - imported[1], "dags": len(bag.dags),
                  "broken": broken, "import_errors": {{str(k): v for k, v in bag.import_errors.items()}}}}))
"""

# Airflow's DAG processor freezes its heap (gc.freeze(), DagFileProcessorManager.before_run) before
# it forks the processes that parse: their collections never walk Airflow's imported objects.
# Without it, a full collection during the DAG builds walks them all (about 0.15 s at 50 files).
FREEZE = "gc.freeze()"

# The engine's share split in its parts (CPU seconds), in one more fresh process.
PARTS = """
import gc, json, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
gc.freeze()
cpu = [time.process_time()]
from lifecycle import dag_factory, spec
cpu.append(time.process_time())
specs, errors = spec.load_all()
cpu.append(time.process_time())
dags = [dag_factory.build_journey_dag(s) for s in specs]
cpu.append(time.process_time())
print(json.dumps({"import lifecycle": cpu[1] - cpu[0], "read and check the segment files": cpu[2] - cpu[1],
                  "build the journey DAGs (Airflow objects)": cpu[3] - cpu[2]}))
"""


def project_copy(into: Path, files: int) -> Path:
    """include/ and dags/journeys.py under `into`, with `files` segment files (shipped ones
    first, then renamed copies of them); returns the dags folder."""
    shutil.copytree(ROOT / "include", into / "include")
    (into / "dags").mkdir()
    shutil.copy2(ROOT / "dags" / "journeys.py", into / "dags" / "journeys.py")
    segments = into / "include" / "sql" / "segments"
    shipped = sorted(segments.glob("*.sql"))
    for path in shipped[files:]:
        path.unlink()
    for n in range(len(shipped), files):
        source = shipped[n % len(shipped)]
        name = f"{source.stem}_copy{n:03d}"
        text = re.sub(r"(?m)^journey: \w+", f"journey: {name}", source.read_text(encoding="utf-8"), count=1)
        (segments / f"{name}.sql").write_text(text, encoding="utf-8")
    return into / "dags"


def fresh_process(code: str, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the parsing process failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures.get("import_errors") or figures.get("broken"):
        raise SystemExit(f"the DAG folder did not parse cleanly: {figures['import_errors'] or figures['broken']}")
    return {**figures, "process": wall}


def spread(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):7.2f} {max(values):6.2f}"


def measure(files: int, runs: int, work: Path) -> float:
    dags = project_copy(work / f"project-{files}", files)
    env = {**os.environ, "LIFECYCLE_PROJECT_DIR": str(dags.parent), "AIRFLOW_HOME": str(work / "airflow"),
           "LIFECYCLE_STATE_DIR": str(dags.parent / ".lifecycle"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")]))}
    child = CHILD.format(folder=str(dags), freeze=FREEZE)
    first = fresh_process(child, env)  # writes airflow.cfg, the .pyc files and the holidays cache
    samples = [fresh_process(child, env) for _ in range(runs)]
    print(f"{files} segment files -> {first['dags']} DAGs, {runs} fresh processes (min / median / max, s):")
    for key, label in (("imports", "bare imports (airflow.sdk, DagBag)"), ("imports_cpu", "  CPU"),
                       ("parse", "DagBag over dags/ (the engine's share)"), ("parse_cpu", "  CPU"),
                       ("process", "whole process")):
        print(f"  {label:<40}{spread([s[key] for s in samples])}")
    print(f"  first parse (empty holidays cache)      {first['parse']:6.2f}")
    parts = fresh_process(PARTS, env)
    print("  parts, CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k != "process"))
    return statistics.median(s["parse"] for s in samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per folder (default 7)")
    parser.add_argument("--files", type=int, default=50, help="segment files in the big folder (default 50)")
    args = parser.parse_args()
    shipped = len(list((ROOT / "include" / "sql" / "segments").glob("*.sql")))
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-parse-") as tmp:
        measure(shipped, args.runs, Path(tmp))
        median = measure(args.files, args.runs, Path(tmp))
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"goal: under {GOAL_SECONDS} s: {'met' if median < GOAL_SECONDS else 'NOT met'}")
    print(f"parse {args.files} files: {median:.2f} s (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
