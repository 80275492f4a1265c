"""Backfills through a real Airflow, not `dag.test()`: an api-server, a scheduler
(LocalExecutor) and a dag-processor run as subprocesses (lifecycle_demo.airflow_procs), and
backfills replay past intervals of a journey against the demo shop (real PostgreSQL) and a real
SMTP server running in this test process. They are created through the REST API (the function
`airflow backfill create` calls, without a CLI process: 3-10 s each), except the one the engine's
advice names, which runs on the command line exactly as written.

Proves: a backfill replays one journey run per data interval (two daily intervals, the second
finding the first one's entrants already enrolled) and delivers each intended message once; the
scheduler leaves on each run the note its `summarize` task wrote (its messages by status, its
conversions: read back through the REST API and recomputed from the audit rows), and each run's
asset event carries the same counts; the same backfill again (reprocess behaviour `completed`)
re-runs every interval and sends nothing new; a backfill of one interval with the run conf
`{"dry_run": true}` records dry_run messages, says so in its note and delivers nothing; the
advice the engine's errors give for replaying an interval replays exactly that interval.

Backfills use max_active_runs 1 (`--max-active-runs 1`): a journey's intervals build on each other (a run plans
the steps of enrollments that earlier intervals made), so they must replay in order, as the
scheduler ran them. Airflow's default (10 at once) lets a later interval plan before an
earlier one has enrolled; the messages it misses go out on a later run instead.

Airflow runs with airflow_procs.TEST_SETTINGS (the DAG files parsed once). A backfill whose
runs all finished is closed through the REST API's cancel before the next one
of its DAG, instead of waiting up to 30 s for the scheduler to mark it complete (Airflow allows
one unfinished backfill per DAG).
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import _fresh_database

from lifecycle_demo.airflow_procs import TEST_SETTINGS, Airflow, private_env

# Starting a whole Airflow is slow: this module runs on the embedded warehouse only (the
# engine's SQL runs on both servers in test_dags.py and the other modules).
pytestmark = [pytest.mark.parametrize("shop_db", ["embedded"], indirect=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def metadata_db(embedded_server_url):
    """Airflow's metadata DB: a fresh database on the embedded PostgreSQL. On SQLite, the
    scheduler runs these DAGs too, but `airflow backfill create` failed with "database is
    locked" while the scheduler was writing (SQLite allows one writer at a time)."""
    url, drop = _fresh_database(embedded_server_url)
    yield url
    drop()


@pytest.fixture(scope="module")
def airflow(shop_db, metadata_db):
    """A running Airflow whose tasks use this module's demo shop and SMTP server."""
    from lifecycle.dag_factory import POOLS
    from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

    engine, planted, anchor = shop_db
    state_dir = Path(tempfile.mkdtemp(prefix="lifecycle-backfill-"))
    smtp = RecordingSMTPServer().start()
    af = Airflow(private_env(state_dir, engine.url.render_as_string(hide_password=False), smtp.port, metadata_db,
                             **TEST_SETTINGS))
    try:
        t0 = time.monotonic()
        af.start()
        af.wait_until_ready(["review_request", "win_back", "birthday_ask"])
        af.create_pools(POOLS)  # the pools the send tasks run in
        print(f"\nairflow: migrated, started and DAGs served in {time.monotonic() - t0:.1f}s")
        yield af, engine, smtp
        for dag_id in ("review_request", "win_back", "birthday_ask"):  # where the time went (pytest -s)
            print("\n".join(af.timeline(dag_id, run) for run in af.dag_runs(dag_id)))
    finally:
        af.stop()
        smtp.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def day(d: int) -> datetime:
    return datetime(2026, 11, d, tzinfo=UTC)


