"""`lifecycle report`: one journey, a period, table / CSV / JSON, the held, dry-run and skipped columns, and
a sentence instead of a traceback when the warehouse has no `lifecycle` schema. On the planted month of
tests/test_ui_page.py (win_back: 3 runs, one held; 25 enrollments; 28 sends; 3 quarantined rows)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from test_ui_page import JOURNEY, plant

from lifecycle.cli import main


@pytest.fixture(scope="module")
def url(shop_db):
    engine, _, _ = shop_db
    plant(engine)
    return engine.url.render_as_string(hide_password=False)


def _report(capsys, *args) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_one_journey_in_a_period_as_a_table(url, capsys):
    code, out, err = _report(capsys, "--warehouse-url", url, "--journey", JOURNEY, "--since", "2026-11-01",
                             "--until", "2026-11-30")
    assert code == 0 and err == ""
    header, rule, row = out.strip().splitlines()
    assert header.split() == ["journey", "runs", "held", "entered", "sent", "dry_run", "converted", "exited",
                              "completed", "active", "suppressed", "skipped", "expired", "quarantined", "failed",
                              "revenue"]
    assert row.split() == [JOURNEY, "3", "1", "25", "28", "0", "0", "0", "0", "25", "2", "0", "2", "3", "0", "187.50"]


def test_csv_and_json_carry_the_same_numbers(url, capsys):
    code, out, _ = _report(capsys, "--warehouse-url", url, "--journey", JOURNEY, "--format", "csv")
    assert code == 0
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert (row["held"], row["sent"], row["skipped"], row["dry_run"], row["revenue"]) == ("1", "28", "0", "0", "187.5")
    code, out, _ = _report(capsys, "--warehouse-url", url, "--journey", JOURNEY, "--format", "json",
                           "--since", "2026-11-01")
    data = json.loads(out)
    assert data["since"] == "2026-11-01T00:00:00+00:00" and data["until"] is None and data["mode"] == "live"
    (journey,) = data["journeys"]
    assert journey["journey"] == JOURNEY and journey["held"] == 1 and journey["revenue"] == 187.5


def test_a_period_without_activity_says_so(url, capsys):
    code, out, _ = _report(capsys, "--warehouse-url", url, "--since", "2027-01-01")
    assert code == 0 and out.strip() == "no runs, enrollments or messages in that period (mode live)"


def test_the_period_splits_on_each_counts_clock(url, capsys):
    # the runs cover Nov 10, 11 (held) and 12: their intervals end at midnight on Nov 11, 12 and 13; a run
    # belongs to the day it covers, so from Nov 11 on there are two. Enrollments entered from Nov 10 on.
    _, out, _ = _report(capsys, "--warehouse-url", url, "--journey", JOURNEY, "--since", "2026-11-11",
                        "--format", "json")
    (journey,) = json.loads(out)["journeys"]
    assert journey["runs"] == 2 and journey["held"] == 1 and journey["quarantined"] == 3
    assert journey["entered"] == 1  # the planted enrollments entered hourly from Nov 10 00:00: only the 25th


def test_bad_dates_are_refused_with_the_reason(url, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--warehouse-url", url, "--since", "last week"])
    assert exit_.value.code == 2
    assert "since: 'last week' is not a date (YYYY-MM-DD) or an ISO time" in capsys.readouterr().err
    code, _, err = _report(capsys, "--warehouse-url", url, "--since", "2026-11-30", "--until", "2026-11-01")
    assert code == 2 and "must be before --until" in err


def test_a_warehouse_without_the_lifecycle_schema_gets_a_sentence(scratch_engine, capsys):
    code, out, err = _report(capsys, "--warehouse-url", scratch_engine.url.render_as_string(hide_password=False))
    assert code == 1 and out == ""
    assert err.strip() == ("lifecycle report: the warehouse has no `lifecycle` schema yet: run `lifecycle migrate` "
                           "(or `lifecycle init`) against it, then let a journey run")
    assert "Traceback" not in err
