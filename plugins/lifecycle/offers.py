"""Seasonal offers: the header's `offers:` turned into dated offers with the `holidays` package.

    offers:
      - {name: christmas, holiday: Christmas Day, calendar: US, send_on: "12-01", countries: all}
      - {name: thanksgiving, holiday: Thanksgiving Day, calendar: US, days_before: 7, countries: [US]}

Each offer is dated by a holiday of one country's calendar (`holidays` names it, e.g.
"Thanksgiving Day" in the US calendar is the fourth Thursday of November) and is sent
either on a fixed day before it (`send_on: "MM-DD"`, the last such day on or before the
holiday) or a number of days before it (`days_before`). It is open from the send day
until the end of the holiday (plus `days_after_holiday`). The dates are calendar dates:
the segment SQL turns them into moments in each customer's own time zone.

A journey with offers gets the bound parameter `:offers`, a JSON array with one object per
offer and holiday year around the run's as_of (the year before, the year of, the year
after), for `jsonb_to_recordset(CAST(:offers AS jsonb)) AS o(offer text, year int, holiday
text, holiday_date date, send_date date, end_date date, countries jsonb)`. `end_date` is
the first day after the window; `countries` is null for `countries: all`.

Everything here is pure Python (no network): safe at DAG parse time. `holidays` is
imported only when a file has offers and its answers are not on disk yet (lifecycle.holiday_cache).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from lifecycle.holiday_cache import remembered

OFFER_KEYS = {"name", "holiday", "calendar", "send_on", "days_before", "days_after_holiday", "countries"}
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
MONTH_DAY = re.compile(r"^(?P<m>\d{2})-(?P<d>\d{2})$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
MAX_DAYS = 366


@dataclass(frozen=True)
class Offer:
    name: str
    holiday: str  # as the holidays package spells it in `calendar` (matched case-insensitively)
    calendar: str  # ISO 3166-1 alpha-2 country whose holiday calendar dates the offer
    send_on: tuple[int, int] | None  # (month, day): the last such day on or before the holiday
    days_before: int | None  # or: this many days before the holiday
    days_after_holiday: int = 0  # the window stays open this many days after the holiday
    countries: tuple[str, ...] | None = None  # customers' countries; None: everyone

    def send_date(self, holiday_date: date) -> date:
        if self.days_before is not None:
            return holiday_date - timedelta(days=self.days_before)
        month, day = self.send_on
        candidate = date(holiday_date.year, month, day)
        return candidate if candidate <= holiday_date else date(holiday_date.year - 1, month, day)

    def end_date(self, holiday_date: date) -> date:
        """The first day after the offer window."""
        return holiday_date + timedelta(days=self.days_after_holiday + 1)


def holiday_dates(calendar: str, years: tuple[int, ...]) -> dict[str, list[date]]:
    """Lower-cased holiday name -> its dates in `years` (observed-day substitutes left out)."""
    return {name.lower(): dates for name, dates in _calendar(calendar, years).items()}


@lru_cache(maxsize=64)
def _calendar(calendar: str, years: tuple[int, ...]) -> dict[str, list[date]]:
    # Kept on disk (lifecycle.holiday_cache): DAG parsing then never imports holidays.
    names = remembered(f"calendar {calendar} {','.join(map(str, years))}", lambda: _ask_calendar(calendar, years))
    return {name: [date.fromisoformat(d) for d in days] for name, days in names.items()}


def _ask_calendar(calendar: str, years: tuple[int, ...]) -> dict[str, list[str]]:
    import holidays

    names: dict[str, list[str]] = {}
    # observed=False: "Christmas Day (observed)" on a Friday is not Christmas.
    for day, joined in sorted(holidays.country_holidays(calendar, years=years, observed=False).items()):
        for name in joined.split("; "):  # two holidays on one day are joined with "; "
            names.setdefault(name, []).append(day.isoformat())
    return names


def supported_calendars() -> set[str]:
    return set(remembered("calendars", _ask_calendars))


def _ask_calendars() -> list[str]:
    """The country codes `holidays` has a calendar for, read from its registry: not
    `holidays.list_supported_countries()`, which imports all ~250 country modules to list
    their subdivisions (0.2-0.5 s)."""
    from holidays.registry import EntityLoader

    return sorted(code for code in EntityLoader.get_country_codes(include_aliases=True) if COUNTRY.match(code))


def dated(offer: Offer, year: int) -> dict | None:
    """The offer for the holiday in `year` (None when the calendar has no such holiday that year)."""
    dates = holiday_dates(offer.calendar, (year,)).get(offer.holiday.lower())
    if not dates:
        return None
    holiday_date = dates[0]
    return {
        "offer": offer.name,
        "year": year,
        "holiday": offer.holiday,
        "holiday_date": holiday_date.isoformat(),
        "send_date": offer.send_date(holiday_date).isoformat(),
        "end_date": offer.end_date(holiday_date).isoformat(),
        "countries": list(offer.countries) if offer.countries is not None else None,
    }


@lru_cache(maxsize=256)
def _offers_json(offers: tuple[Offer, ...], year: int) -> str:
    rows = [d for y in (year - 1, year, year + 1) for o in offers if (d := dated(o, y))]
    return json.dumps(rows)


def offers_json(offers: tuple[Offer, ...], as_of: datetime) -> str:
    """The `:offers` bind of a run: every offer of the holiday years around as_of, as JSON text."""
    return _offers_json(offers, as_of.year)


# ---------------------------------------------------------------------------- header validation


def parse_offers(
    raw: Any,
    *,
    sql_uses_offers: bool,
    last_step_after: timedelta | None,
    complete_after: timedelta,
    today: date | None = None,
) -> tuple[tuple[Offer, ...], list[str]]:
    """The header's `offers:` list -> (offers, problems). Every problem names the offer and key.

    `today` picks the years the holiday names are checked in (this year and the next two);
    the check reads no data, so the wall clock is fine here."""
    problems: list[str] = []
    if not isinstance(raw, list) or not raw:
        return (), ["offers: must be a non-empty list like "
                    "[{name: christmas, holiday: Christmas Day, calendar: US, send_on: '12-01'}]"]
    if not sql_uses_offers:
        problems.append("offers: the SELECT must read them: "
                        "FROM jsonb_to_recordset(CAST(:offers AS jsonb)) AS o(offer text, ...)")
    years = tuple(range((today or date.today()).year, (today or date.today()).year + 3))
    calendars = supported_calendars()
    offers, seen = [], set()
    for i, item in enumerate(raw):
        where = f"offers[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping like {{name: christmas, holiday: Christmas Day, "
                            "calendar: US, send_on: '12-01'}")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{where}.name: required, lower_snake_case (it is part of the enrollment key), "
                            f"got {name!r}")
            name = f"offer_{i}"
        elif name in seen:
            problems.append(f"{where}.name: {name!r} is used twice")
        seen.add(name)
        where = f"offers[{i}] ({name})"
        count = len(problems)
        for key in sorted(set(item) - OFFER_KEYS, key=str):
            hint = difflib.get_close_matches(str(key), sorted(OFFER_KEYS), n=1)
            problems.append(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))

        calendar = item.get("calendar")
        if not isinstance(calendar, str) or calendar.upper() not in calendars:
            hint = difflib.get_close_matches(str(calendar).upper(), sorted(calendars), n=1)
            problems.append(f"{where}.calendar: {calendar!r} is not a country calendar of the holidays package "
                            "(an ISO country code like US, GB, DE)" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            calendar = None
        else:
            calendar = calendar.upper()

        holiday = item.get("holiday")
        if not isinstance(holiday, str) or not holiday.strip():
            problems.append(f"{where}.holiday: required, the holiday's name as the holidays package spells it "
                            "(e.g. Christmas Day)")
            holiday = ""
        elif calendar:
            holiday = holiday.strip()
            found = holiday_dates(calendar, years)
            missing = [y for y in years if holiday.lower() not in found or
                       not any(d.year == y for d in found[holiday.lower()])]
            if holiday.lower() not in found:
                known = sorted(_calendar(calendar, years))
                hint = difflib.get_close_matches(holiday, known, n=3, cutoff=0.4)
                problems.append(
                    f"{where}.holiday: {holiday!r} is not a holiday in the {calendar} calendar"
                    + (f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else "")
                    + f"; its holidays: {', '.join(known)}"
                )
            elif missing:
                problems.append(f"{where}.holiday: {holiday!r} is not in the {calendar} calendar in "
                                f"{', '.join(map(str, missing))}")

        send_on, days_before = item.get("send_on"), item.get("days_before")
        if (send_on is None) == (days_before is None):
            problems.append(f"{where}: give exactly one of send_on (a day like '12-01') and days_before "
                            "(days before the holiday)")
            send_on = days_before = None
        if send_on is not None:
            send_on = _month_day(f"{where}.send_on", send_on, problems)
        if days_before is not None and not _whole(days_before, 0, MAX_DAYS):
            problems.append(f"{where}.days_before: a whole number of days from 0 to {MAX_DAYS}, got {days_before!r}")
            days_before = None
        after = item.get("days_after_holiday", 0)
        if not _whole(after, 0, MAX_DAYS):
            problems.append(f"{where}.days_after_holiday: a whole number of days from 0 to {MAX_DAYS}, got {after!r}")
            after = 0

        countries = item.get("countries", "all")
        if countries == "all":
            countries = None
        elif (isinstance(countries, list) and countries
              and all(isinstance(c, str) and COUNTRY.match(c) for c in countries)):
            countries = tuple(countries)
        else:
            problems.append(f"{where}.countries: 'all' or a list of ISO country codes like [US, CA] "
                            f"(matched against the customer's country), got {countries!r}")
            countries = None

        if len(problems) > count:
            continue
        offer = Offer(name, holiday, calendar, send_on, days_before, after, countries)
        offers.append(offer)
        if last_step_after is not None:
            for year in years:
                d = dated(offer, year)
                if d is None:
                    continue
                open_for = date.fromisoformat(d["end_date"]) - date.fromisoformat(d["send_date"])
                if last_step_after + complete_after < open_for:
                    need = open_for - last_step_after
                    problems.append(
                        f"complete_after: offer {name!r} is open {open_for.days} days from its send day "
                        f"({d['send_date']} to {d['end_date']}) but enrollments complete {_days(complete_after)} "
                        f"after the last step ({_days(last_step_after)}): orders late in the window would not "
                        f"count; use complete_after: {need.days}d or more"
                    )
                    break
    return tuple(offers), problems


def _month_day(where: str, value: Any, problems: list[str]) -> tuple[int, int] | None:
    match = MONTH_DAY.match(str(value))
    try:
        if not match:
            raise ValueError
        month, day = int(match["m"]), int(match["d"])
        date(2001, month, day)  # a non-leap year: 02-29 would not exist every year
    except ValueError:
        problems.append(f"{where}: {value!r} is not a day of every year written MM-DD like '12-01' "
                        "(quote it in YAML)")
        return None
    return month, day


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _days(delta: timedelta) -> str:
    return f"{delta.days}d" if delta.seconds == 0 else str(delta)