def expected_note(engine, journey: str, run_id: str) -> str:
    """The note a run's `summarize` should leave (README, "DAG run note"), from the audit rows:
    the messages the run ended up owning by status (sent, or would-send on a dry run, always;
    the others when there are some), then the conversions credited in its interval."""
    from lifecycle.ui.run_note import euros

    mode, start, end = rows(engine, "SELECT mode, interval_start, interval_end FROM lifecycle.runs "
                                    "WHERE journey = :j AND run_id = :r", j=journey, r=run_id)[0]
    statuses = dict(rows(engine, "SELECT status, count(*) FROM lifecycle.messages WHERE journey = :j "
                                 "AND (run_id = :r OR (planned_run_id = :r AND run_id IS NULL)) GROUP BY status",
                         j=journey, r=run_id))
    conversions = dict(rows(engine, "SELECT order_id, revenue FROM lifecycle.conversions WHERE journey = :j "
                                    "AND NOT holdout AND converted_at > :s AND converted_at <= :e",
                            j=journey, s=start, e=end))  # an order counts once
    revenue = sum(conversions.values(), Decimal(0))
    first = f"would send {statuses.get('dry_run', 0)}" if mode == "dry" else f"sent {statuses.get('sent', 0)}"
    parts = [first] + [f"{s} {statuses[s]}" for s in ("suppressed", "skipped", "expired", "failed") if statuses.get(s)]
    parts += [f"converted {len(conversions)}"] + ([euros(float(revenue))] if revenue else [])
    return ("dry run: " if mode == "dry" else "") + " · ".join(parts)


def assert_notes_and_asset_events(af: Airflow, engine, journey: str, runs: list[dict]) -> None:
    """Under the real scheduler, each run carries its note (the plugin's listener copied it from
    `summarize`'s XCom when the run ended), and its latest asset event the same counts."""
    for run in runs:
        assert run["note"] == expected_note(engine, journey, run["dag_run_id"]), run
        events = af.get("assets/events", source_dag_id=journey, source_run_id=run["dag_run_id"],
                        order_by="-timestamp")["asset_events"]
        assert events and events[0]["uri"] == f"lifecycle://runs/{journey}", events
        extra = events[0]["extra"]
        statuses = dict(rows(engine, "SELECT status, count(*) FROM lifecycle.messages WHERE journey = :j "
                                     "AND (run_id = :r OR (planned_run_id = :r AND run_id IS NULL)) GROUP BY status",
                             j=journey, r=run["dag_run_id"]))
        assert extra["run_id"] == run["dag_run_id"] and extra["status"] == "ok", extra
        assert extra["messages"] == statuses and extra["sent"] == statuses.get("sent", 0), extra
        assert datetime.fromisoformat(extra["interval_end"]) == datetime.fromisoformat(run["data_interval_end"])


