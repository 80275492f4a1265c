"""Each journey DAG's doc_md carries a hash of its segment, condition and template files, so
Airflow 3's DAG versions follow edits of those files (README "How it works")."""

from __future__ import annotations

import shutil

import pytest

from lifecycle.config import CONDITIONS_DIR, SEGMENTS_DIR, SQL_DIR, TEMPLATES_DIR
from lifecycle.fingerprint import journey_files, journey_fingerprint
from lifecycle.spec import load_spec

JOURNEYS = ("cart_abandonment", "win_back", "upsell")


@pytest.fixture()
def project(tmp_path):
    """A copy of the segments, conditions and templates to edit."""
    for source in (SEGMENTS_DIR, CONDITIONS_DIR, TEMPLATES_DIR):
        shutil.copytree(source, tmp_path / source.name)
    return tmp_path


def _hashes(root) -> dict[str, str]:
    dirs = {"templates_dir": root / "templates", "conditions_dir": root / "conditions"}
    return {j: journey_fingerprint(load_spec(root / "segments" / f"{j}.sql", **dirs), **dirs) for j in JOURNEYS}


def test_editing_a_template_changes_that_journeys_hash_only(project):
    before = _hashes(project)
    assert len(set(before.values())) == len(JOURNEYS) and _hashes(project) == before  # distinct, stable
    template = project / "templates" / "win_back" / "email_1.txt"
    template.write_text(template.read_text() + "\nSee you soon.\n")
    after = _hashes(project)
    assert after["win_back"] != before["win_back"]
    assert {j: h for j, h in after.items() if j != "win_back"} == {j: h for j, h in before.items() if j != "win_back"}


def _edit(path) -> None:
    path.write_text(path.read_text() + "\n-- edited\n")


def test_a_partial_the_segment_and_conditions_count_too(project):
    def changed() -> set[str]:
        now = _hashes(project)
        return {j for j in JOURNEYS if now[j] != before[j]}

    before = _hashes(project)
    _edit(project / "templates" / "upsell" / "_compare.txt")  # a partial upsell's templates import
    assert changed() == {"upsell"}
    before = _hashes(project)
    _edit(project / "segments" / "cart_abandonment.sql")
    assert changed() == {"cart_abandonment"}
    before = _hashes(project)
    _edit(project / "conditions" / "chose_to_stay.sql")  # win_back's own exit
    assert changed() == {"win_back"}
    before = _hashes(project)
    _edit(project / "conditions" / "purchased_since_entry.sql")  # an exit of all three
    assert changed() == set(JOURNEYS)
    before = _hashes(project)
    _edit(project / "templates" / "_layouts" / "email.txt")  # every email extends it
    assert changed() == set(JOURNEYS)


def test_the_hash_does_not_depend_on_where_the_project_lives(project, tmp_path_factory):
    moved = tmp_path_factory.mktemp("elsewhere") / "project"
    shutil.copytree(project, moved)
    assert _hashes(moved) == _hashes(project)


def test_the_dag_shows_the_hash_of_its_files():
    from lifecycle.dag_factory import build_journey_dag

    spec = load_spec(SEGMENTS_DIR / "win_back.sql")
    files = journey_files(spec)
    assert spec.path in files and CONDITIONS_DIR / "purchased_since_entry.sql" in files
    assert TEMPLATES_DIR / "win_back" / "email_1.html" in files and TEMPLATES_DIR / "_layouts" / "email.html" in files
    assert SQL_DIR / "lifecycle" / "contacts.sql" not in files
    assert f"files hash `{journey_fingerprint(spec)}`" in build_journey_dag(spec).doc_md
