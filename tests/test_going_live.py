"""Going live is a decision (issue 10 item 6): a journey is a draft until promoted, a draft runs
every interval as a dry run (through Airflow, against real PostgreSQL and a real SMTP server),
`lifecycle promote` flips one header line, and a run refuses to start or plan while an earlier
interval of the same journey and mode is unfinished."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle

from lifecycle import run_audit
from lifecycle.cli import main
from lifecycle.config import SEGMENTS_DIR
from lifecycle.run_context import RunContext
from lifecycle.spec import SpecError, discover, load_spec
from lifecycle.warehouse import airflow_conn_json


def segment_copy(tmp_path, journey: str, edit=lambda text: text):
    """A copy of a shipped segment file in its own segments dir, edited."""
    path = tmp_path / f"{journey}.sql"
    path.write_text(edit((SEGMENTS_DIR / f"{journey}.sql").read_text()))
    return path


def without_status(text: str) -> str:
    return text.replace("status: live\n", "", 1)


# ---------------------------------------------------------------------------- the header key
def test_every_shipped_journey_is_live_and_a_journey_without_status_is_a_draft(tmp_path):
    assert {load_spec(p).status for p in discover()} == {"live"}
    assert load_spec(segment_copy(tmp_path, "win_back", without_status)).status == "draft"


def test_a_status_other_than_draft_or_live_is_a_clear_error(tmp_path):
    path = segment_copy(tmp_path, "win_back", lambda t: t.replace("status: live", "status: paused"))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.problems == ["status: must be draft (runs as a dry run, delivers nothing) or live, got 'paused'"]


# ---------------------------------------------------------------------------- lifecycle promote
def promote(tmp_path, journey: str, capsys) -> tuple[int, str]:
    code = main(["promote", journey, "--segments-dir", str(tmp_path)])
    return code, capsys.readouterr().out


def test_promote_adds_status_live_after_the_journey_line_and_changes_nothing_else(tmp_path, capsys):
    path = segment_copy(tmp_path, "win_back", without_status)
    before = path.read_bytes()

    code, out = promote(tmp_path, "win_back", capsys)

    assert code == 0
    assert out.startswith(f"promoted win_back: {path} now says `status: live` "
                          "(was draft: the header had no status: key)")
    after = path.read_bytes()
    assert after == before.replace(b"journey: win_back\n", b"journey: win_back\nstatus: live\n", 1)
    assert load_spec(path).status == "live"


def test_promote_rewrites_a_draft_status_in_place_keeping_its_comment(tmp_path, capsys):
    path = segment_copy(tmp_path, "cart_abandonment",
                        lambda t: t.replace("status: live\n", "status:  draft   # watch it for a week first\n"))
    before = path.read_bytes()

    code, out = promote(tmp_path, "cart_abandonment", capsys)

    assert code == 0 and "(was draft)" in out
    assert path.read_bytes() == before.replace(b"status:  draft   # watch", b"status:  live   # watch", 1)
    # again: nothing to do, and it says so
    assert promote(tmp_path, "cart_abandonment", capsys) == (
        0, f"cart_abandonment is already live ({path}); nothing changed\n")


def test_promote_refuses_a_broken_file_and_leaves_it_alone(tmp_path, capsys):
    path = segment_copy(tmp_path, "win_back", lambda t: without_status(t).replace("after: 7d", "after: a week"))
    before = path.read_bytes()

    code, out = promote(tmp_path, "win_back", capsys)

    assert code == 1
    assert out.startswith("win_back.sql is broken, not promoted (file unchanged): steps[1] (email_2).after: "
                          "'a week' is not a duration")
    assert path.read_bytes() == before
    assert promote(tmp_path, "no_such_journey", capsys)[0] == 1


# ---------------------------------------------------------------------------- a draft through Airflow
@pytest.fixture()
def airflow_env(shop_db, airflow_db, smtp_server, monkeypatch):
    from lifecycle_demo.sinks.meta_server import MetaAudienceServer

    engine, planted, anchor = shop_db
    reset_lifecycle(engine)
    meta = MetaAudienceServer(access_token="local-token")  # cart_abandonment keeps a Meta audience
    meta.__enter__()
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_META", json.dumps(
        {"conn_type": "http", "host": meta.base_url, "password": "local-token"}))
    monkeypatch.setenv("LIFECYCLE_CLOCK", "as_of")  # these runs replay November 2026 as if on time
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_WAREHOUSE", airflow_conn_json(engine.url.render_as_string(hide_password=False)))
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_server.port,
         "extra": {"disable_ssl": True, "disable_tls": True}}))
    yield engine, planted, anchor, smtp_server
    meta.__exit__(None, None, None)


def by_mode_and_status(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT mode || ':' || status, count(*) FROM lifecycle.messages "
            "WHERE journey = 'cart_abandonment' GROUP BY 1")).all())


@pytest.mark.slow  # runs DAGs through Airflow (dag.test), like test_dags.py
def test_a_draft_journey_records_dry_runs_through_airflow_and_delivers_once_promoted(airflow_env, tmp_path, capsys):
    from lifecycle.dag_factory import build_dags

    engine, planted, anchor, smtp = airflow_env
    segment_copy(tmp_path, "cart_abandonment", without_status)  # a new journey, as an analyst adds it
    draft = build_dags(tmp_path)["cart_abandonment"]
    assert "draft" in draft.tags

    # Unpaused and scheduled, with no dry_run asked for: the draft runs dry.
    for end in (anchor - timedelta(hours=2), anchor - timedelta(hours=1)):
        assert draft.test(logical_date=end).state == "success"

    assert smtp.messages == []
    dry = by_mode_and_status(engine)
    assert dry.get("dry:dry_run", 0) > 0 and all(k.startswith("dry:") for k in dry), dry
    with engine.connect() as conn:
        recorded = conn.execute(sa.text("SELECT mode, status FROM lifecycle.runs WHERE journey = 'cart_abandonment' "
                                        "ORDER BY interval_start")).all()
    assert [tuple(r) for r in recorded] == [("dry", "ok"), ("dry", "ok")]

    assert promote(tmp_path, "cart_abandonment", capsys)[0] == 0
    live = build_dags(tmp_path)["cart_abandonment"]  # Airflow re-parses the file
    assert live.test(logical_date=anchor).state == "success"

    counts = by_mode_and_status(engine)
    assert counts.get("live:sent", 0) == len(smtp.messages) > 0, counts
    assert planted["cart_recent"].email in {r for m in smtp.messages for r in m.rcpt_tos}
    assert {k: v for k, v in counts.items() if k.startswith("dry:")} == dry  # the dry record stays as it was


# ---------------------------------------------------------------------------- an earlier interval unfinished
def test_a_run_refuses_to_plan_while_an_earlier_interval_of_the_journey_and_mode_is_unfinished(shop_db):
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    hour = timedelta(hours=1)
    backfill = RunContext("cart_abandonment", "backfill__2026-11-19T20:00:00+00:00", "live",
                               anchor - 4 * hour, anchor - 3 * hour)
    scheduled = RunContext("cart_abandonment", "scheduled__2026-11-19T23:00:00+00:00", "live",
                                anchor - hour, anchor)
    run_audit.start_run(engine, backfill)  # started, never finished (still running, or it died)

    with pytest.raises(run_audit.EarlierRunUnfinished) as err:
        run_audit.refuse_if_an_earlier_run_is_unfinished(engine, scheduled)
    message = str(err.value)
    assert message.startswith(
        "cart_abandonment: not running the interval 2026-11-19T23:00:00+00:00 .. 2026-11-20T00:00:00+00:00 (live, run "
        "scheduled__2026-11-19T23:00:00+00:00) while the earlier run backfill__2026-11-19T20:00:00+00:00 (interval "
        "2026-11-19T20:00:00+00:00 .. 2026-11-19T21:00:00+00:00, live, started ")
    assert "is unfinished" in message and "run_id = 'backfill__2026-11-19T20:00:00+00:00'" in message

    # Not blocked: the earlier run itself (re-started), an earlier interval, and the other mode.
    run_audit.refuse_if_an_earlier_run_is_unfinished(engine, backfill)
    run_audit.refuse_if_an_earlier_run_is_unfinished(engine, RunContext(
        "cart_abandonment", "earlier", "live", anchor - 5 * hour, anchor - 4 * hour))
    run_audit.refuse_if_an_earlier_run_is_unfinished(engine, RunContext(
        "cart_abandonment", "dry-preview", "dry", anchor - hour, anchor))
    run_audit.refuse_if_an_earlier_run_is_unfinished(engine, RunContext(
        "win_back", "other-journey", "live", anchor - hour, anchor))

    # Once the earlier run has finished (ok or failed), the later interval goes on.
    run_audit.finish_run(engine, backfill, "failed", {})
    run_audit.refuse_if_an_earlier_run_is_unfinished(engine, scheduled)


def test_a_shipped_copy_keeps_its_other_keys(tmp_path):
    """promote's output is a valid header that means the same journey, only live."""
    path = segment_copy(tmp_path, "review_request", without_status)
    draft = load_spec(path)
    assert main(["promote", str(path)]) == 0
    live = load_spec(path)
    assert live.status == "live" and draft.status == "draft"
    assert {k: v for k, v in vars(live).items() if k != "status"} == {k: v for k, v in vars(draft).items()
                                                                     if k != "status"}