def test_backfill_replays_each_interval_and_the_same_backfill_again_sends_nothing_new(airflow):
    af, engine, smtp = airflow
    from lifecycle.channels.email import message_id_for

    af.unpause("review_request")  # the scheduler runs no task of a paused DAG
    # An interval timetable: --from-date/--to-date select *logical dates* (= interval starts),
    # both inclusive. 18 and 19 are the daily intervals [18, 19) and [19, 20); the last one ends
    # at the demo shop's anchor. Requests come due with a 3-day lookback, so the second interval
    # selects orders the first one already enrolled, as well as new ones.
    window = {"from_date": "2026-11-18", "to_date": "2026-11-19", "max_active_runs": 1}
    intervals = [(day(d), day(d + 1)) for d in (18, 19)]

    first = af.backfill("review_request", **window)
    runs = af.dag_runs("review_request")
    assert [r["state"] for r in runs] == ["success"] * 2, af.explain_failures("review_request", runs)
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert [(datetime.fromisoformat(r["data_interval_start"]), datetime.fromisoformat(r["data_interval_end"]))
            for r in runs] == intervals
    run_ids = [r["dag_run_id"] for r in runs]

    audit = rows(engine, "SELECT run_id, interval_start, interval_end, status, mode, finished_at "
                         "FROM lifecycle.runs WHERE journey = 'review_request' ORDER BY interval_start")
    assert [(a.run_id, a.interval_start, a.interval_end, a.status, a.mode) for a in audit] == [
        (run_id, start, end, "ok", "live") for run_id, (start, end) in zip(run_ids, intervals, strict=True)]

    sent = rows(engine, """
        SELECT m.idempotency_key, m.step, m.run_id, c.email FROM lifecycle.messages m
        JOIN shop.customers c ON c.customer_id::text = m.customer_id
        WHERE m.journey = 'review_request' AND m.status = 'sent'""")
    assert {m.run_id for m in sent} == set(run_ids), "each interval has review requests due"
    assert scalar(engine, "SELECT count(*) FROM lifecycle.messages WHERE status IN ('planned', 'claimed')") == 0
    received = list(smtp.messages)
    # Every intended message arrived exactly once: the Message-ID derives from the idempotency
    # key (journey, enrollment, step, channel). The entry key is the order, so a customer with
    # two orders due gets two requests: (recipient, step) pairs match the audit, not unique.
    got_ids = Counter(m.message()["Message-ID"] for m in received)
    assert got_ids == Counter(message_id_for(m.idempotency_key) for m in sent)
    assert max(got_ids.values()) == 1
    got_pairs = Counter((rcpt.lower(), m.message()["X-Lifecycle-Step"]) for m in received for rcpt in m.rcpt_tos)
    assert got_pairs == Counter((m.email.lower(), m.step) for m in sent)
    assert_notes_and_asset_events(af, engine, "review_request", runs)
    assert all(r["note"].startswith("sent ") and r["note"] != "sent 0" for r in runs), runs

    # The same backfill again: Airflow clears and re-runs every interval (same run ids) ...
    second = af.backfill("review_request", **window, reprocess="completed")
    assert second["id"] != first["id"]
    rerun = af.dag_runs("review_request")
    assert [r["dag_run_id"] for r in rerun] == run_ids
    assert [r["state"] for r in rerun] == ["success"] * 2, af.explain_failures("review_request", rerun)
    created = datetime.fromisoformat(second["created_at"])
    assert all(datetime.fromisoformat(r["start_date"]) > created for r in rerun)
    audit_again = rows(engine, "SELECT run_id, status, finished_at FROM lifecycle.runs "
                               "WHERE journey = 'review_request' ORDER BY interval_start")
    assert [(a.run_id, a.status) for a in audit_again] == [(run_id, "ok") for run_id in run_ids]
    assert all(new.finished_at > old.finished_at for new, old in zip(audit_again, audit, strict=True))
    # ... and nothing new goes out.
    new = rows(engine, "SELECT idempotency_key, status, planned_run_id, run_id FROM lifecycle.messages "
                       "WHERE created_at > :t OR sent_at > :t", t=second["created_at"])
    assert len(smtp.messages) == len(received), new
    assert scalar(engine, "SELECT count(*) FROM lifecycle.messages "
                          "WHERE journey = 'review_request' AND status = 'sent'") == len(sent), new
    # The re-runs' notes and asset events (a second event per run) still say what each run did.
    assert_notes_and_asset_events(af, engine, "review_request", rerun)
    assert all(len(af.get("assets/events", source_dag_id="review_request", source_run_id=r)["asset_events"]) == 2
               for r in run_ids)


def test_dry_run_backfill_records_messages_and_delivers_nothing(airflow):
    af, engine, smtp = airflow
    delivered_before = len(smtp.messages)
    af.unpause("win_back")
    af.backfill("win_back", "2026-11-19", "2026-11-19", max_active_runs=1, conf={"dry_run": True})
    runs = af.dag_runs("win_back")
    assert [r["state"] for r in runs] == ["success"], af.explain_failures("win_back", runs)
    assert all(r["conf"] == {"dry_run": True} for r in runs)

    audit = rows(engine, "SELECT interval_start, mode, status FROM lifecycle.runs "
                         "WHERE journey = 'win_back' ORDER BY interval_start")
    assert [tuple(a) for a in audit] == [(day(19), "dry", "ok")]
    by_status = dict(rows(engine, "SELECT mode || ':' || status, count(*) FROM lifecycle.messages "
                                  "WHERE journey = 'win_back' GROUP BY 1"))
    assert by_status.get("dry:dry_run", 0) > 0, by_status
    assert not [k for k in by_status if not k.startswith("dry:")], by_status  # no live message at all
    assert "dry:sent" not in by_status, by_status
    assert len(smtp.messages) == delivered_before
    assert_notes_and_asset_events(af, engine, "win_back", runs)
    assert runs[0]["note"].startswith(f"dry run: would send {by_status['dry:dry_run']} · "), runs[0]

    # The validate task's log (a real worker's file) says what it checked, without GX's noise.
    # Backfill run ids (backfill__<date>) repeat across DAGs: an earlier test of the module backfilled
    # another journey over the same dates, so the row is picked by journey as well.
    selected = scalar(engine, "SELECT rows_selected FROM lifecycle.runs "
                              "WHERE journey = 'win_back' AND run_id = :r AND mode = 'dry'", r=runs[0]["dag_run_id"])
    line = f"selected {selected}, valid {selected}, quarantined 0, held no"
    log = af.task_log("win_back", runs[0]["dag_run_id"], "validate", wait_for=line)
    assert f"selected {selected}, valid {selected}, quarantined 0, held no" in log, log
    assert "great_expectations" not in log, log


