"""Copies a journey run's one-line summary onto its DAG run as the run's note.

Airflow 3's task API can push XComs but cannot write a DAG run's note, so `summarize` pushes the line
as the XCom `run_note` and this listener (registered by plugins/lifecycle_plugin.py, run by the
scheduler, or by `dag.test()` in-process) sets the note when the run finishes. It writes in the
scheduler's own session (the one that is finishing the run), never a second one that could wait on
the row lock the scheduler holds (only a run handed over detached gets a session of its own). A note a person wrote (it has a user) is never replaced."""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

from lifecycle.ui.run_note import NOTE_XCOM_KEY

log = logging.getLogger(__name__)
SUMMARY_TASK = "summarize"


def note_for(dag_run, session) -> str | None:
    """The `run_note` XCom that this run's `summarize` pushed, or None."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.scalar(select(XComModel).where(
        XComModel.dag_run_id == dag_run.id, XComModel.task_id == SUMMARY_TASK,
        XComModel.key == NOTE_XCOM_KEY, XComModel.map_index == -1))
    value = XComModel.deserialize_value(row) if row is not None else None
    return value if isinstance(value, str) and value else None


def _apply(dag_run, session) -> None:
    note = note_for(dag_run, session)
    current = dag_run.dag_run_note
    if note is None or (current is not None and current.user_id is not None):
        return
    if current is None:
        dag_run.note = note
    else:
        current.content = note
    session.flush()


def write_note(dag_run) -> None:
    """In the session the run is attached to (the scheduler's); a run handed over detached (`dag.test()`
    passes one) is loaded in a session of our own, which commits."""
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is not None:
        _apply(dag_run, session)
        return
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as own:
        attached = own.get(DagRun, dag_run.id)
        if attached is not None:
            _apply(attached, own)


@hookimpl
def on_dag_run_success(dag_run, msg: str):
    try:
        write_note(dag_run)
    except Exception:  # a note is never worth failing the scheduler's loop over
        log.exception("could not write the run note of %s %s", dag_run.dag_id, dag_run.run_id)


@hookimpl
def on_dag_run_failed(dag_run, msg: str):
    on_dag_run_success(dag_run, msg)
