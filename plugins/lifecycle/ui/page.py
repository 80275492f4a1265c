"""The Journeys page as HTML: a Jinja template (journeys.html, autoescaped) fed by lifecycle.ui.data,
with the charts of lifecycle.ui.charts inline. Also the JSON form of the same data."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from lifecycle.ui import charts
from lifecycle.ui.data import JourneyView, Period

TEMPLATE_DIR = Path(__file__).parent


@functools.cache
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, pp=pp, euro=euro, when=when, n=number)
    env.globals.update(funnel_svg=charts.funnel_svg, interval_svg=charts.interval_svg, stages=charts.STAGES)
    return env


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def pp(value: float | None) -> str:
    """A difference of two rates in percentage points."""
    return "–" if value is None else f"{value * 100:+.1f} pp"


def euro(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    sign = ("+" if value >= 0 else "−") if signed else ("−" if value < 0 else "")
    return f"{sign}€{abs(value):,.2f}"


def number(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def when(moment: datetime | None) -> str:
    return "–" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_page(views: list[JourneyView], period: Period, *, airflow_base: str, page_url: str,
                notice: str | None = None) -> str:
    return _environment().get_template("journeys.html").render(
        views=views, period=period, airflow_base=airflow_base.rstrip("/"), page_url=page_url, notice=notice,
        until_inclusive=(period.until - _ONE_DAY).date() if _is_midnight(period.until) else period.until.date(),
        generated=datetime.now(period.until.tzinfo))


_ONE_DAY = timedelta(days=1)


def _is_midnight(moment: datetime) -> bool:
    return moment.hour == moment.minute == moment.second == moment.microsecond == 0


def as_json(views: list[JourneyView], period: Period) -> dict[str, Any]:
    """The page's data as JSON values (datetimes as ISO text, intervals as [lo, hi])."""
    return _plain({"since": period.since, "until": period.until, "mode": period.mode,
                   "journeys": [{**v.__dict__, "totals": v.totals} for v in views]})


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value
