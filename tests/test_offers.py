"""Seasonal offers in a segment header (`offers:`): dating with the holidays package, the
`:offers` bind, and lint errors that name the file, the offer and the key.

Holiday dates are checked against calendars computed here (Thanksgiving = fourth Thursday
of November), not against the holidays package itself.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from lifecycle.config import SEGMENTS_DIR
from lifecycle.offers import Offer, dated, offers_json, parse_offers
from lifecycle.run_context import RunContext
from lifecycle.spec import SpecError, load_spec

DAY = timedelta(days=1)


def thanksgiving(year: int) -> date:
    first = date(year, 11, 1)
    return first + timedelta(days=(3 - first.weekday()) % 7) + 21 * DAY


CHRISTMAS = Offer("christmas", "Christmas Day", "US", (12, 1), None, 0, None)
THANKSGIVING = Offer("thanksgiving", "Thanksgiving Day", "US", None, 7, 0, ("US",))

SQL = """
SELECT o.offer || ':' || c.customer_id AS offer_key, c.customer_id, c.email, CAST(:as_of AS timestamptz) AS entered_at
FROM shop.customers c
CROSS JOIN jsonb_to_recordset(CAST(:offers AS jsonb)) AS o(offer text, send_date date)
"""


def segment(tmp_path: Path, offers, *, sql: str = SQL, complete_after: str = "22d", name: str = "holiday_test") -> Path:
    header = {
        "journey": name,
        "schedule": "daily",
        "entry_key": "offer_key",
        "entered_at": "entered_at",
        "complete_after": complete_after,
        "offers": offers,
        "steps": [
            {"name": "offer", "after": "0h", "channel": "email", "template": "seasonal_offer/offer"},
            {"name": "reminder", "after": "3d", "channel": "email", "template": "seasonal_offer/reminder"},
        ],
    }
    path = tmp_path / f"{name}.sql"
    path.write_text(f"/* ---\n{yaml.safe_dump(header, sort_keys=False)}--- */\n{sql}", encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path.name}: ")  # the error names the file
    return info.value.problems


# ---------------------------------------------------------------------------- dating


@pytest.mark.parametrize("year", range(2024, 2036))
def test_thanksgiving_offer_is_sent_7_days_before_the_fourth_thursday_of_november(year):
    d = dated(THANKSGIVING, year)
    tg = thanksgiving(year)
    assert tg.weekday() == 3 and 22 <= tg.day <= 28
    assert d == {"offer": "thanksgiving", "year": year, "holiday": "Thanksgiving Day",
                 "holiday_date": tg.isoformat(), "send_date": (tg - 7 * DAY).isoformat(),
                 "end_date": (tg + DAY).isoformat(), "countries": ["US"]}


@pytest.mark.parametrize("year", [2026, 2027, 2028])  # 2027: Christmas on a Saturday, observed on Friday 24th
def test_christmas_offer_is_sent_on_1_december_and_open_through_christmas_day(year):
    d = dated(CHRISTMAS, year)
    assert (d["holiday_date"], d["send_date"], d["end_date"]) == (f"{year}-12-25", f"{year}-12-01", f"{year}-12-26")
    assert d["countries"] is None  # everyone


def test_send_on_after_the_holiday_in_the_year_means_the_year_before():
    new_year = Offer("new_year", "New Year's Day", "US", (12, 20), None, 2, None)
    assert dated(new_year, 2027) == {"offer": "new_year", "year": 2027, "holiday": "New Year's Day",
                                     "holiday_date": "2027-01-01", "send_date": "2026-12-20",
                                     "end_date": "2027-01-04", "countries": None}


def test_the_bind_covers_the_holiday_years_around_as_of():
    rows = json.loads(offers_json((CHRISTMAS, THANKSGIVING), datetime(2026, 11, 29, tzinfo=UTC)))
    assert [(r["offer"], r["year"]) for r in rows] == [
        ("christmas", 2025), ("thanksgiving", 2025), ("christmas", 2026), ("thanksgiving", 2026),
        ("christmas", 2027), ("thanksgiving", 2027)]


def test_run_binds_carry_offers_only_for_journeys_with_offers():
    as_of = datetime(2027, 11, 19, tzinfo=UTC)
    run = RunContext("seasonal_offer", "r", "live", as_of - DAY, as_of)
    spec = load_spec(SEGMENTS_DIR / "seasonal_offer.sql")
    assert spec.offers == (CHRISTMAS, THANKSGIVING)
    rows = json.loads(run.binds(spec)["offers"])
    assert {"offer": "thanksgiving", "year": 2027, "holiday": "Thanksgiving Day", "holiday_date": "2027-11-25",
            "send_date": "2027-11-18", "end_date": "2027-11-26", "countries": ["US"]} in rows
    assert "offers" not in run.binds(load_spec(SEGMENTS_DIR / "birthday.sql"))


def test_a_valid_header_loads(tmp_path):
    spec = load_spec(segment(tmp_path, [
        {"name": "christmas", "holiday": "christmas day", "calendar": "us", "send_on": "12-01"},
        {"name": "boxing_week", "holiday": "Second Day of Christmas", "calendar": "DE", "days_before": 0,
         "days_after_holiday": 5, "countries": ["DE", "AT"]},
    ]))
    assert spec.offers == (Offer("christmas", "christmas day", "US", (12, 1), None, 0, None),
                           Offer("boxing_week", "Second Day of Christmas", "DE", None, 0, 5, ("DE", "AT")))


# ---------------------------------------------------------------------------- lint errors


def test_unknown_holiday_names_the_offer_and_suggests_the_close_match(tmp_path):
    (problem,) = problems(segment(tmp_path, [
        {"name": "thanksgiving", "holiday": "Thanksgiving", "calendar": "US", "days_before": 7}]))
    assert problem.startswith("offers[0] (thanksgiving).holiday: 'Thanksgiving' is not a holiday in the US calendar "
                              "(did you mean 'Thanksgiving Day'")
    assert "Christmas Day" in problem  # the calendar's holidays are listed


def test_unknown_calendar(tmp_path):
    (problem,) = problems(segment(tmp_path, [
        {"name": "christmas", "holiday": "Christmas Day", "calendar": "Narnia", "send_on": "12-01"}]))
    assert problem.startswith("offers[0] (christmas).calendar: 'Narnia' is not a country calendar")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"send_on": None}, "give exactly one of send_on"),
        ({"days_before": 7}, "give exactly one of send_on"),
        ({"send_on": "13-01"}, "send_on: '13-01' is not a day of every year"),
        ({"send_on": "02-29"}, "send_on: '02-29' is not a day of every year"),
        ({"send_on": "1 December"}, "send_on: '1 December' is not a day"),
        ({"days_after_holiday": -1}, "days_after_holiday: a whole number of days"),
        ({"countries": "US"}, "countries: 'all' or a list of ISO country codes"),
        ({"countries": ["us"]}, "countries: 'all' or a list of ISO country codes"),
        ({"holiday": None}, "holiday: required"),
        ({"name": "Christmas!"}, "offers[0].name: required, lower_snake_case"),
        ({"sendon": "12-01"}, "offers[0] (christmas): unknown key 'sendon' (did you mean 'send_on'?)"),
    ],
)
def test_bad_offer_keys(tmp_path, changes, expected):
    offer = {"name": "christmas", "holiday": "Christmas Day", "calendar": "US", "send_on": "12-01"}
    offer.update(changes)
    offer = {k: v for k, v in offer.items() if v is not None}
    found = problems(segment(tmp_path, [offer]))
    assert any(expected in p for p in found), found
    assert all(p.startswith(("offers[0]", "offers:")) for p in found), found


def test_offers_must_be_a_list_with_unique_names(tmp_path):
    assert problems(segment(tmp_path, {"christmas": "Christmas Day"}))[0].startswith("offers: must be a non-empty list")
    twice = {"name": "christmas", "holiday": "Christmas Day", "calendar": "US", "send_on": "12-01"}
    assert problems(segment(tmp_path, [twice, twice])) == ["offers[1].name: 'christmas' is used twice"]


def test_the_select_must_read_the_offers(tmp_path):
    sql = ("SELECT c.customer_id AS offer_key, c.customer_id, c.email, CAST(:as_of AS timestamptz) AS entered_at "
           "FROM shop.customers c")
    offer = {"name": "christmas", "holiday": "Christmas Day", "calendar": "US", "send_on": "12-01"}
    assert problems(segment(tmp_path, [offer], sql=sql)) == [
        "offers: the SELECT must read them: FROM jsonb_to_recordset(CAST(:offers AS jsonb)) AS o(offer text, ...)"]


def test_offers_is_not_a_parameter_without_the_header_key(tmp_path):
    path = segment(tmp_path, [])
    text = path.read_text().replace("offers: []\n", "")
    path.write_text(text)
    found = problems(path)
    assert any("parameter :offers is not bound" in p for p in found), found


def test_exits_must_be_watched_for_the_whole_window(tmp_path):
    offer = {"name": "christmas", "holiday": "Christmas Day", "calendar": "US", "send_on": "12-01"}
    (problem,) = problems(segment(tmp_path, [offer], complete_after="7d"))
    assert problem.startswith("complete_after: offer 'christmas' is open 25 days from its send day")
    assert problem.endswith("use complete_after: 22d or more")


def test_parse_offers_reports_every_problem_at_once():
    offers, found = parse_offers(
        [{"name": "a", "holiday": "Nope Day", "calendar": "US", "send_on": "12-01"},
         {"name": "b", "holiday": "Christmas Day", "calendar": "US"}],
        sql_uses_offers=True, last_step_after=None, complete_after=timedelta(days=7), today=date(2026, 11, 29))
    assert offers == ()
    assert [p.split(":")[0] for p in found] == ["offers[0] (a).holiday", "offers[1] (b)"]
