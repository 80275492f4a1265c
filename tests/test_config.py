"""config.Settings: every LIFECYCLE_* variable read in one place, once per environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lifecycle.config import PROJECT_DIR, Settings, settings


def test_defaults_and_overrides():
    default = Settings.from_environ({})
    assert default.project_dir == PROJECT_DIR and default.state_dir == PROJECT_DIR / ".lifecycle"
    assert (default.warehouse_conn_id, default.smtp_conn_id, default.sms_conn_id, default.push_conn_id,
            default.meta_conn_id) == ("lifecycle_warehouse", "lifecycle_smtp", "lifecycle_sms", "lifecycle_push",
                                      "lifecycle_meta")
    assert default.shop["from_email"] == "hello@shop.example.com" and not default.push_allow_private
    given = Settings.from_environ({"LIFECYCLE_PROJECT_DIR": "/opt/airflow", "LIFECYCLE_SHOP_URL": "https://x.test",
                                   "LIFECYCLE_PUSH_ALLOW_PRIVATE": "True", "LIFECYCLE_CLOCK": "as_of"})
    assert given.state_dir == Path("/opt/airflow/.lifecycle")  # follows the project dir
    assert given.shop["base_url"] == "https://x.test" and given.push_allow_private and given.clock == "as_of"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().maildir = "/tmp/elsewhere"
    with pytest.raises(TypeError):
        settings().shop["name"] = "Someone else"


def test_parsed_once_per_environment(monkeypatch):
    monkeypatch.delenv("LIFECYCLE_MAILDIR", raising=False)
    assert settings() is settings()  # one environment, one object
    monkeypatch.setenv("LIFECYCLE_MAILDIR", "/var/mail/lifecycle")
    assert settings().maildir == "/var/mail/lifecycle"  # a changed variable is seen at the next call
