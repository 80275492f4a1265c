"""Segment files: the shipped ones load; every kind of mistake gives a message that names the
file and the problem; the analysts' linter reports them without Airflow."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from lifecycle.cli import lint
from lifecycle.config import SEGMENTS_DIR
from lifecycle.spec import SpecError, load_all, load_spec

GOOD = (SEGMENTS_DIR / "cart_abandonment.sql").read_text()


def write(tmp_path, text, name="cart_abandonment"):
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    return path


def problems(tmp_path, text, name="cart_abandonment") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text, name))
    assert str(info.value).startswith(f"{name}.sql: ")
    return info.value.problems


def test_shipped_segment_files_load():
    specs, errors = load_all()
    assert errors == []
    by_name = {s.journey: s for s in specs}
    assert set(by_name) == {
        "cart_abandonment", "win_back", "review_request", "browse_abandonment", "birthday", "birthday_ask", "welcome",
        "upsell", "cross_sell", "seasonal_offer", "replenishment", "referral", "order_notifications",
        "product_recommendations", "behaviour_discount", "just_because",
    }
    cart = by_name["cart_abandonment"]
    assert cart.schedule == "hourly" and cart.entry_key == "cart_id" and cart.entered_at == "cart_updated_at"
    assert [(s.name, s.after) for s in cart.steps] == [
        ("reminder_1", timedelta(hours=1)), ("reminder_2", timedelta(hours=24)), ("reminder_3", timedelta(hours=48))]
    assert cart.exits[0].when == "purchased_since_entry" and cart.exits[0].message_step == "thank_you"
    assert cart.refresh_clock and not by_name["win_back"].refresh_clock
    win_back = by_name["win_back"]
    assert win_back.steps[0].coupon.percent_off == 15 and win_back.steps[-1].action == "suppress"
    assert by_name["review_request"].params["hard_goods_days"] == 21


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("after: 24h", "after: tomorrow"), "steps[1] (reminder_2).after: 'tomorrow' is not a duration"),
        (("schedule: hourly", "schedule: hourlyy"), "schedule: 'hourlyy' is not one of hourly, daily, weekly"),
        (("entry_key: cart_id", "entyr_key: cart_id"), "unknown key 'entyr_key' (did you mean 'entry_key'?)"),
        (("template: cart_abandonment/reminder_2", "template: cart_abandonment/reminder_9"),
         "steps[1] (reminder_2).template: 'cart_abandonment/reminder_9' is missing"),
        (("when: purchased_since_entry", "when: purchased_since_entri"),
         "condition 'purchased_since_entri' has no file include/sql/conditions/purchased_since_entri.sql "
         "(did you mean 'purchased_since_entry'?)"),
        (("channel: email, template: cart_abandonment/reminder_3", "channel: fax, template: x"),
         "steps[2] (reminder_3).channel: 'fax' is not a channel"),
        (("after: 48h", "after: 2h"), "steps must be in time order"),
        (("journey: cart_abandonment", "journey: carts"), "journey: must equal the file name 'cart_abandonment'"),
        (("lookback_hours: 48", "lookback_hour: 48"), "SQL: parameter :lookback_hours is not bound"),
        (("WITH lines_then AS (", "DELETE FROM shop.carts RETURNING cart_id; WITH lines_then AS ("),
         "SQL: must be one SELECT (or WITH ... SELECT), found 'DELETE'"),
        (("SELECT c.cart_id,", "SELECT 1; SELECT c.cart_id,"), "SQL: only one statement is allowed"),
        (("refresh_clock: true", "refresh_clock: sometimes"), "refresh_clock: must be true or false, got 'sometimes'"),
        (("refresh_clock: true", "refresh_clock: true\nparts: 5"), "parts: must be a whole number from 1 to 4, got 5"),
        (("refresh_clock: true", "refresh_clock: true\nparts: yes"), "parts: must be a whole number from 1 to 4"),
        # every part would select every cart: each row staged twice
        (("refresh_clock: true", "refresh_clock: true\nparts: 2"),
         "parts: 2 runs the SELECT 2 times at once, each for part :part of :parts of the customers, but the SQL "
         "does not use :part, :parts"),
    ],
)
def test_each_mistake_is_named(tmp_path, change, expected):
    old, new = change
    assert old in GOOD
    found = problems(tmp_path, GOOD.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_exit_rules_set_a_conditions_parameters_and_name_their_reason():
    upsell = load_spec(SEGMENTS_DIR / "upsell.sql")
    converts, exits_quietly = upsell.exits[0], upsell.exits[1]
    assert (converts.when, converts.params, converts.reason) == (
        "purchased_since_entry", {"holding": "upgrade_product_id"}, "upsell_ordered_upgrade")
    assert (exits_quietly.when, exits_quietly.params, exits_quietly.reason) == (
        "purchased_since_entry", {}, "purchased_since_entry")


THANK_YOU_EXIT = "  - when: purchased_since_entry\n    then:"


@pytest.mark.parametrize(
    ("exit_rule", "expected"),
    [
        ("  - {when: purchased_since_entry, params: {holdin: product_id}}\n",
         "exit[0].params: purchased_since_entry has no parameter 'holdin' (it has: before, holding)"),
        ("  - {when: purchased_since_entry, params: {holding: [a, b]}}\n",
         "exit[0].params.holding: must be one value"),
        ("  - {when: purchased_since_entry, params: holding}\n", "exit[0].params: must be a mapping"),
        ("  - {when: purchased_since_entry, status: exited}\n",
         "exit: two rules record the reason 'purchased_since_entry'; give one a `reason:` of its own"),
        ("  - {when: purchased_since_entry, reason: Bought!}\n", "exit[0].reason: lower_snake_case"),
    ],
)
def test_exit_parameter_mistakes_are_named(tmp_path, exit_rule, expected):
    assert THANK_YOU_EXIT in GOOD
    found = problems(tmp_path, GOOD.replace(THANK_YOU_EXIT, exit_rule + THANK_YOU_EXIT, 1))
    assert any(expected in p for p in found), found


def test_a_conditions_parameters_are_its_own_or_the_journeys(tmp_path):
    conditions = tmp_path / "conditions"
    conditions.mkdir()
    (conditions / "purchased_since_entry.sql").write_text(
        "/* ---\nparams: {lookback_hours: 1}\n--- */\nSELECT e.enrollment_id FROM enrollments e WHERE :since < :as_of")
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, GOOD), conditions_dir=conditions)
    assert any("condition purchased_since_entry.sql params.lookback_hours: also a parameter of the journey" in p
               for p in info.value.problems), info.value.problems
    assert any("condition purchased_since_entry.sql parameter :since is not bound" in p
               for p in info.value.problems), info.value.problems


def test_all_problems_are_reported_at_once(tmp_path):
    text = GOOD.replace("after: 24h", "after: soon").replace("schedule: hourly", "schedule: often")
    found = problems(tmp_path, text)
    assert len(found) == 2


def test_invalid_yaml_points_at_the_line(tmp_path):
    found = problems(tmp_path, GOOD.replace("entry_key: cart_id", "entry_key: [cart_id"))
    assert found[0].startswith("header line ") and "invalid YAML" in found[0]


def test_missing_header(tmp_path):
    assert "must start with a header comment" in problems(tmp_path, "SELECT 1")[0]


def test_linter_reports_broken_files_and_keeps_checking_the_rest(tmp_path, capsys):
    good = write(tmp_path, GOOD)
    bad = write(tmp_path, GOOD.replace("journey: cart_abandonment", "journey: win_back")
                .replace("after: 1h", "after: 1 hour"), name="win_back")
    assert lint([str(good), str(bad)], None) == 1
    out = capsys.readouterr().out
    assert "ok   cart_abandonment.sql: hourly, steps reminder_1@1h, reminder_2@1d, reminder_3@2d" in out
    assert f"FAIL {bad}" in out and "steps[0] (reminder_1).after: '1 hour' is not a duration" in out
    assert "1 ok, 1 broken" in out


def test_linter_explains_the_sql_on_a_warehouse(tmp_path, shop_db, capsys):
    engine, _, _ = shop_db
    url = engine.url.render_as_string(hide_password=False)
    assert lint([], url) == 0
    old = "a.updated_at                          AS cart_updated_at"
    assert old in GOOD
    typo = write(tmp_path, GOOD.replace(old, "a.updated_att AS cart_updated_at"))
    assert lint([str(typo)], url) == 1
    out = capsys.readouterr().out
    assert "cart_abandonment.sql: the warehouse rejected the SQL" in out and "updated_att" in out


def test_linter_runs_as_a_command_without_airflow():
    result = subprocess.run([sys.executable, "-m", "lifecycle.cli", "lint"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 ok, 0 broken" in result.stdout
    assert "airflow" not in result.stderr.lower()
