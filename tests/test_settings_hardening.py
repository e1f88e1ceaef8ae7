"""Settings a user got wrong without pydantic noticing: a misspelt ``OVBOT_*`` name (in
the environment or in ``.env``) and a device OpenVINO cannot find on this computer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ovbot.core.config import ENV_PREFIX, Settings, load_settings
from ovbot.core.engines.factory import build_engines, check_devices
from ovbot.core.errors import SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ovbot.config" and r.levelno == logging.WARNING]


def test_a_misspelt_variable_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OVBOT_LLM_DEVCE", "GPU")
    monkeypatch.setenv("OVBOT_COMPLETELY_UNRELATED", "1")
    monkeypatch.setenv("OVBOT_LLM_DEVICE", "CPU")  # a real one: no warning
    monkeypatch.setenv("OVBOT_VENV", ".venv")  # read by dev.py, not a setting: no warning
    caplog.set_level(logging.WARNING, logger="ovbot.config")

    settings = load_settings()

    assert settings.llm_device == "CPU"
    assert sorted(warnings(caplog)) == [
        "OVBOT_COMPLETELY_UNRELATED (environment) is not an ovbot setting and is ignored; "
        ".env.example lists every setting",
        "OVBOT_LLM_DEVCE (environment) is not an ovbot setting and is ignored; did you mean OVBOT_LLM_DEVICE?",
    ]


def test_a_misspelt_dotenv_entry_is_named_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ".env").write_text("OVBOT_LOG_LEVEL=DEBUG\nOVBOT_APIKEYS=abcdefghijklmnopq\nOTHER_TOOL=1\n")
    caplog.set_level(logging.WARNING, logger="ovbot.config")

    settings = load_settings()

    assert settings.log_level == "DEBUG" and settings.api_keys == []
    assert warnings(caplog) == [
        "OVBOT_APIKEYS (.env) is not an ovbot setting and is ignored; did you mean OVBOT_API_KEYS?"
    ]
    assert "abcdefghijklmnopq" not in caplog.text  # names only, never values


def test_correct_settings_warn_about_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in {"OVBOT_LLM_DEVICE": "cpu", "ovbot_kv_cache_gb": "1", "OVBOT_HTTP_PORT": "8081"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / ".env").write_text("OVBOT_LOG_LEVEL=INFO\n")
    caplog.set_level(logging.WARNING, logger="ovbot.config")

    load_settings()

    assert warnings(caplog) == []


@pytest.mark.parametrize(
    ("device", "available", "missing"),
    [
        ("GPU", ["CPU", "GPU.0", "GPU.1"], None),
        ("GPU.1", ["CPU", "GPU.0", "GPU.1"], None),
        ("GPU.0", ["CPU", "GPU"], None),
        ("GPU.2", ["CPU", "GPU.0", "GPU.1"], "GPU.2"),
        ("NPU", ["CPU"], "NPU"),
        ("AUTO", ["CPU"], None),
        ("AUTO:NPU,CPU", ["CPU"], None),
        ("AUTO:NPU", ["CPU"], "NPU"),
        ("HETERO:GPU,CPU", ["CPU"], "GPU"),
    ],
)
def test_device_availability(device: str, available: list[str], missing: str | None) -> None:
    settings = Settings(_env_file=None, llm_device=device)  # type: ignore[call-arg]
    if missing is None:
        check_devices(settings, lambda: available)
        return
    with pytest.raises(SettingsError) as failed:
        check_devices(settings, lambda: available)
    message = failed.value.user_message
    assert "\n" not in message
    assert message.startswith(f"OVBOT_LLM_DEVICE={device}: OpenVINO finds no {missing} on this computer")
    assert f"(available: {', '.join(available)})" in message
    assert message.endswith("or set OVBOT_LLM_DEVICE=CPU to run on the CPU.")


def test_cpu_only_never_asks_openvino() -> None:
    def fail() -> list[str]:
        raise AssertionError("queried OpenVINO for a CPU-only configuration")

    check_devices(Settings(_env_file=None), fail)  # type: ignore[call-arg]


def test_building_engines_for_a_missing_device_fails_before_any_process(tmp_path: Path) -> None:
    import openvino

    available = openvino.Core().available_devices
    if "NPU" in available:
        pytest.skip("this computer has an NPU")
    settings = Settings(_env_file=None, image_device="NPU")  # type: ignore[call-arg]

    with pytest.raises(SettingsError) as failed:
        build_engines(settings, tmp_path, tmp_path)

    assert failed.value.user_message.startswith("OVBOT_IMAGE_DEVICE=NPU: OpenVINO finds no NPU")
    assert "Install the Intel NPU driver" in failed.value.user_message
