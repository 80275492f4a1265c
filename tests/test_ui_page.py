"""The Journeys page (lifecycle.ui): a planted month of win_back — enrollments, messages with two
variants, human and machine opens and clicks, conversions, a holdout, runs (one held) and quarantined
rows — and what the page and its JSON show for it: the planted funnel, lift, A/B test, held run and
quarantine reasons, and no customer address anywhere. The app runs in-process (FastAPI's test client);
tests/test_ui_browser.py opens it in Chromium inside Airflow's API server."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

JOURNEY = "win_back"
SINCE, UNTIL = "2026-11-01", "2026-11-30"  # inclusive dates on the page
T0 = datetime(2026, 11, 10, tzinfo=UTC)

# What is planted (see plant()): the numbers the page must show.
EMAIL_1 = {"entered": 20, "sent": 16, "delivered": 16, "opened": 9, "clicked": 5, "converted": 3, "revenue": 175.0}
EMAIL_2 = {"A": {"sent": 6, "opened": 3, "clicked": 2}, "B": {"sent": 6, "opened": 1, "clicked": 0}}
COHORT = {"entered": 20, "converted": 1, "revenue": 12.5}  # the journey's row: entered, conversions without a click
HOLDOUT = {"treated_n": 20, "holdout_n": 5, "treated_conversions": 4, "holdout_conversions": 1}
QUARANTINE = {"email: not a valid address": 2,
              "one_active_per_customer: the customer already has an active enrollment in this journey; "
              "this row waits until it ends": 1}


def plant(engine, t0: datetime = T0) -> dict:
    """Plant win_back's month (from `t0`) on a migrated shop; return the planted customers' addresses."""
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE lifecycle.engagement, lifecycle.messages, lifecycle.enrollments, "
                             "lifecycle.runs, lifecycle.quarantine, lifecycle.conversions, lifecycle.suppressions, "
                             "lifecycle.coupons, lifecycle.ab_decisions CASCADE")
        customers = conn.execute(sa.text(
            "SELECT customer_id::text AS id, email, phone FROM shop.customers ORDER BY customer_id LIMIT 25")).all()
        ids = {}
        for i, c in enumerate(customers):
            ids[i] = conn.execute(sa.text(
                "INSERT INTO lifecycle.enrollments (journey, mode, enrollment_key, customer_id, entered_at, "
                "enrolled_at, enrolled_run_id, status, holdout, context) VALUES "
                "(:j, 'live', :key, :cid, :at, :at, 'r1', 'active', :holdout, CAST(:ctx AS jsonb)) "
                "RETURNING enrollment_id"),
                {"j": JOURNEY, "key": f"{c.id}:o{i}", "cid": c.id, "at": t0 + timedelta(hours=i),
                 "holdout": i >= 20, "ctx": json.dumps({"email": c.email, "first_name": "Planted"})}).scalar()

        def message(i, step, status, variant=None, sent_at=None):
            return conn.execute(sa.text(
                "INSERT INTO lifecycle.messages (idempotency_key, journey, mode, enrollment_id, customer_id, step, "
                "channel, template, status, due_at, planned_for, planned_run_id, attempts, sent_at, variant) VALUES "
                "(:key, :j, 'live', :e, :cid, :step, 'email', :tpl, :status, :at, :at, 'r1', :attempts, :sent, :v) "
                "RETURNING message_id"),
                {"key": f"{JOURNEY}:{i}:{step}:email", "j": JOURNEY, "e": ids[i], "cid": customers[i].id,
                 "step": step, "tpl": f"{JOURNEY}/{step}", "status": status, "at": t0 + timedelta(hours=i),
                 "attempts": 1 if status == "sent" else 0, "sent": sent_at, "v": variant}).scalar()

        def engage(mid, i, step, kind, agent="human", minutes=30):
            conn.execute(sa.text(
                "INSERT INTO lifecycle.engagement (message_id, journey, mode, step, channel, customer_id, kind, url, "
                "agent_class, occurred_at) VALUES (:m, :j, 'live', :step, 'email', :cid, :kind, :url, :agent, :at)"),
                {"m": mid, "j": JOURNEY, "step": step, "cid": customers[i].id, "kind": kind, "agent": agent,
                 "url": "https://shop.example.com/p/1" if kind == "click" else None,
                 "at": t0 + timedelta(hours=i, minutes=minutes)})

        # email_1: 16 sent, 2 suppressed, 2 expired; opens on 0-8 (human) + 3 privacy-proxy opens on 9-11,
        # human clicks on 0-4 + scanner clicks on 12-13 (not counted)
        email_1 = {}
        for i in range(20):
            status = "sent" if i < 16 else ("suppressed" if i < 18 else "expired")
            email_1[i] = message(i, "email_1", status, sent_at=t0 + timedelta(hours=i) if status == "sent" else None)
        for i in range(9):
            engage(email_1[i], i, "email_1", "open")
        for i in range(9, 12):
            engage(email_1[i], i, "email_1", "open", "privacy_proxy", minutes=1)
        for i in range(5):
            engage(email_1[i], i, "email_1", "click", minutes=40)
            engage(email_1[i], i, "email_1", "click", minutes=45)  # a second click on the same message: one message
        for i in range(12, 14):
            engage(email_1[i], i, "email_1", "click", "scanner", minutes=2)
        # email_2: an A/B test, 6 + 6 sends
        for i in range(12):
            variant = "A" if i % 2 == 0 else "B"
            mid = message(i, "email_2", "sent", variant, sent_at=t0 + timedelta(days=7, hours=i))
            if (variant == "A" and i in (0, 2, 4)) or (variant == "B" and i == 1):
                engage(mid, i, "email_2", "open", minutes=60 * 24 * 7 + 20)
            if variant == "A" and i in (0, 2):
                engage(mid, i, "email_2", "click", minutes=60 * 24 * 7 + 25)
        # conversions: three after an email_1 click (customers 5-7 did not click: use 2, 3, 4), one without a
        # click, one held-out customer
        for i, revenue, hours in ((2, 100, 3), (3, 50, 4), (4, 25, 5), (15, 12.5, 6), (21, 40, 6)):
            conn.execute(sa.text(
                "INSERT INTO lifecycle.conversions (enrollment_id, journey, mode, customer_id, condition, order_id, "
                "revenue, converted_at, holdout) VALUES (:e, :j, 'live', :cid, 'purchased_since_entry', :o, :rev, "
                ":at, :holdout)"),
                {"e": ids[i], "j": JOURNEY, "cid": customers[i].id, "o": f"o-{i}", "rev": revenue,
                 "at": t0 + timedelta(hours=i + hours), "holdout": i >= 20})
        # runs: two ok, one held; the last one ok
        for n, (status, error) in enumerate((("ok", None), ("held", "volume guard: 5200 new rows > limit 1000"),
                                             ("ok", None))):
            start = t0 + timedelta(days=n)
            conn.execute(sa.text(
                "INSERT INTO lifecycle.runs (journey, run_id, mode, interval_start, interval_end, status, rows_selected, "
                "rows_valid, rows_quarantined, rows_new, counts, error, started_at, finished_at) VALUES "
                "(:j, :r, 'live', :s, :e, :status, 40, 37, 3, 12, CAST(:counts AS jsonb), :error, :e, :e)"),
                {"j": JOURNEY, "r": f"scheduled__{start.isoformat()}", "s": start, "e": start + timedelta(days=1),
                 "status": status, "error": error, "counts": json.dumps({"sent": 16, "suppressed": 2})})
        last_run = f"scheduled__{(t0 + timedelta(days=2)).isoformat()}"
        for n, (key, reason) in enumerate((("k1", "email: not a valid address"), ("k2", "email: not a valid address"),
                                           ("k3", "one_active_per_customer: the customer already has an active "
                                                  "enrollment (K9) in this journey; this row waits until it ends"))):
            conn.execute(sa.text(
                "INSERT INTO lifecycle.quarantine (journey, run_id, mode, row_number, enrollment_key, customer_id, "
                "reasons, row_data) VALUES (:j, :r, 'live', :n, :key, :cid, ARRAY[:reason], CAST(:data AS jsonb))"),
                {"j": JOURNEY, "r": last_run, "n": n, "key": key, "cid": customers[n].id, "reason": reason,
                 "data": json.dumps({"email": "quarantined.address@example.org"})})
    addresses = {c.email for c in customers} | {c.phone for c in customers if c.phone}
    return {"addresses": addresses | {"quarantined.address@example.org"}}


@pytest.fixture(scope="module")
def planted(shop_db):
    engine, _, _ = shop_db
    return engine, plant(engine)


@pytest.fixture(scope="module")
def client(planted):
    from fastapi.testclient import TestClient

    from lifecycle.ui.app import create_app

    engine, _ = planted
    return TestClient(create_app(lambda: engine, require_login=False))


def _cell(html: str, table_attrs: str, row_attrs: str, metric: str) -> str:
    """The text of `<td data-metric=metric>` in the row `<tr row_attrs>` of the table `<table ... table_attrs>`."""
    table = re.search(rf"<table[^>]*{table_attrs}[^>]*>(.*?)</table>", html, re.S).group(1)
    row = re.search(rf"<tr {row_attrs}>(.*?)</tr>", table, re.S).group(1)
    return re.search(rf'<td data-metric="{metric}">([^<]*)</td>', row).group(1)


def test_the_page_shows_the_planted_funnel(client):
    response = client.get("/", params={"since": SINCE, "until": UNTIL})
    assert response.status_code == 200
    html = response.text
    table = f'class="funnel-table" data-journey="{JOURNEY}"'
    for metric, value in EMAIL_1.items():
        shown = _cell(html, table, 'data-step="email_1" data-variant=""', metric)
        assert shown == (f"€{value:,.2f}" if metric == "revenue" else str(value)), metric
    for variant, numbers in EMAIL_2.items():
        for metric, value in numbers.items():
            assert _cell(html, table, f'data-step="email_2" data-variant="{variant}"', metric) == str(value)
    assert _cell(html, table, 'data-step="" data-variant=""', "entered") == "20"
    assert _cell(html, table, 'data-step="" data-variant=""', "converted") == "1"
    # the chart draws the same numbers
    assert f'data-step="email_1" data-variant="" data-metric="clicked" data-value="{EMAIL_1["clicked"]}"' in html
    assert 'data-step="email_2" data-variant="A" data-metric="opened" data-value="3"' in html
    # the summary line adds the journey up: 3 attributed + 1 unattributed conversions, €187.50
    summary = re.search(rf'<tr data-journey="{JOURNEY}">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'data-metric="converted">4<', summary) and "€187.50" in summary
    assert re.search(r'data-metric="sent">28<', summary)  # 16 + 12


def test_the_page_shows_lift_ab_test_held_runs_and_quarantine(client):
    html = client.get("/", params={"since": SINCE, "until": UNTIL, "journey": JOURNEY}).text
    lift = re.search(r'<table class="lift"[^>]*>(.*?)</table>', html, re.S).group(1)
    assert '<td data-metric="treated_n">20</td>' in lift and '<td data-metric="holdout_n">5</td>' in lift
    assert '<td data-metric="treated_rate">20.0%</td>' in lift and '<td data-metric="holdout_rate">20.0%</td>' in lift
    assert "Newcombe" in html  # the method is stated
    ab = re.search(r'<table class="ab" data-step="email_2">(.*?)</table>', html, re.S).group(1)
    assert re.search(r'<tr data-variant="A"><td>A</td><td>6</td><td>6</td><td>2</td>', ab)
    assert "Decision: <b class=\"decision\">" in html and "fixed horizon" in html
    held = re.search(r'<table class="held">(.*?)</table>', html, re.S).group(1)
    assert "volume guard: 5200 new rows &gt; limit 1000" in held and held.count("<tr>") == 2  # header + 1 run
    quarantine = re.search(r'<table class="quarantine">(.*?)</table>', html, re.S).group(1)
    for reason, rows in QUARANTINE.items():
        assert f'<td class="reason">{reason}</td><td data-metric="rows">{rows}</td>' in quarantine
    assert "(K9)" not in html  # the enrollment key in the reason's detail is cut
    assert 'href="/dags/win_back" target="_top"' in html
    assert '<section class="journey" id="j-cart_abandonment"' not in html  # one journey asked for


def test_no_address_appears_on_the_page_or_in_its_json(client, planted):
    _, found = planted
    html = client.get("/", params={"since": SINCE, "until": UNTIL}).text
    body = client.get("/api/journeys", params={"since": SINCE, "until": UNTIL}).text
    leaked = [a for a in found["addresses"] if a and (a in html or a in body)]
    assert leaked == []
    assert "@" not in re.sub(r"<[^>]+>", "", html).replace("@media", "")


def test_the_json_has_the_same_numbers(client):
    data = client.get("/api/journeys", params={"since": SINCE, "until": UNTIL, "journey": JOURNEY}).json()
    (view,) = data["journeys"]
    row = next(r for r in view["funnel"] if r["step"] == "email_1")
    assert {k: row[k] for k in EMAIL_1} == EMAIL_1
    assert {k: view["lift"][k] for k in HOLDOUT} == HOLDOUT
    assert view["last_run"]["status"] == "ok" and view["runs"]["runs_held"] == 1
    assert data["since"] == "2026-11-01T00:00:00+00:00" and data["until"] == "2026-12-01T00:00:00+00:00"


def test_a_period_without_data_and_a_bad_period(client):
    html = client.get("/", params={"since": "2025-01-01", "until": "2025-01-31", "journey": JOURNEY}).text
    assert "No messages sent in this period." in html and "No held runs in this period." in html
    bad = client.get("/", params={"since": "2026-11-30", "until": "2026-11-01"})
    assert bad.status_code == 400 and "must be before until" in bad.text
    assert client.get("/api/journeys", params={"since": "yesterday"}).json() == {
        "error": "since: 'yesterday' is not a date (YYYY-MM-DD) or an ISO time"}


def test_the_query_layer_cannot_write(planted):
    from lifecycle.ui.data import read_only

    engine, _ = planted
    with read_only(engine) as conn, pytest.raises(sa.exc.InternalError, match="read-only transaction"):
        conn.exec_driver_sql("DELETE FROM lifecycle.runs")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM lifecycle.runs").scalar() == 3


def test_a_warehouse_without_the_lifecycle_schema_gets_a_sentence(scratch_engine):
    from fastapi.testclient import TestClient

    from lifecycle.ui.app import create_app

    response = TestClient(create_app(lambda: scratch_engine, require_login=False)).get("/")
    assert response.status_code == 200
    assert "The warehouse has no `lifecycle` schema yet" in response.text
    assert "lifecycle migrate" in response.text