def start_run_log(af: Airflow, dag_id: str, run_id: str) -> str:
    return af.task_log(dag_id, run_id, "start_run")


def follow(af: Airflow, dag_id: str, command: str) -> None:
    """Run the `airflow ...` command an error message advises, then wait for its runs."""
    args = shlex.split(command)
    assert args[0] == "airflow", command
    if args[1] == "backfill":  # one unfinished backfill per DAG
        af.close_finished_backfills(dag_id)
    af.cli(*args[1:])
    af.wait_for_runs(dag_id, f"the runs of `{command}`")


def test_the_advice_for_replaying_an_interval_replays_exactly_that_interval(airflow):
    """Issue 10 item 7: in Airflow 3.3 `airflow dags trigger --logical-date X` runs the latest
    finished interval, not X's. The engine's errors must advise a command that replays X."""
    af, engine, smtp = airflow
    dag_id = "birthday_ask"
    af.unpause(dag_id)

    # A manual trigger without a logical date has no data interval: the run fails and says how to replay one.
    af.request("POST", f"dags/{dag_id}/dagRuns", {"logical_date": None})
    af.wait_for_runs(dag_id, "the triggered run")
    (failed,) = af.dag_runs(dag_id)
    assert failed["state"] == "failed" and failed["data_interval_start"] is None
    message = start_run_log(af, dag_id, failed["dag_run_id"])
    assert "this run has no data interval" in message, message[-3000:]
    advice = re.search(r"`(airflow [^`]*<interval start>[^`]*)`", message)
    assert advice, message[-3000:]

    follow(af, dag_id, advice[1].replace("<interval start>", "2026-11-17"))
    replayed = [r for r in af.dag_runs(dag_id) if r["dag_run_id"] != failed["dag_run_id"]]
    assert [(r["state"], r["data_interval_start"][:10], r["data_interval_end"][:10]) for r in replayed] == [
        ("success", "2026-11-17", "2026-11-18")], af.explain_failures(dag_id, replayed)
    assert rows(engine, "SELECT interval_start, interval_end, status FROM lifecycle.runs WHERE journey = :j",
                j=dag_id) == [(day(17), day(18), "ok")]

    # The old advice, `dags trigger --logical-date`: Airflow gives the run the latest interval, so
    # the engine refuses it (nothing done) and names the command that replays the date asked for.
    af.cli("dags", "trigger", dag_id, "--logical-date", "2026-11-18T00:00:00+00:00")
    af.wait_for_runs(dag_id, "the triggered run")
    (wrong,) = [r for r in af.dag_runs(dag_id) if (r["logical_date"] or "").startswith("2026-11-18")]
    assert wrong["state"] == "failed" and not wrong["data_interval_start"].startswith("2026-11-18")
    message = start_run_log(af, dag_id, wrong["dag_run_id"])
    assert "was given the logical date 2026-11-18T00:00:00+00:00, but Airflow gave it the interval" in message
    assert len(rows(engine, "SELECT 1 FROM lifecycle.runs WHERE journey = :j", j=dag_id)) == 1  # nothing done
    advice = re.search(r"`(airflow backfill create [^`]*--from-date 2026-11-18 [^`]*)`", message)
    assert advice, message[-3000:]
    assert f"DELETE /api/v2/dags/{dag_id}/dagRuns/{wrong['dag_run_id']}" in message
    delete = urllib.request.Request(f"{af.api}/api/v2/dags/{dag_id}/dagRuns/{wrong['dag_run_id']}", method="DELETE")
    urllib.request.urlopen(delete, timeout=30).close()
    follow(af, dag_id, advice[1])
    assert rows(engine, "SELECT interval_start, interval_end, status FROM lifecycle.runs WHERE journey = :j "
                        "ORDER BY interval_start", j=dag_id) == [(day(17), day(18), "ok"), (day(18), day(19), "ok")]
