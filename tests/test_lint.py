"""`lifecycle lint` catches before a run what the run would catch (issue 10 items 2 and 5).

Without a warehouse: every template of every step and exit message is compiled with the
sender's sandbox environment (file and line of a Jinja error), and the wall clock in a SELECT
is flagged. With `--warehouse-url`: the SELECT runs with LIMIT 0 on a real PostgreSQL, its
columns and their types are checked, every `row.<name>` a template uses must be one of them,
warehouse errors point at the line and column in the segment file, and a warehouse without the
`lifecycle` schema gets one "run `lifecycle migrate`" instead of an error per journey.
"""

from __future__ import annotations

import shutil

import pytest

from lifecycle.cli import lint
from lifecycle.config import SEGMENTS_DIR

GOOD = (SEGMENTS_DIR / "cart_abandonment.sql").read_text()


def write(tmp_path, text, name="cart_abandonment"):
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_lint_compiles_every_step_and_exit_template_and_names_file_and_line(tmp_path, templates, capsys):
    step = templates / "cart_abandonment/reminder_2.txt"
    step.write_text(step.read_text() + "\n{% for item in row['items'] %}{{ item.name }}\n")  # no endfor
    exit_subject = templates / "cart_abandonment/thank_you.subject.txt"
    exit_subject.write_text("Thanks {{ customer.first_name | }}\n")
    path = write(tmp_path, GOOD)

    assert lint([str(path)], None) == 1

    out = capsys.readouterr().out
    last = len(step.read_text().splitlines())
    assert f"steps (reminder_2) (cart_abandonment/reminder_2, email): include/templates/cart_abandonment/" \
           f"reminder_2.txt line {last}: Unexpected end of template" in out
    assert "exit[0].then (cart_abandonment/thank_you, email): include/templates/cart_abandonment/" \
           "thank_you.subject.txt line 1: " in out
    assert "0 ok, 1 broken" in out


VARIANT_B = ('      - {name: b, weight: 50, subject: "{% if customer.first_name %}{{ customer.first_name }}, your'
             '{% else %}Your{% endif %} cart is saved for you"}')
assert VARIANT_B in GOOD


def with_variants(*lines: str) -> str:
    """cart_abandonment.sql with reminder_1's variant b replaced by `lines`."""
    return GOOD.replace(VARIANT_B, "\n".join(f"      - {line}" for line in lines), 1)


def test_lint_compiles_each_variants_template_and_subject_and_names_step_variant_and_line(tmp_path, templates,
                                                                                         capsys):
    """A variant's own template (on the step's channels) and subject line are compiled as the sender
    will: an unclosed tag in the template, an unknown filter in the subject (the header's check
    only parses it) are reported with the step, the variant and the Jinja line, not at send time."""
    html = templates / "cart_abandonment/reminder_3.html"
    html.write_text(html.read_text() + "{% if row.cart_url %}\n")  # no endif
    path = write(tmp_path, with_variants("{name: b, weight: 25, template: cart_abandonment/reminder_3}",
                                         '{name: c, weight: 25, subject: "{{ customer.first_name | titel }}, hi"}'))

    assert lint([str(path)], None) == 1

    out = capsys.readouterr().out
    last = len(html.read_text().splitlines())
    assert f"steps (reminder_1) variant b (cart_abandonment/reminder_3, email): include/templates/" \
           f"cart_abandonment/reminder_3.html line {last}: Unexpected end of template" in out
    assert "steps (reminder_1) variant c (subject, email): line 1: No filter named 'titel'." in out
    assert "0 ok, 1 broken" in out


def test_lint_passes_good_variants(tmp_path, capsys):
    path = write(tmp_path, with_variants("{name: b, weight: 25, template: cart_abandonment/reminder_3}",
                                         '{name: c, weight: 25, subject: "{{ customer.first_name | title }}, hi"}'))
    assert lint([str(path)], None) == 0, capsys.readouterr().out


def test_lint_flags_the_wall_clock_in_a_select(tmp_path, capsys):
    old = "WHERE c.updated_at >= :as_of - make_interval(hours => :lookback_hours)"
    text = GOOD.replace(old, "WHERE c.updated_at >= now() - make_interval(hours => :lookback_hours)", 1)
    path = write(tmp_path, text)
    assert lint([str(path)], None) == 1
    out = capsys.readouterr().out
    assert f"SQL line {line_of(text, 'now()')}, column " in out and "now() reads the wall clock: use :as_of" in out


