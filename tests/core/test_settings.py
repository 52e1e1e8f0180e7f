from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.settings import SettingsError, load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings({}, dotenv=None)
    assert settings.env == "development"
    assert settings.database_url is None
    assert settings.effective_log_format == "console"


def test_values_are_converted_from_strings() -> None:
    settings = load_settings(
        {
            "PULSE_ENV": "test",
            "PULSE_DB_POOL_SIZE": "7",
            "PULSE_DB_POOL_TIMEOUT_S": "2.5",
            "PULSE_OIDC_STRICT_TYP": "true",
            "PULSE_LOG_FORMAT": "json",
        },
        dotenv=None,
    )
    assert settings.db_pool_size == 7
    assert settings.db_pool_timeout_s == 2.5
    assert settings.oidc_strict_typ is True
    assert settings.effective_log_format == "json"


def test_every_bad_value_is_named_in_one_error() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {
                "PULSE_DB_POOL_SIZE": "zero",
                "PULSE_PORT": "70000",
                "PULSE_LOG_FORMAT": "xml",
                "PULSE_NOT_A_SETTING": "1",
            },
            dotenv=None,
        )
    problems = caught.value.problems
    assert len(problems) == 4
    joined = "\n".join(problems)
    for name in ("PULSE_DB_POOL_SIZE", "PULSE_PORT", "PULSE_LOG_FORMAT", "PULSE_NOT_A_SETTING"):
        assert name in joined


def test_production_requires_database_url_and_secret_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"PULSE_ENV": "production"}, dotenv=None)
    joined = " ".join(caught.value.problems)
    assert "PULSE_DATABASE_URL is required" in joined
    assert "PULSE_SECRET_KEY is required" in joined


def test_dotenv_fills_gaps_and_real_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nPULSE_PORT=9001\nexport PULSE_HOST='10.1.2.3'\nPULSE_LOG_LEVEL=DEBUG\n"
    )
    settings = load_settings({"PULSE_LOG_LEVEL": "ERROR"}, dotenv=dotenv)
    assert settings.port == 9001
    assert settings.host == "10.1.2.3"
    assert settings.log_level == "ERROR"


def test_production_without_database_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PULSE_ENV": "production", "PULSE_SECRET_KEY": "k" * 32}
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "pulse: invalid configuration: PULSE_DATABASE_URL is required when PULSE_ENV=production"
    ]


def test_import_database_slots_default_to_half_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """PULSE_INGEST_DB_SLOTS: 0 (the default) is half the CPU cores, at least one."""
    import os

    from app.modules.ingestion.runner import database_slots

    defaults = load_settings({}, dotenv=None)
    for cores, slots in ((6, 3), (2, 1), (1, 1), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert database_slots(defaults) == slots
    assert database_slots(load_settings({"PULSE_INGEST_DB_SLOTS": "5"}, dotenv=None)) == 5
    with pytest.raises(SettingsError, match="PULSE_INGEST_DB_SLOTS"):
        load_settings({"PULSE_INGEST_DB_SLOTS": "-1"}, dotenv=None)
