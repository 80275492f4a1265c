"""Costliest modules first: how `make test` spreads the test modules over its worker processes.

pytest-xdist's `--dist loadfile` keeps each module on one worker (its module-scoped shop and Airflow
stay in one process) and hands out modules in collection order, or largest test count first. The
suite's time is not in its test counts: a handful of modules start a whole Airflow or replay twin
shops and take minutes each, and one of them handed out last runs alone on one worker while the other
idles. So the workers take modules longest first, by the seconds each took in a measured run
(`module_seconds.json`), one module at a time: the longest-processing-time-first rule, which keeps the
finish within the longest module (or 4/3 of the even share) of the ideal.

Refresh the figures after adding or slowing down a module (a module missing from the file counts one
second per test):

    .venv/bin/pytest -n 2 --dist loadfile --junitxml=/tmp/suite.xml
    .venv/bin/python tests/scheduling.py /tmp/suite.xml
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from xdist.scheduler import LoadFileScheduling

COSTS_FILE = Path(__file__).with_name("module_seconds.json")
UNKNOWN_SECONDS_PER_TEST = 1.0


# A module that runs on both PostgreSQL servers (SHOP_SERVERS) has one module-scoped shop per server:
# its embedded and its service half are independent, so each is a unit of its own.
_SERVER = re.compile(r"\[(?:[^\]]*-)?(embedded|service)(?:-[^\]]*)?\]$")


def scope_of(nodeid: str) -> str:
    """The unit a worker takes whole: the test's module, and the server when the module runs on both."""
    module = nodeid.split("::", 1)[0]
    server = _SERVER.search(nodeid)
    return f"{module}[{server[1]}]" if server and server[1] == "service" else module


def load_costs(path: Path = COSTS_FILE) -> dict[str, float]:
    try:
        return {module: float(seconds) for module, seconds in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def costliest_first(modules: dict[str, int], costs: dict[str, float]) -> list[str]:
    """Modules (name -> number of tests) in the order to hand them out: longest expected first, ties
    by name so the order is the same every run."""
    def expected(module: str) -> float:
        return costs.get(module, modules[module] * UNKNOWN_SECONDS_PER_TEST)
    return sorted(modules, key=lambda m: (-expected(m), m))


class CostliestFirstScheduling(LoadFileScheduling):
    """`--dist loadfile`, with the work queue in costliest-first order and a worker given its next module
    only when it is on the last test of its current one (xdist's default tops a worker up while it still
    has two tests to go, which can leave a long module queued behind a busy worker while another idles)."""

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)

    def _assign_work_unit(self, node) -> None:
        if self.workqueue and not getattr(self, "_ordered", False):
            self._order_queue()
        super()._assign_work_unit(node)

    def _order_queue(self) -> None:
        self._ordered = True
        sizes = {scope: len(tests) for scope, tests in self.workqueue.items()}
        order = costliest_first(sizes, load_costs())
        units = dict(self.workqueue)
        self.workqueue.clear()
        for scope in order:
            self.workqueue[scope] = units[scope]

    def _reschedule(self, node) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        # The in-flight test counts as pending; a worker runs a test only once it knows the next
        # one (for the teardown of module fixtures), so it is topped up at one, not before.
        if self._pending_of(self.assigned_work[node]) > 1:
            return
        self._assign_work_unit(node)


def seconds_per_module(junit_xml: Path) -> dict[str, float]:
    """Seconds per unit (scope_of: a test module, or its service half; setup, call and teardown of its tests) from a pytest JUnit XML report."""
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        # classname is the dotted path (tests.test_x or tests.journeys.test_y, plus a class if any)
        parts = [p for p in module if p]
        while parts and not parts[-1].startswith("test_"):
            parts.pop()
        if parts:
            totals[scope_of("/".join(parts) + ".py::" + case.get("name", ""))] += float(case.get("time") or 0)
    return {module: round(seconds, 1) for module, seconds in sorted(totals.items())}


if __name__ == "__main__":
    figures = seconds_per_module(Path(sys.argv[1]))
    COSTS_FILE.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    print(f"{COSTS_FILE}: {len(figures)} modules, {sum(figures.values()):.0f} s in all")
