"""The holidays package's answers kept on disk (lifecycle.holiday_cache): a DAG parse with the
answers on disk never imports `holidays`, and reads the same offers as one that asks it."""

from __future__ import annotations

import sys

import pytest

from lifecycle import holiday_cache, offers
from lifecycle.config import SEGMENTS_DIR
from lifecycle.spec import load_spec

SEASONAL = SEGMENTS_DIR / "seasonal_offer.sql"


@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """A state dir of its own and nothing remembered in memory, as in a new parsing process."""
    monkeypatch.setenv("LIFECYCLE_STATE_DIR", str(tmp_path))

    def forget():
        monkeypatch.setattr(holiday_cache, "_loaded", {})
        offers._calendar.cache_clear()

    forget()
    yield forget
    offers._calendar.cache_clear()


def test_a_parse_with_the_answers_on_disk_does_not_import_holidays(fresh_process, monkeypatch):
    asked = load_spec(SEASONAL)
    assert holiday_cache.cache_file().is_file()

    fresh_process()
    monkeypatch.setitem(sys.modules, "holidays", None)  # `import holidays` now raises ImportError
    remembered = load_spec(SEASONAL)
    assert remembered == asked and remembered.offers


def test_the_calendars_on_disk_are_the_ones_holidays_names(fresh_process):
    load_spec(SEASONAL)
    fresh_process()
    assert offers.supported_calendars() == set(offers._ask_calendars())
    assert {"US", "GB", "DE"} <= offers.supported_calendars() and "USA" not in offers.supported_calendars()


def test_an_unreadable_cache_file_is_asked_again_and_rewritten(fresh_process):
    expected = load_spec(SEASONAL).offers
    holiday_cache.cache_file().write_text("{not json", encoding="utf-8")
    fresh_process()
    assert load_spec(SEASONAL).offers == expected
    assert "calendars" in holiday_cache.cache_file().read_text(encoding="utf-8")


def test_a_read_only_state_dir_still_parses(fresh_process, monkeypatch, tmp_path):
    expected = load_spec(SEASONAL).offers
    fresh_process()
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_STATE_DIR", str(blocked))  # cache/ cannot be created under a file
    assert load_spec(SEASONAL).offers == expected
    assert not (blocked / "cache").exists()
