"""Every segment and condition file has given/expect cases here: a new file gets its own."""

from __future__ import annotations

from pathlib import Path

from lifecycle.config import SQL_DIR


def test_every_segment_and_condition_file_is_named_by_a_case():
    cases = "\n".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py")
                      if p.name != Path(__file__).name)
    files = sorted((SQL_DIR / "segments").glob("*.sql")) + sorted((SQL_DIR / "conditions").glob("*.sql"))
    assert files
    missing = [f"{f.parent.name}/{f.name}" for f in files if f'"{f.stem}"' not in cases]
    assert not missing, f"no given/expect case in tests/sql/ selects with or checks: {missing}"
