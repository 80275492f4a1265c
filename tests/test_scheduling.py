"""The order `make test` hands modules to its workers (tests/scheduling.py): costliest first."""

from __future__ import annotations

from scheduling import costliest_first, scope_of, seconds_per_module


def test_a_module_on_both_servers_is_two_units_and_any_other_module_one():
    assert scope_of("tests/test_dags.py::test_run[service]") == "tests/test_dags.py[service]"
    assert scope_of("tests/test_guarantees.py::test_x[service-3]") == "tests/test_guarantees.py[service]"
    assert scope_of("tests/test_dags.py::test_run[embedded]") == "tests/test_dags.py"
    assert scope_of("tests/test_dags.py::test_imports") == "tests/test_dags.py"
    assert scope_of("tests/test_x.py::test_y[servicedesk]") == "tests/test_x.py"


def test_measured_modules_go_longest_first_and_unknown_ones_count_a_second_per_test():
    modules = {"tests/test_a.py": 40, "tests/test_backfill.py": 3, "tests/test_new.py": 90, "tests/test_b.py": 2}
    costs = {"tests/test_a.py": 12.0, "tests/test_backfill.py": 300.0, "tests/test_b.py": 12.0}
    assert costliest_first(modules, costs) == [
        "tests/test_backfill.py", "tests/test_new.py", "tests/test_a.py", "tests/test_b.py"]


def test_seconds_per_module_adds_up_a_junit_report_by_module(tmp_path):
    report = tmp_path / "suite.xml"
    report.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
      <testcase classname="tests.test_backfill" name="test_one" time="100.5"/>
      <testcase classname="tests.test_backfill" name="test_two" time="20.25"/>
      <testcase classname="tests.journeys.test_welcome" name="test_x[embedded]" time="3"/>
      <testcase classname="tests.test_render.TestFilters" name="test_money" time="0.5"/>
      <testcase classname="tests.test_render" name="test_plain" time="1"/>
      <testcase classname="tests.test_dags" name="test_run[embedded]" time="4"/>
      <testcase classname="tests.test_dags" name="test_run[service]" time="5"/>
      <testcase classname="tests.test_dags" name="test_retry[service]" time="6"/>
    </testsuite></testsuites>""")
    assert seconds_per_module(report) == {
        "tests/journeys/test_welcome.py": 3.0, "tests/test_backfill.py": 120.8, "tests/test_render.py": 1.5,
        "tests/test_dags.py": 4.0, "tests/test_dags.py[service]": 11.0}
