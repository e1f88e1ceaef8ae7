"""Settings: defaults, .env support, one clear line per bad value, secrets hidden."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ovbot.core.config import ENV_PREFIX, Settings, load_settings, parse_size
from ovbot.core.errors import SettingsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.llm_repo == "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-cw-ov"
    assert settings.engine == "local" and settings.llm_device == "CPU"
    limits = settings.image_limits()
    assert limits.default_size == (512, 512) and (768, 512) in limits.sizes


def test_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OVBOT_LLM_DEVICE=gpu.1\nOVBOT_IMAGE_SIZES=256x256, 512x512\n")
    monkeypatch.setenv("OVBOT_IMAGE_DEFAULT_SIZE", "256x256")
    settings = load_settings()
    assert settings.llm_device == "GPU.1"
    assert settings.image_limits().sizes == ((256, 256), (512, 512))
    assert settings.image_limits().default_size == (256, 256)


def test_every_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVBOT_LLM_DEVICE", "TPU")
    monkeypatch.setenv("OVBOT_KV_CACHE_GB", "-1")
    monkeypatch.setenv("OVBOT_IMAGE_SIZES", "512x512,13x3")
    monkeypatch.setenv("OVBOT_AUTO_DOWNLOAD", "perhaps")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = caught.value.user_message.splitlines()
    assert lines[0] == "Invalid settings:"
    named = {line.split(":")[0].strip() for line in lines[1:]}
    assert named == {"OVBOT_LLM_DEVICE", "OVBOT_KV_CACHE_GB", "OVBOT_IMAGE_SIZES", "OVBOT_AUTO_DOWNLOAD"}
    assert "'TPU'" in caught.value.user_message and "13x3" in caught.value.user_message


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"OVBOT_IMAGE_DEFAULT_SIZE": "768x768"}, "OVBOT_IMAGE_DEFAULT_SIZE 768x768 must be one of"),
        ({"OVBOT_IMAGE_DEFAULT_STEPS": "60"}, "OVBOT_IMAGE_DEFAULT_STEPS must lie between"),
        ({"OVBOT_ENGINE": "remote"}, "OVBOT_ENGINE=remote needs OVBOT_REMOTE_BASE_URL"),
        ({"OVBOT_REMOTE_BASE_URL": "ftp://x"}, "OVBOT_REMOTE_BASE_URL: must start with http"),
        ({"OVBOT_LLM_MODEL_DIR": "/no/such/dir"}, "OVBOT_LLM_MODEL_DIR: /no/such/dir is not a directory"),
        ({"OVBOT_IMAGE_SIZES": ""}, "OVBOT_IMAGE_SIZES: list at least one size"),
    ],
)
def test_cross_field_errors(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert fragment in caught.value.user_message


def test_secrets_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVBOT_HF_TOKEN", "hf_supersecretvalue123")
    monkeypatch.setenv("OVBOT_REMOTE_API_KEY", "sk-remote-secret-456")
    settings = load_settings()
    assert settings.hf_token.get_secret_value() == "hf_supersecretvalue123"
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "supersecret" not in text and "remote-secret" not in text


def test_parse_size_rejects_non_multiples_of_eight() -> None:
    assert parse_size(" 512X768 ") == (512, 768)
    for bad in ("512", "500x500", "0x0", "4096x4096", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_env_example_lists_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?(OVBOT_[A-Z0-9_]+)=", example, flags=re.M))
    expected = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert expected - listed == set(), "settings missing from .env.example"
    assert listed - expected == set(), ".env.example lists unknown settings"
    # each setting has a comment line right above its block
    for name in expected:
        index = example.index(name + "=")
        before = example[:index].rstrip("\n# ").splitlines()
        assert any(line.startswith("# ") for line in before[-3:]), name