def test_the_unbound_parameter_message_lists_shop_url(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace(":lookback_hours)", ":lookback_hourz)", 1))
    assert lint([str(path)], None) == 1
    assert "the engine binds :interval_start, :interval_end, :as_of, :shop_url" in capsys.readouterr().out


def test_a_yaml_error_names_the_line_of_the_unclosed_bracket(tmp_path, capsys):
    text = GOOD.replace("entry_key: cart_id", "entry_key: [cart_id", 1)
    path = write(tmp_path, text)
    assert lint([str(path)], None) == 1
    assert f"on header line {line_of(text, 'entry_key: [')}, column 12" in capsys.readouterr().out


@pytest.fixture()
def url(shop_db):
    engine, _, _ = shop_db
    return engine.url.render_as_string(hide_password=False)


def test_lint_on_a_warehouse_passes_the_shipped_journeys(url, capsys):
    assert lint([], url) == 0, capsys.readouterr().out


def test_lint_on_a_warehouse_checks_columns_types_and_the_row_fields_templates_use(tmp_path, url, templates,
                                                                                 capsys):
    # A template reads a column the SELECT does not return (the send would fail for everyone).
    html = templates / "cart_abandonment/reminder_1.html"
    html.write_text(html.read_text().replace("row.cart_url", "row.cart_link", 1))
    text = (GOOD.replace("a.updated_at                          AS cart_updated_at",
                         "a.updated_at::text                    AS cart_updated_at", 1)
            .replace("cu.email,", "cu.email AS email_address,", 1))
    assert "cart_updated_at" in text and "email_address" in text
    path = write(tmp_path, text)
    assert lint([str(path)], url) == 1
    out = capsys.readouterr().out
    assert "the SELECT must return column(s) email;" in out
    assert "column 'cart_updated_at' must be a timestamp (entered_at), it is text" in out
    assert "template cart_abandonment/reminder_1 uses row.cart_link, which the SELECT does not return" in out


def test_lint_on_a_warehouse_checks_the_row_fields_a_variants_subject_uses(tmp_path, url, capsys):
    path = write(tmp_path, with_variants('{name: b, weight: 50, subject: "{{ row.cart_lnk }} is waiting"}'))
    assert lint([str(path)], url) == 1
    assert ("template cart_abandonment/reminder_1, variant b's subject uses row.cart_lnk, which the SELECT does "
            "not return (did you mean row.cart_url?)") in capsys.readouterr().out


def test_a_warehouse_error_points_at_line_and_column_in_the_file(tmp_path, url, capsys):
    old = "a.updated_at                          AS cart_updated_at"
    text = GOOD.replace(old, "a.updated_att AS cart_updated_at", 1)
    path = write(tmp_path, text)
    assert lint([str(path)], url) == 1
    out = capsys.readouterr().out
    line = line_of(text, "a.updated_att")
    column = text.splitlines()[line - 1].index("a.updated_att") + 1
    assert f"cart_abandonment.sql: the warehouse rejected the SQL at line {line}, column {column}: " in out
    assert "updated_att" in out


def test_a_warehouse_without_the_lifecycle_schema_says_run_migrate_once(scratch_engine, capsys):
    url = scratch_engine.url.render_as_string(hide_password=False)
    assert lint([], url) == 1
    out = capsys.readouterr().out
    assert out.count("run `lifecycle migrate`") == 1
    assert "does not exist" not in out and "16 ok, 0 broken" in out


def test_lint_flags_the_wall_clock_in_a_condition(tmp_path, monkeypatch, capsys):
    from lifecycle import cli
    from lifecycle.config import CONDITIONS_DIR

    conditions = tmp_path / "conditions"
    shutil.copytree(CONDITIONS_DIR, conditions)
    condition = conditions / "redeemed_coupon.sql"
    text = condition.read_text().replace(":as_of", "current_date", 1)
    assert "current_date" in text
    condition.write_text(text)
    monkeypatch.setattr(cli, "CONDITIONS_DIR", conditions)
    assert lint([], None) == 1
    out = capsys.readouterr().out
    assert f"condition redeemed_coupon.sql line {line_of(text, 'current_date')}: current_date reads " \
           "the wall clock: use :as_of" in out
