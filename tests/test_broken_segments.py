"""One bad segment file never takes anything else down (issue 10 item 1).

A header value of the wrong type (`tags: 5`, `template: ../x`, a list where a word belongs)
is a SpecError naming the file and the key, never a TypeError/ValueError escaping the loader:
dags/journeys.py always imports, every other journey is still there, and the bad file becomes
a DAG tagged `broken` that keeps its schedule and owner, so each of its intervals fails.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from lifecycle.config import CONDITIONS_DIR, PROJECT_DIR, SEGMENTS_DIR, TEMPLATES_DIR
from lifecycle.spec import (
    COUPON_KEYS,
    EXIT_KEYS,
    GUARD_KEYS,
    STEP_KEYS,
    THEN_KEYS,
    TOP_KEYS,
    SpecError,
    load_spec,
)

HEADER = re.compile(r"\A(\s*/\*\s*---\s*\n)(.*?)(\n\s*---\s*\*/.*)\Z", re.S)
# Values of every YAML type an analyst can type by mistake.
WRONG = [5, 1.5, True, None, "x", "../x", [1], [[1]], {"a": 1}, [], {}, -1]


def split(journey: str) -> tuple[str, dict, str]:
    head, header, sql = _split(journey)
    return head, copy.deepcopy(header), sql


@functools.cache
def _split(journey: str) -> tuple[str, dict, str]:
    """Read once: the header tests write hundreds of variants of a file."""
    match = HEADER.match((SEGMENTS_DIR / f"{journey}.sql").read_text())
    return match[1], yaml.safe_load(match[2]), match[3]


def write(folder, journey: str, header: dict) -> None:
    head, _, sql = _split(journey)
    # libyaml's emitter (the same YAML as safe_dump's, several times faster)
    dumped = yaml.dump(header, Dumper=yaml.CSafeDumper, sort_keys=False)
    (folder / f"{journey}.sql").write_text(head + dumped + sql)


def wrong_headers(header: dict):
    """The header with one value replaced by a value of the wrong type, for every key."""
    def with_step(key, value):
        steps = [dict(s) for s in header["steps"]]
        steps[0][key] = value
        return {**header, "steps": steps}

    def with_exit(key, value):
        exits = [dict(e) for e in header["exit"]]
        exits[0][key] = value
        return {**header, "exit": exits}

    for value in WRONG:
        for key in TOP_KEYS:
            yield f"{key}={value!r}", {**header, key: value}
        for key in STEP_KEYS:
            yield f"steps[0].{key}={value!r}", with_step(key, value)
        for key in COUPON_KEYS:
            yield f"steps[0].coupon.{key}={value!r}", with_step("coupon", {"percent_off": 10, key: value})
        for key in GUARD_KEYS:
            yield f"volume_guard.{key}={value!r}", {**header, "volume_guard": {key: value}}
        for key in EXIT_KEYS:
            yield f"exit[0].{key}={value!r}", with_exit(key, value)
        for key in THEN_KEYS:
            then = {"channel": "email", "template": "cart_abandonment/thank_you", key: value}
            yield f"exit[0].then.{key}={value!r}", with_exit("then", then)
        yield f"steps=[{value!r}]", {**header, "steps": [value]}
        yield f"exit=[{value!r}]", {**header, "exit": [value]}


@pytest.mark.parametrize("journey", ["cart_abandonment", "browse_abandonment"])  # email-only; push with fallback
def test_every_wrong_typed_header_value_is_a_spec_error_naming_the_key(tmp_path, journey):
    _, header, _ = split(journey)
    escaped, vague = [], []
    for label, bad in wrong_headers(header):
        write(tmp_path, journey, bad)
        try:
            load_spec(tmp_path / f"{journey}.sql")
        except SpecError as exc:
            if "could not be read as a journey" in str(exc):  # the loader's last resort, not a check
                vague.append(f"{label}: {exc}")
        except Exception as exc:
            escaped.append(f"{label}: {type(exc).__name__}: {exc}")
    assert escaped == [], "\n".join(escaped[:20])
    assert vague == [], "\n".join(vague[:20])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tags": 5}, "tags: must be a list of words like [retention, email], got 5"),
        ({"schedule": ["hourly"]}, "schedule: ['hourly'] is not one of hourly, daily, weekly"),
        ({"owner": {"team": "crm"}}, "owner: must be plain text, got dict {'team': 'crm'}"),
        ({"params": {5: 48}}, "params: 5 is not a parameter name"),
        ({"steps": [{"name": "reminder_1", "after": "1h", "channel": "email", "template": "../x"}]},
         "steps[0] (reminder_1).template: '../x' is not a template name like <journey>/<step>"),
        ({"steps": [{"name": "reminder_1", "after": "1h", "channel": {"a": 1}, "template": "x"}]},
         "steps[0] (reminder_1).channel: {'a': 1} is not a channel"),
        ({"steps": [{"name": "reminder_1", "after": "1h", "channel": "email", "urgency": ["high"],
                     "template": "cart_abandonment/reminder_1"}]},
         "steps[0] (reminder_1).urgency: one of high, low, normal, very-low, got ['high']"),
    ],
)
def test_a_wrong_type_is_named_with_the_key_and_what_was_expected(tmp_path, change, expected):
    _, header, _ = split("cart_abandonment")
    write(tmp_path, "cart_abandonment", {**header, **change})
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "cart_abandonment.sql")
    assert str(info.value).startswith("cart_abandonment.sql: ")
    assert any(expected in p for p in info.value.problems), info.value.problems


def bad_project(tmp_path):
    """A project whose segments folder holds two good files and three bad ones (two of them with
    wrong-typed values that used to escape the loader), sharing the real conditions and templates."""
    project = tmp_path / "project"
    segments = project / "include" / "sql" / "segments"
    segments.mkdir(parents=True)
    (project / "include" / "sql" / "conditions").symlink_to(CONDITIONS_DIR)
    (project / "include" / "templates").symlink_to(TEMPLATES_DIR)
    (project / "dags").mkdir()
    shutil.copy(PROJECT_DIR / "dags" / "journeys.py", project / "dags")
    for good in ("cart_abandonment", "review_request"):
        shutil.copy(SEGMENTS_DIR / f"{good}.sql", segments)
    _, header, _ = split("win_back")  # daily
    write(segments, "win_back", {**header, "tags": 5, "owner": "crm-team"})
    _, header, _ = split("browse_abandonment")  # hourly
    steps = [dict(s) for s in header["steps"]]
    steps[0]["template"] = "../x"
    write(segments, "browse_abandonment", {**header, "steps": steps})
    (segments / "welcome.sql").write_text("/* ---\njourney: welcome\nschedule: [hourly\n--- */\nSELECT 1\n")
    return project


DAGBAG_REPORT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "import_errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {"tags": sorted(d.tags), "owner": d.owner, "description": d.description,
                        "cron": getattr(d.timetable, "expression", None)} for d in bag.dags.values()},
}))
"""


