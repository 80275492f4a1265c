"""Each journey DAG's docs: steps, exits, conditions and params as tables, the schedule in words,
the segment SQL in a collapsed block, the files hash line, and a description cut on a word boundary."""

from __future__ import annotations

import re

import pytest

from lifecycle.fingerprint import journey_fingerprint
from lifecycle.spec import load_all, load_spec
from lifecycle.ui.dag_docs import cut_words, human_duration, journey_doc_md


@pytest.fixture(scope="module")
def specs():
    found, errors = load_all()
    assert not errors
    return {s.journey: s for s in found}


def _table(doc: str, heading: str) -> list[list[str]]:
    """The rows of the Markdown table under `heading` (cells stripped)."""
    block = doc.split(heading, 1)[1].split("\n\n", 1)[1].split("\n\n", 1)[0]  # past the heading's line
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines[2:]]


def test_every_journey_dag_has_tables_sql_and_the_files_hash(specs):
    from lifecycle.dag_factory import build_journey_dag

    for journey, spec in specs.items():
        dag = build_journey_dag(spec)
        doc = dag.doc_md
        assert f"files hash `{journey_fingerprint(spec)}`" in doc, journey
        steps = _table(doc, "#### Steps")
        assert [r[0] for r in steps] == [f"`{s.name}`" for s in spec.steps], journey
        if spec.exits:
            assert [r[0] for r in _table(doc, "#### Exits")] == [f"`{e.when}`" for e in spec.exits]
        if spec.conditions:
            assert {r[0] for r in _table(doc, "#### Conditions")} == {f"`{c}`" for c in spec.conditions}
        else:
            assert "#### Conditions" not in doc
        for name in spec.params:
            assert f"| `:{name}` |" in doc, (journey, name)
        # the whole SELECT, in a block that collapses where HTML is rendered
        details = doc.split("<details>", 1)[1].split("</details>", 1)[0]
        assert "<summary>" in details and spec.sql.strip() in details
        assert len(dag.description) <= 200 and not dag.description.endswith(" "), journey


def test_win_back_reads_as_its_header_says(specs):
    doc = journey_doc_md(specs["win_back"], "0123456789ab")
    steps = {r[0]: r for r in _table(doc, "#### Steps")}
    assert steps["`email_1`"][1:4] == ["at entry", "email", "`win_back/email_1`"]
    assert steps["`email_1`"][6] == "15% off, valid 14 days, prefix `WB`"
    assert steps["`email_2`"][1] == "1 week after entry"
    assert steps["`stop_emailing`"][3] == "action `suppress`"
    exits = _table(doc, "#### Exits")
    assert exits[0] == ["`purchased_since_entry`", "–", "purchased_since_entry", "converted", "email `win_back/thank_you`"]
    assert exits[1][3] == "exited"
    assert "| `:lapsed_days` | `90` |" in doc
    assert "| schedule | every day at 00:00 UTC; each run covers the day before it |" in doc
    assert doc.rstrip().endswith("Segment file: `win_back.sql` (files hash `0123456789ab`: segment, conditions, templates)")


def test_a_draft_says_so_and_steps_with_conditions_name_them(specs):
    from lifecycle.dag_factory import DRAFT_NOTE

    spec = specs["seasonal_offer"]
    doc = journey_doc_md(spec, "x", DRAFT_NOTE)
    reminder = next(s for s in spec.steps if s.unless or s.when)
    row = next(r for r in _table(doc, "#### Steps") if r[0] == f"`{reminder.name}`")
    assert f"`{reminder.unless or reminder.when}`" in row
    conditions = {r[0]: r[1] for r in _table(doc, "#### Conditions")}
    assert reminder.name in conditions[f"`{reminder.unless or reminder.when}`"]


def test_descriptions_are_cut_on_a_word_boundary():
    text = "Remind shoppers who left items in their cart " * 10
    cut = cut_words(text, 60)
    assert len(cut) <= 60 and cut.endswith("…")
    assert text.startswith(cut[:-1]) and text[len(cut) - 1] == " "  # the next character was a space
    assert cut_words("short  and\n sweet", 60) == "short and sweet"
    assert cut_words("a" * 80, 20) == "a" * 19 + "…"  # one long word: cut it, there is no boundary


def test_durations_in_words():
    from datetime import timedelta

    assert human_duration(timedelta(hours=1)) == "1 hour"
    assert human_duration(timedelta(days=2, hours=3)) == "2 days 3 hours"
    assert human_duration(timedelta(minutes=10)) == "10 minutes"


def test_a_pipe_in_a_value_does_not_break_the_table(tmp_path, specs):
    source = specs["win_back"].path.read_text().replace("lapsed_days: 90", "lapsed_days: 90\n  note: 'a|b'")
    path = tmp_path / "win_back.sql"
    path.write_text(source)
    from lifecycle.config import CONDITIONS_DIR, TEMPLATES_DIR

    spec = load_spec(path, templates_dir=TEMPLATES_DIR, conditions_dir=CONDITIONS_DIR)
    rows = _table(journey_doc_md(spec, "x"), "#### Params")
    assert ["`:note`", "`a\\|b`"] in rows


def test_a_step_with_variants_lists_them(specs):
    spec = specs["cart_abandonment"]
    step = next(s for s in spec.steps if getattr(s, "variants", None))
    row = next(r for r in _table(journey_doc_md(spec, "x"), "#### Steps") if r[0] == f"`{step.name}`")
    cell = row[7]
    for v in step.variants:
        assert f"{v.name} (weight {v.weight:g}): " in cell
    assert "the step's own subject and template" in cell or all(v.subject or v.template for v in step.variants)
