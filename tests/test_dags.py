"""Airflow runs the DAGs: DagBag import, broken-file isolation, and real DAG runs
(`dag.test()` on a real metadata DB) against real PostgreSQL and a real SMTP server."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle.config import PROJECT_DIR, SEGMENTS_DIR
from lifecycle.warehouse import airflow_conn_json

# The DAG runs use the embedded server; the first one also runs on the PostgreSQL service, a separate
# server over TCP: what Airflow's connection to the warehouse needs (host, port, login) is proven there.
# The rest (retries, dry runs, asset events, failed sends, audiences) is the same on either server.
SHOP_SERVERS = ("embedded",)
pytestmark = pytest.mark.slow  # runs DAGs through Airflow (dag.test)

JOURNEYS = {
    "cart_abandonment", "win_back", "review_request", "browse_abandonment", "birthday", "birthday_ask", "welcome",
    "upsell", "cross_sell", "seasonal_offer", "replenishment", "referral", "order_notifications",
    "product_recommendations", "behaviour_discount", "just_because",
}
DISPATCH = "lifecycle_dispatch"


def dagbag(folder=PROJECT_DIR / "dags"):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_every_dag_file_imports_without_errors_and_without_touching_the_network(monkeypatch):
    # An unreachable warehouse: parsing must not notice, because it never connects.
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", json.dumps({"conn_type": "postgres", "host": "10.255.255.1"}))
    bag = dagbag()  # how long parsing takes: benchmarks/journey_replays.py
    assert bag.import_errors == {}
    assert set(bag.dags) == JOURNEYS | {DISPATCH}
    dispatch = bag.dags[DISPATCH]
    assert {t.task_id for t in dispatch.tasks} == {
        "collect", "batches_email", "send_email", "batches_sms", "send_sms", "batches_push", "send_push",
        "batches_transactional_email", "send_transactional_email"}
    # left-behind order confirmations never queue behind marketing sends
    assert dispatch.get_task("send_transactional_email").pool == "lifecycle_transactional"
    assert dispatch.get_task("send_email").pool == "lifecycle_email"
    for dag_id in JOURNEYS:
        dag = bag.dags[dag_id]
        assert type(dag.timetable).__name__ == "CronDataIntervalTimetable", dag_id
        assert {"dry_run", "approve_volume"} <= set(dag.params.keys())
        send = dag.get_task("send_email")
        assert send.pool == ("lifecycle_transactional" if dag_id == "order_notifications" else "lifecycle_email")
        assert [t.task_id for t in dag.topological_sort()][:6] == [
            "start_run", "stage_segment", "validate", "enroll", "evaluate_exits", "plan_messages"]
    assert bag.dags["cart_abandonment"].timetable.expression == "0 * * * *"
    assert bag.dags["win_back"].timetable.expression == "0 0 * * *"


def test_a_broken_segment_file_fails_alone_with_a_clear_message(tmp_path, airflow_db):
    from lifecycle.dag_factory import build_dags

    shutil.copy(SEGMENTS_DIR / "cart_abandonment.sql", tmp_path)
    broken = (SEGMENTS_DIR / "win_back.sql").read_text().replace("after: 7d", "after: a week")
    (tmp_path / "win_back.sql").write_text(broken)
    (tmp_path / "no_header.sql").write_text("SELECT 1 AS customer_id\n")

    dags = build_dags(tmp_path)

    assert set(dags) == {"cart_abandonment", "win_back", "no_header", "lifecycle_dispatch"}
    assert "broken" not in dags["cart_abandonment"].tags
    assert "broken" in dags["win_back"].tags
    assert "win_back.sql: steps[1] (email_2).after: 'a week' is not a duration" in dags["win_back"].description
    assert "must start with a header comment" in dags["no_header"].description
    # The stand-in DAG's task fails with the same message, visible in the run's log and state.
    run = dags["win_back"].test()
    assert run.state == "failed"
    (ti,) = run.get_task_instances()
    assert ti.task_id == "report_segment_error" and ti.state == "failed"


@pytest.fixture()
def meta_server():
    from lifecycle_demo.sinks.meta_server import MetaAudienceServer

    with MetaAudienceServer(access_token="local-token") as server:
        yield server


@pytest.fixture()
def airflow_env(shop_db, airflow_db, smtp_server, meta_server, monkeypatch):
    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_META", json.dumps(
        {"conn_type": "http", "host": meta_server.base_url, "password": "local-token"}))
    monkeypatch.setenv("LIFECYCLE_CLOCK", "as_of")  # these runs replay November 2026 as if on time
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", airflow_conn_json(engine.url.render_as_string(hide_password=False)))
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_server.port,
         "extra": {"disable_ssl": True, "disable_tls": True}}))
    return engine, planted, anchor, smtp_server, dagbag()


def count(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


@pytest.mark.shop_servers("embedded", "service")  # the warehouse connection over TCP, too
def test_journey_runs_through_airflow_and_a_rerun_sends_nothing_new(airflow_env):
    engine, planted, anchor, smtp, bag = airflow_env
    dag = bag.dags["cart_abandonment"]
    ends = [anchor - timedelta(hours=h) for h in (2, 1, 0)]
    for end in ends:
        assert dag.test(logical_date=end).state == "success"
    sent = count(engine, "SELECT count(*) FROM lifecycle.messages WHERE status = 'sent'")
    assert sent == len(smtp.messages) > 0
    runs = count(engine, "SELECT count(*) FROM lifecycle.runs WHERE journey = 'cart_abandonment' AND status = 'ok'")
    assert runs == 3
    assert planted["cart_recent"].email in {r for m in smtp.messages for r in m.rcpt_tos}

    # The same interval again (a cleared run, a duplicate trigger): nothing new goes out.
    assert dag.test(logical_date=ends[-1]).state == "success"
    assert len(smtp.messages) == sent
    assert count(engine, "SELECT count(*) FROM lifecycle.messages WHERE status = 'sent'") == sent


def test_airflow_retries_a_send_task_after_a_partial_batch_without_doubling(airflow_env):
    engine, planted, anchor, smtp, bag = airflow_env
    dag = bag.dags["review_request"]
    dag.get_task("send_email").retry_delay = timedelta(0)
    smtp.fail_nth[2] = "451 4.3.0 try again later"
    run = dag.test(logical_date=anchor)
    assert run.state == "success"
    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    assert tis[("send_email", 0)].try_number == 2  # Airflow retried the task once
    rcpts = [r for m in smtp.messages for r in m.rcpt_tos]
    assert len(rcpts) == len(set(rcpts)) > 1
    assert count(engine, "SELECT count(*) FROM lifecycle.messages WHERE status = 'sent'") == len(rcpts)
    assert count(engine, "SELECT count(*) FROM lifecycle.messages WHERE status IN ('planned', 'claimed')") == 0


def test_dry_run_records_without_delivering_and_leaves_live_sends_intact(airflow_env):
    engine, planted, anchor, smtp, bag = airflow_env
    dag = bag.dags["review_request"]
    assert dag.test(logical_date=anchor, run_conf={"dry_run": True}).state == "success"
    dry = count(engine, "SELECT count(*) FROM lifecycle.messages WHERE mode = 'dry' AND status = 'dry_run'")
    assert dry > 0 and smtp.messages == []
    assert count(engine, "SELECT count(*) FROM lifecycle.messages WHERE mode = 'live'") == 0

    assert dag.test(logical_date=anchor).state == "success"
    live_sent = count(engine, "SELECT count(*) FROM lifecycle.messages WHERE mode = 'live' AND status = 'sent'")
    assert live_sent == len(smtp.messages) > 0
    # The preview predicted exactly the live outcome for this interval.
    with engine.connect() as conn:
        dry_keys = set(conn.execute(sa.text(
            "SELECT substr(idempotency_key, 5) FROM lifecycle.messages WHERE mode = 'dry' AND status = 'dry_run'")).scalars())
        live_keys = set(conn.execute(sa.text(
            "SELECT idempotency_key FROM lifecycle.messages WHERE mode = 'live' AND status = 'sent'")).scalars())
    assert dry_keys == live_keys


def test_runs_record_an_asset_event_per_journey_run(airflow_env):
    engine, planted, anchor, smtp, bag = airflow_env
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        before = session.query(AssetEvent).count()
    assert bag.dags["win_back"].test(logical_date=anchor).state == "success"
    with create_session() as session:
        uris = [event.asset.uri for event in session.query(AssetEvent).order_by(AssetEvent.id)]
    assert len(uris) == before + 1
    assert uris[-1] == "lifecycle://runs/win_back"


def test_a_run_whose_sends_fail_is_recorded_failed_and_its_messages_wait(airflow_env, monkeypatch):
    engine, planted, anchor, smtp, bag = airflow_env
    dag = bag.dags["review_request"]
    dag.get_task("send_email").retries = 0
    # Nothing listens on this port: every send task fails without delivering anything.
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": 9, "extra": {"disable_ssl": True, "disable_tls": True}}))
    run = dag.test(logical_date=anchor)
    assert run.state == "failed"
    with engine.connect() as conn:
        status, error = conn.execute(sa.text("SELECT status, error FROM lifecycle.runs")).one()
        waiting = conn.execute(sa.text("SELECT message_id FROM lifecycle.messages WHERE status = 'planned'")).scalars().all()
    assert status == "failed" and "send_email" in error
    assert waiting and smtp.messages == []

    # The next run of the journey picks the waiting messages up: nothing was lost.
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port, "extra": {"disable_ssl": True, "disable_tls": True}}))
    assert dag.test(logical_date=anchor + timedelta(days=1)).state == "success"
    with engine.connect() as conn:
        ended = dict(conn.execute(sa.text("SELECT message_id, status FROM lifecycle.messages WHERE message_id = ANY(:ids)"),
                                  {"ids": waiting}).all())
        sent = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE status = 'sent'")).scalar()
    # Every waiting message ended: most sent, a few skipped (a review came in between and ended the enrollment).
    assert set(ended.values()) <= {"sent", "skipped", "suppressed", "expired"} and "sent" in ended.values()
    assert sent == len(smtp.messages)


def test_cart_abandoners_are_kept_in_step_with_the_meta_audience(airflow_env, meta_server):
    engine, planted, anchor, smtp, bag = airflow_env
    dag = bag.dags["cart_abandonment"]
    audience = "120000000000001"  # from the segment file's header
    for hours in (26, 25, 24):
        assert dag.test(logical_date=anchor - timedelta(hours=hours)).state == "success"
    # Who should be in the audience, from the shop's consent table: active members with ads consent.
    expected = count(engine, """
        SELECT count(DISTINCT e.customer_id) FROM lifecycle.enrollments e
        JOIN shop.consents k ON k.customer_id::text = e.customer_id AND k.channel = 'ads' AND k.status = 'opted_in'
        WHERE e.journey = 'cart_abandonment' AND e.status = 'active' AND NOT e.holdout""")
    assert len(meta_server.audience(audience)) == expected
    requests_before = len(meta_server.requests)
    # A replay of the same interval changes nothing and sends nothing to Meta.
    assert dag.test(logical_date=anchor - timedelta(hours=24)).state == "success"
    assert len(meta_server.requests) == requests_before
    # Later, carts that converted have left the journey, and the audience with them.
    assert dag.test(logical_date=anchor).state == "success"
    after = count(engine, """
        SELECT count(DISTINCT e.customer_id) FROM lifecycle.enrollments e
        JOIN shop.consents k ON k.customer_id::text = e.customer_id AND k.channel = 'ads' AND k.status = 'opted_in'
        WHERE e.journey = 'cart_abandonment' AND e.status = 'active' AND NOT e.holdout""")
    assert len(meta_server.audience(audience)) == after
    # The table of record agrees with Meta, member for member.
    members = count(engine, "SELECT count(*) FROM lifecycle.audience_members WHERE removed_at IS NULL")
    assert members == after