def test_a_dags_folder_with_a_bad_file_imports_and_the_bad_file_keeps_schedule_and_owner(tmp_path):
    project = bad_project(tmp_path)
    # A real DagBag over a real dags folder (dags/journeys.py), in a process whose project is
    # the one above: exactly what the scheduler's DAG processor does with the file.
    env = {**os.environ, "LIFECYCLE_PROJECT_DIR": str(project)}
    result = subprocess.run([sys.executable, "-c", DAGBAG_REPORT, str(project / "dags")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["import_errors"] == {}
    dags = report["dags"]
    assert set(dags) == {"cart_abandonment", "review_request", "win_back", "browse_abandonment", "welcome",
                         "lifecycle_dispatch"}
    for good in ("cart_abandonment", "review_request"):
        assert "broken" not in dags[good]["tags"]
    win_back = dags["win_back"]
    assert "broken" in win_back["tags"] and win_back["owner"] == "crm-team" and win_back["cron"] == "0 0 * * *"
    assert "tags: must be a list of words" in win_back["description"]
    browse = dags["browse_abandonment"]
    assert "broken" in browse["tags"] and browse["cron"] == "0 * * * *"
    assert "'../x' is not a template name" in browse["description"]
    # The YAML cannot be read at all: no schedule to keep; the DAG says which line is wrong.
    welcome = dags["welcome"]
    assert "broken" in welcome["tags"] and welcome["cron"] is None
    assert "header line" in welcome["description"] and "invalid YAML" in welcome["description"]


@pytest.mark.slow  # runs DAGs through Airflow (dag.test), like test_dags.py
def test_each_interval_of_a_broken_journey_fails_with_the_files_error(tmp_path, airflow_db):
    from datetime import UTC, datetime, timedelta

    from lifecycle.dag_factory import build_dags

    segments = bad_project(tmp_path) / "include" / "sql" / "segments"
    dags = build_dags(segments)
    run = dags["win_back"].test(logical_date=datetime(2026, 11, 19, tzinfo=UTC))
    assert run.state == "failed"
    assert run.data_interval_end - run.data_interval_start == timedelta(days=1)  # the journey's own daily interval
    (ti,) = run.get_task_instances()
    assert ti.task_id == "report_segment_error" and ti.state == "failed"
