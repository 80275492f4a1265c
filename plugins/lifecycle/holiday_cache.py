"""The `holidays` package's answers, kept on disk between DAG parses.

Airflow parses dags/journeys.py again and again, each time in a fresh process, and a segment
file with `offers:` asks `holidays` which calendars exist and when their holidays fall.
Importing the package alone costs 0.1-0.2 s (its lunar calendar tables), more than reading and
checking 50 segment files. The answers depend only on the package's version and the question,
so they are kept in one JSON file per version under the state dir (LIFECYCLE_STATE_DIR). A
missing, unreadable or unwritable file only means asking `holidays` again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from lifecycle import config

_loaded: dict[Path, dict[str, Any]] = {}  # cache file -> its answers, read once per process


def remembered(question: str, ask: Callable[[], Any]) -> Any:
    """The answer to `question` (JSON-able) from the cache file, or `ask()`'s, then stored."""
    path = cache_file()
    if path is None:
        return ask()
    answers = _answers(path)
    if question not in answers:
        answers[question] = ask()
        _store(path, answers)
    return answers[question]


def cache_file() -> Path | None:
    try:
        version = metadata.version("holidays")
    except metadata.PackageNotFoundError:
        return None
    return config.settings().state_dir / "cache" / f"holidays-{version}.json"


def _answers(path: Path) -> dict[str, Any]:
    if path not in _loaded:
        try:
            answers = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            answers = {}
        _loaded[path] = answers if isinstance(answers, dict) else {}
    return _loaded[path]


def _store(path: Path, answers: dict[str, Any]) -> None:
    """Whole file replaced at once: a parse running beside this one reads the old or the new."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return  # a read-only state dir: the next parse asks `holidays` again
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(answers, out)
        os.replace(temp, path)
    except OSError:
        Path(temp).unlink(missing_ok=True)
