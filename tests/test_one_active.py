"""`one_active_per_customer`: a customer is in a customer-level journey once at a time. When the
data changes so that a later run selects the same customer under another entry key (a tie
resolved differently, a cancelled last order), the second row is quarantined with the reason,
not enrolled or mailed; it enrolls once the first enrollment has ended."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from lifecycle import schema
from lifecycle.replay import run_interval
from lifecycle.spec import SpecError, load_spec

HEADER = """/* ---
journey: {name}
schedule: daily
entry_key: row_key
entered_at: entered_at
complete_after: 2d
{extra}
steps:
  - {{name: only, after: 0h, channel: email, template: cart_abandonment/reminder_1}}
--- */
SELECT customer_id, row_key, entered_at, email FROM public.selection WHERE run_at = :as_of
"""
DAY = timedelta(days=1)
D1 = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture()
def warehouse(scratch_engine):
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine)
    with scratch_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE public.selection (run_at timestamptz, customer_id bigint, row_key text, "
                             "entered_at timestamptz, email text)")
    return scratch_engine


def journey(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.sql"
    path.write_text(HEADER.format(name=name, extra=extra))
    return load_spec(path)


def select_on(engine, day: datetime, rows: list[tuple]) -> None:
    """What the segment selects in the run ending at `day`: (customer_id, key, entered_at)."""
    with engine.begin() as conn:
        for customer, key, entered in rows:
            conn.execute(sa.text("INSERT INTO public.selection VALUES (:d, :c, :k, :e, :m)"),
                         {"d": day, "c": customer, "k": key, "e": entered, "m": f"c{customer}@example.com"})


def no_channel(name):
    raise AssertionError("no consent rows exist: nothing may be delivered")


def run(engine, spec, end):
    return run_interval(engine, spec, end - DAY, end, no_channel)


def enrollments(engine, journey_name):
    with engine.connect() as conn:
        return {(r.customer_id, r.enrollment_key): r.status for r in conn.execute(sa.text(
            "SELECT customer_id, enrollment_key, status FROM lifecycle.enrollments WHERE journey = :j"),
            {"j": journey_name})}


def planned_keys(engine, journey_name):
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(
            "SELECT e.enrollment_key FROM lifecycle.messages m JOIN lifecycle.enrollments e USING (enrollment_id) "
            "WHERE m.journey = :j"), {"j": journey_name}).scalars())


def quarantined(engine, journey_name):
    with engine.connect() as conn:
        return [(r.run_id, r.customer_id, r.enrollment_key, list(r.reasons)) for r in conn.execute(sa.text(
            "SELECT run_id, customer_id, enrollment_key, reasons FROM lifecycle.quarantine WHERE journey = :j "
            "ORDER BY quarantine_id"), {"j": journey_name})]


def test_a_changed_key_for_an_active_customer_is_quarantined_not_mailed(warehouse, tmp_path):
    spec = journey(tmp_path, "lapsed_probe")
    assert spec.one_active_per_customer  # the default: customer-level
    select_on(warehouse, D1, [(1, "1:100", D1 - timedelta(hours=1))])
    # Next day the "last order" pick changed (tie or cancellation): same customer, another key.
    select_on(warehouse, D1 + DAY, [(1, "1:101", D1)])
    first = run(warehouse, spec, D1)
    second = run(warehouse, spec, D1 + DAY)

    assert first["enrolled"]["entered"] == 1
    assert second["enrolled"] == {"entered": 0, "refreshed": 0, "quarantined": 1}
    assert enrollments(warehouse, "lapsed_probe") == {("1", "1:100"): "active"}
    assert planned_keys(warehouse, "lapsed_probe") == ["1:100"]  # one message, not two
    [(run_id, customer, key, reasons)] = quarantined(warehouse, "lapsed_probe")
    assert (customer, key) == ("1", "1:101") and run_id.endswith((D1 + DAY).isoformat())
    assert reasons[0].startswith("one_active_per_customer: the customer already has an active enrollment (1:100)")
    with warehouse.connect() as conn:
        assert conn.execute(sa.text("SELECT rows_quarantined FROM lifecycle.runs WHERE journey = 'lapsed_probe' "
                                    "AND run_id = :r"), {"r": run_id}).scalar() == 1


def test_the_second_row_enrolls_once_the_first_enrollment_has_ended(warehouse, tmp_path):
    spec = journey(tmp_path, "ended_probe")
    select_on(warehouse, D1, [(1, "1:100", D1 - DAY)])
    for day in (D1 + DAY, D1 + 2 * DAY, D1 + 3 * DAY):
        select_on(warehouse, day, [(1, "1:101", D1)])
    results = [run(warehouse, spec, D1 + n * DAY) for n in range(4)]

    # 1:100 completes 2 days after its last step (complete_after: 2d), in the run of D1+1d, after
    # that run's enroll (planning comes after enrolling), so 1:101 enrolls in the run of D1+2d
    # and is its own active enrollment after that.
    assert [r["enrolled"]["quarantined"] for r in results] == [0, 1, 0, 0]
    assert [r["enrolled"]["entered"] for r in results] == [1, 0, 1, 0]
    assert planned_keys(warehouse, "ended_probe") == ["1:100", "1:101"]  # one after the other


def test_two_new_rows_for_one_customer_in_one_run_enroll_the_earliest(warehouse, tmp_path):
    spec = journey(tmp_path, "pair_probe")
    select_on(warehouse, D1, [
        (2, "2:b", D1 - 2 * DAY), (2, "2:a", D1 - DAY),   # the earlier entered_at wins
        (3, "3:y", D1 - DAY), (3, "3:x", D1 - DAY),        # tied: the smaller key wins
        (4, "4:only", D1 - DAY),
    ])
    result = run(warehouse, spec, D1)

    assert result["enrolled"] == {"entered": 3, "refreshed": 0, "quarantined": 2}
    assert set(enrollments(warehouse, "pair_probe")) == {("2", "2:b"), ("3", "3:x"), ("4", "4:only")}
    reasons = {(c, k): r[0] for _, c, k, r in quarantined(warehouse, "pair_probe")}
    assert reasons == {
        ("2", "2:a"): "one_active_per_customer: another row for this customer enrolls in this run (2:b)",
        ("3", "3:y"): "one_active_per_customer: another row for this customer enrolls in this run (3:x)",
    }


def test_a_rerun_of_the_same_interval_quarantines_the_same_rows_once(warehouse, tmp_path):
    spec = journey(tmp_path, "rerun_probe")
    select_on(warehouse, D1, [(5, "5:a", D1 - DAY), (5, "5:b", D1 - DAY)])
    run(warehouse, spec, D1)
    run(warehouse, spec, D1)  # same run id: the quarantine is rewritten, not added to
    assert [(c, k) for _, c, k, _ in quarantined(warehouse, "rerun_probe")] == [("5", "5:b")]
    assert set(enrollments(warehouse, "rerun_probe")) == {("5", "5:a")}


def test_journeys_per_cart_or_order_may_say_false(warehouse, tmp_path):
    spec = journey(tmp_path, "cart_probe", extra="one_active_per_customer: false")
    assert not spec.one_active_per_customer
    select_on(warehouse, D1, [(6, "cart-1", D1 - DAY), (6, "cart-2", D1 - DAY)])
    result = run(warehouse, spec, D1)
    assert result["enrolled"] == {"entered": 2, "refreshed": 0, "quarantined": 0}
    assert planned_keys(warehouse, "cart_probe") == ["cart-1", "cart-2"]


def test_the_key_must_be_a_boolean(tmp_path):
    with pytest.raises(SpecError, match="one_active_per_customer: must be true or false, got 'yes please'"):
        journey(tmp_path, "typo_probe", extra="one_active_per_customer: yes please")


def test_the_shipped_journeys_declare_what_they_are():
    """Customer-level journeys keep the default; journeys per cart, order, session or product opt out."""
    from lifecycle.spec import load_all

    specs, errors = load_all()
    assert not errors
    per_thing = {s.journey for s in specs if not s.one_active_per_customer}
    assert {"cart_abandonment", "browse_abandonment", "review_request", "order_notifications", "cross_sell",
            "upsell", "replenishment", "behaviour_discount"} <= per_thing
    assert {"win_back", "welcome", "birthday", "birthday_ask", "just_because", "referral"}.isdisjoint(per_thing)
