"""A short hash of the files a journey's DAG is made of, shown in its `doc_md`.

Airflow 3 keeps a new DAG version when the serialised DAG changes, but an edited template or
condition leaves the DAG's tasks as they were: with the hash in `doc_md`, every edit of the
journey's files is a new version, so a run shows which files it ran with (as cosmos does with
its project hash). Read at parse time from local files only: no database, no network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lifecycle.config import CONDITIONS_DIR, TEMPLATES_DIR
from lifecycle.spec import JourneySpec

LAYOUTS = "_layouts"  # what every email extends and imports: an edit there changes every journey's mail


def journey_files(spec: JourneySpec, templates_dir: Path = TEMPLATES_DIR,
                  conditions_dir: Path = CONDITIONS_DIR) -> list[Path]:
    """The segment file, its condition files, and every file in its templates' directories
    (the templates and the partials they import) and in the shared layouts."""
    templates = {s.template for s in spec.steps if s.template} | {e.template for e in spec.exits if e.template}
    directories = {templates_dir / LAYOUTS} | {(templates_dir / name).parent for name in templates}
    files = {spec.path} | {conditions_dir / f"{name}.sql" for name in spec.conditions}
    files |= {path for directory in directories if directory.is_dir() for path in directory.rglob("*") if path.is_file()}
    return sorted(files)


def journey_fingerprint(spec: JourneySpec, templates_dir: Path = TEMPLATES_DIR,
                        conditions_dir: Path = CONDITIONS_DIR) -> str:
    """12 hex digits of a sha256 over the journey's files (names relative to their roots, and bytes)."""
    digest = hashlib.sha256()
    roots = (templates_dir, conditions_dir, spec.path.parent)
    for path in journey_files(spec, templates_dir, conditions_dir):
        root = next((r for r in roots if path.is_relative_to(r)), path.parent)
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(path.read_bytes() if path.is_file() else b"(missing)")
        digest.update(b"\0")
    return digest.hexdigest()[:12]
