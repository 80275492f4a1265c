"""The `summarize` task's one-line DAG run note and its Asset event's `extra`: a journey run through
Airflow (`dag.test()` on a real metadata DB, real PostgreSQL and SMTP), then the note and the event read
back from Airflow's metadata DB and compared with the warehouse's audit rows."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle.ui.run_note import euros, note_text
from lifecycle.warehouse import airflow_conn_json


def test_the_note_reads_like_the_issue_asks():
    figures = {"mode": "live", "messages": {"sent": 65, "suppressed": 30, "expired": 89}, "converted": 3,
               "revenue": 412.0}
    assert note_text(figures) == "sent 65 · suppressed 30 · expired 89 · converted 3 · €412"
    assert note_text({**figures, "revenue": 0, "converted": 0, "messages": {}}) == "sent 0 · converted 0"
    held = {**figures, "status": "held", "rows_new": 5200, "messages": {}, "converted": 0, "revenue": 0}
    assert note_text(held, ["validate"]).startswith("HELD by the volume guard: 5200 new rows")
    assert note_text(figures, ["send_email"]).startswith("FAILED: send_email · sent 65")
    dry = {"mode": "dry", "messages": {"dry_run": 12, "skipped": 2}, "converted": 0, "revenue": 0}
    assert note_text(dry) == "dry run: would send 12 · skipped 2 · converted 0"
    assert euros(12.5) == "€12.50" and euros(1234.0) == "€1,234"


@pytest.fixture()
def airflow_env(shop_db, airflow_db, smtp_server, monkeypatch):
    from airflow.listeners.listener import get_listener_manager

    from lifecycle.ui import run_note_listener

    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    monkeypatch.setenv("LIFECYCLE_CLOCK", "as_of")
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", airflow_conn_json(engine.url.render_as_string(hide_password=False)))
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_server.port,
         "extra": {"disable_ssl": True, "disable_tls": True}}))
    # What plugins/lifecycle_plugin.py registers in the scheduler (this session's Airflow has no plugins folder).
    manager = get_listener_manager()
    if not manager.pm.is_registered(run_note_listener):
        manager.add_listener(run_note_listener)
    from airflow.dag_processing.dagbag import DagBag

    from lifecycle.config import PROJECT_DIR

    return engine, anchor, smtp_server, DagBag(dag_folder=str(PROJECT_DIR / "dags"))


@pytest.mark.slow
def test_a_run_leaves_its_note_and_its_counts_in_the_asset_event(airflow_env):
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    engine, anchor, smtp, bag = airflow_env
    dag = bag.dags["review_request"]
    for task in dag.tasks:
        task.retries = 0  # a failure shows at once, not after Airflow's retry delays
    run = dag.test(logical_date=anchor)
    assert run.state == "success"
    with engine.connect() as conn:
        sent = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE run_id = :r AND status = 'sent'"),
                            {"r": run.run_id}).scalar()
        statuses = dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM lifecycle.messages WHERE run_id = :r OR (planned_run_id = :r AND run_id IS NULL) "
            "GROUP BY status"), {"r": run.run_id}).all())
        start, end = conn.execute(sa.text("SELECT interval_start, interval_end FROM lifecycle.runs WHERE run_id = :r"),
                                  {"r": run.run_id}).one()
        conversions = conn.execute(sa.text(
            "SELECT order_id, revenue FROM lifecycle.conversions WHERE journey = 'review_request' AND NOT holdout "
            "AND converted_at > :s AND converted_at <= :e"), {"s": start, "e": end}).all()
    assert 0 < sent <= len(smtp.messages)
    revenue = sum({order: amount for order, amount in conversions}.values(), Decimal(0))
    with create_session() as session:
        note = session.scalar(sa.select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run.run_id)).note
        event = session.scalars(sa.select(AssetEvent).where(AssetEvent.source_run_id == run.run_id)
                                .order_by(AssetEvent.id.desc())).first()
        extra = dict(event.extra)
        uri = event.asset.uri
    expected = [f"sent {sent}"] + [f"{s} {statuses[s]}" for s in ("suppressed", "skipped", "expired", "failed")
                                   if statuses.get(s)]
    expected += [f"converted {len(conversions)}"] + ([euros(float(revenue))] if revenue else [])
    assert note == " · ".join(expected)
    assert uri == "lifecycle://runs/review_request"
    assert extra["sent"] == sent and extra["messages"] == statuses
    assert extra["converted"] == len(conversions) and extra["revenue"] == float(revenue)
    assert extra["run_id"] == run.run_id and extra["status"] == "ok" and extra["interval_end"] == end.isoformat()
