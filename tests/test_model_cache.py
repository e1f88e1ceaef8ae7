"""The model cache against a real HTTP fake of the hub: download, resume, integrity,
offline behaviour, secrets, the start-up check and the ``ovbot models`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants as hf_constants
from ovbot.bots.models_commands import register
from ovbot.core.config import Settings
from ovbot.core.errors import ModelUnavailable
from ovbot.models.cache import REQUIRED_FILES, ModelCache
from ovbot.models.hub import PARTIAL_DIR, download_model
from ovbot.models.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    load_manifest,
    verify,
    write_manifest,
)

from tests.fakes.fake_hub import FakeHub, FakeRepo
from tests.sentinels import HF_TOKEN

TOKEN = HF_TOKEN
LLM_REPO = "ovbot-test/tiny-llm"
IMAGE_REPO = "ovbot-test/tiny-sd"
BIG = "openvino_model.bin"
BIG_SIZE = 2 * 1024 * 1024


def _llm_files() -> dict[str, bytes]:
    rng = random.Random(20240601)
    return {
        "config.json": b'{"model_type": "qwen2"}\n',
        "generation_config.json": b'{"max_new_tokens": 64}\n',
        "openvino_model.xml": b"<net name='tiny'/>\n",
        BIG: rng.randbytes(BIG_SIZE),
        "openvino_tokenizer.xml": b"<net name='tokenizer'/>\n",
        "openvino_tokenizer.bin": rng.randbytes(64 * 1024),
        "openvino_detokenizer.xml": b"<net name='detokenizer'/>\n",
    }


def _image_files() -> dict[str, bytes]:
    rng = random.Random(20240602)
    return {
        "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}\n',
        "scheduler/scheduler_config.json": b'{"num_train_timesteps": 1000}\n',
        "unet/openvino_model.xml": b"<net name='unet'/>\n",
        "unet/openvino_model.bin": rng.randbytes(1024 * 1024),
        "vae_decoder/openvino_model.xml": b"<net name='vae'/>\n",
        "text_encoder/openvino_model.xml": b"<net name='clip'/>\n",
    }


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or CI's OVBOT_* / HF_* settings must not steer these tests."""
    for name in list(os.environ):
        if name.startswith("OVBOT_") or name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_repo(LLM_REPO, _llm_files(), lfs={BIG, "openvino_tokenizer.bin"})
    fake.add_repo(IMAGE_REPO, _image_files(), lfs={"unet/openvino_model.bin"})
    with fake:
        yield fake


@pytest.fixture
def refused_endpoint() -> str:
    """An address where nothing listens: the 'no network' of a test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models_dir": tmp_path / "models",
        "llm_repo": LLM_REPO,
        "image_repo": IMAGE_REPO,
        "hf_token": TOKEN,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _llm_repo(hub: FakeHub) -> FakeRepo:
    return hub.repos[LLM_REPO]


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0x5A for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- download


def test_fresh_download_pins_the_commit_writes_files_and_manifest(
    hub: FakeHub, tmp_path: Path
) -> None:
    dest = tmp_path / "llm"
    repo = _llm_repo(hub)

    result = download_model(
        LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False
    )

    assert result == dest
    for name, fake in repo.files.items():
        assert (dest / name).read_bytes() == fake.data, name
    manifest = load_manifest(dest)
    assert manifest is not None
    assert (manifest.repo_id, manifest.revision, manifest.commit_sha) == (
        LLM_REPO,
        "main",
        repo.commit,
    )
    assert manifest.downloaded_at
    entries = {entry.path: entry for entry in manifest.files}
    assert set(entries) == set(repo.files)
    assert entries[BIG] == FileEntry(BIG, BIG_SIZE, repo.files[BIG].sha256, "hub-lfs")
    assert entries["config.json"].sha256 == repo.files["config.json"].sha256
    assert entries["config.json"].sha256_source == "local"
    assert verify(dest, checksums=True).ok
    # "main" is only used to resolve the commit; every file is fetched at that commit
    resolves = [r.path for r in hub.served() if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{repo.commit}/" in path for path in resolves)


def test_token_goes_to_the_hub_but_not_to_the_cdn(hub: FakeHub, tmp_path: Path) -> None:
    download_model(
        LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=hub.endpoint, progress=False
    )

    hub_requests = [r for r in hub.served() if not r.path.startswith("/cdn/")]
    cdn_requests = [r for r in hub.served() if r.path.startswith("/cdn/")]
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    assert cdn_requests and all(r.authorization is None for r in cdn_requests)


def test_logs_one_line_per_event_and_no_progress_bar_without_tty(
    hub: FakeHub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="ovbot.models")

    download_model(
        LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=hub.endpoint, progress=True
    )

    messages = [r.getMessage() for r in caplog.records if r.name == "ovbot.models"]
    assert messages[0] == f"resolving {LLM_REPO}@main"
    assert any(m.startswith("downloading 7 of 7 files (2.1 MB)") for m in messages), messages
    assert any(m.startswith(f"downloaded {LLM_REPO} in") for m in messages), messages
    assert any(m.startswith("verified 7 files") for m in messages), messages
    assert len(messages) == 4, messages
    stderr = capfd.readouterr().err
    assert "Fetching" not in stderr and "%|" not in stderr, stderr


def test_second_download_is_a_no_op_on_the_network_for_present_files(
    hub: FakeHub, tmp_path: Path
) -> None:
    dest = tmp_path / "llm"
    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)
    hub.clear_log()

    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)

    assert [r for r in hub.served("GET") if "/resolve/" in r.path or "/cdn/" in r.path] == []
    assert verify(dest, checksums=True).ok


# --------------------------------------------------------------------------- resume


def test_connection_cut_mid_file_resumes_with_range(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_connection(BIG)
    dest = tmp_path / "llm"

    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)

    ranges = [r.range for r in hub.served("GET", BIG) if r.path.startswith("/cdn/") and r.range]
    assert ranges, "the retry must continue with a Range request"
    start = int(ranges[0].removeprefix("bytes=").split("-")[0])
    assert 0 < start < BIG_SIZE
    assert hub.bytes_served(BIG) < 2 * BIG_SIZE
    assert (dest / BIG).read_bytes() == _llm_repo(hub).files[BIG].data


def test_failed_run_leaves_a_partial_that_the_next_run_continues(
    hub: FakeHub, tmp_path: Path
) -> None:
    dest = tmp_path / "llm"
    repo = _llm_repo(hub)
    hub.cut_connection(BIG)  # half the file arrives ...
    hub.fail_gets(BIG)  # ... and the hub goes down before the retry

    with pytest.raises(ModelUnavailable) as failed:
        download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)

    assert "503" in failed.value.user_message
    assert "ovbot models download" in failed.value.user_message
    assert not (dest / MANIFEST_NAME).exists()
    partial = dest / PARTIAL_DIR / f"{repo.files[BIG].sha256}.part"
    assert partial.stat().st_size == BIG_SIZE // 2
    served_first_run = hub.bytes_served(BIG)
    hub.clear_log()

    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)

    cdn = [r for r in hub.served("GET", BIG) if r.path.startswith("/cdn/")]
    assert [r.range for r in cdn] == [f"bytes={BIG_SIZE // 2}-"]
    assert served_first_run + hub.bytes_served(BIG) < 2 * BIG_SIZE
    assert hub.served("GET", "config.json") == []  # finished files are not fetched again
    assert not partial.exists()
    assert verify(dest, checksums=True).ok


# --------------------------------------------------------------------------- integrity


def test_hub_serving_wrong_bytes_is_refused_and_the_file_deleted(
    hub: FakeHub, tmp_path: Path
) -> None:
    dest = tmp_path / "llm"
    hub.serve_corrupt(BIG)

    with pytest.raises(ModelUnavailable) as failed:
        download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)

    message = failed.value.user_message
    assert BIG in message and "corrupt" in message and "ovbot models download" in message
    assert not (dest / BIG).exists()
    assert not (dest / MANIFEST_NAME).exists()


def test_file_corrupted_on_disk_needs_checksums_to_be_seen_and_download_repairs_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    dest = tmp_path / "llm"
    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)
    _flip_middle(dest / BIG)

    assert verify(dest, checksums=False).ok  # same size: the fast check cannot tell
    report = verify(dest, checksums=True)
    assert not report.ok
    assert report.checksum_mismatches == (BIG,)
    assert f"corrupt file (sha256 mismatch): {BIG}" in report.problems()

    hub.clear_log()
    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)
    assert hub.bytes_served(BIG) == BIG_SIZE
    assert verify(dest, checksums=True).ok


def test_truncated_or_missing_files_fail_the_fast_size_check(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "llm"
    download_model(LLM_REPO, "main", dest, token=TOKEN, endpoint=hub.endpoint, progress=False)
    with open(dest / BIG, "r+b") as handle:
        handle.truncate(1000)
    (dest / "openvino_tokenizer.xml").unlink()

    report = verify(dest, checksums=False)

    assert not report.ok
    assert [(m.path, m.expected, m.actual) for m in report.size_mismatches] == [
        (BIG, BIG_SIZE, 1000)
    ]
    assert report.missing == ("openvino_tokenizer.xml",)
    assert report.bad_files == (BIG,)


def test_verify_reports_an_absent_or_damaged_manifest(tmp_path: Path) -> None:
    (tmp_path / "openvino_model.xml").write_text("<net/>")

    absent = verify(tmp_path, checksums=False)
    assert not absent.ok and not absent.manifest_found
    assert MANIFEST_NAME in absent.problems()[0]

    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"repo_id": "x", "files": [{"path": "../etc/passwd"}]})
    )
    damaged = verify(tmp_path, checksums=False)
    assert not damaged.ok and damaged.manifest_error


def test_manifest_round_trips(tmp_path: Path) -> None:
    manifest = Manifest(
        repo_id="a/b",
        revision="main",
        commit_sha="c" * 40,
        downloaded_at="2026-01-01T00:00:00+00:00",
        files=(FileEntry("x/y.bin", 3, "d" * 64, "hub-lfs"),),
    )

    write_manifest(tmp_path, manifest)

    assert load_manifest(tmp_path) == manifest
    assert manifest.total_size == 3
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temp file left


# --------------------------------------------------------------------------- failures


def test_connection_refused_says_what_to_do(refused_endpoint: str, tmp_path: Path) -> None:
    dest = tmp_path / "llm"

    with pytest.raises(ModelUnavailable) as failed:
        download_model(
            LLM_REPO, "main", dest, token=TOKEN, endpoint=refused_endpoint, progress=False
        )

    message = failed.value.user_message
    assert "Cannot reach the model hub" in message
    assert "ovbot models download" in message and "OVBOT_LLM_MODEL_DIR" in message
    assert not dest.exists()


def test_offline_mode_fails_before_any_request(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ModelUnavailable) as failed:
        download_model(
            LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=hub.endpoint, progress=False
        )

    assert "HF_HUB_OFFLINE" in failed.value.user_message
    assert "OVBOT_LLM_MODEL_DIR" in failed.value.user_message
    assert hub.served() == []


@pytest.mark.parametrize(
    ("repo_id", "revision", "expected"),
    [
        ("ovbot-test/no-such-repo", "main", "OVBOT_HF_TOKEN"),
        (LLM_REPO, "no-such-branch", "OVBOT_LLM_REVISION"),
    ],
)
def test_unknown_repo_or_revision_names_the_setting_to_fix(
    hub: FakeHub, tmp_path: Path, repo_id: str, revision: str, expected: str
) -> None:
    with pytest.raises(ModelUnavailable) as failed:
        download_model(
            repo_id, revision, tmp_path / "m", token=TOKEN, endpoint=hub.endpoint, progress=False
        )

    assert expected in failed.value.user_message
    assert repo_id in failed.value.user_message


def test_token_never_appears_in_logs_or_errors(
    hub: FakeHub, refused_endpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    hub.cut_connection(BIG)  # makes the downloader log a warning with the URL
    download_model(
        LLM_REPO, "main", tmp_path / "ok", token=TOKEN, endpoint=hub.endpoint, progress=False
    )
    hub.serve_corrupt(BIG)
    attempts = [
        (LLM_REPO, "main", hub.endpoint),
        ("ovbot-test/no-such-repo", "main", hub.endpoint),
        (LLM_REPO, "nope", hub.endpoint),
        (LLM_REPO, "main", refused_endpoint),
    ]
    for repo_id, revision, endpoint in attempts:
        with pytest.raises(ModelUnavailable) as failed:
            download_model(
                repo_id, revision, tmp_path / "bad", token=TOKEN, endpoint=endpoint, progress=False
            )
        errors += [failed.value.user_message, str(failed.value), repr(failed.value)]

    assert any(r.authorization == f"Bearer {TOKEN}" for r in hub.served())  # it was really used
    assert "connection lost" in caplog.text and len(errors) == 12
    assert TOKEN not in caplog.text
    assert all(TOKEN not in text for text in errors)


# --------------------------------------------------------------------------- ModelCache


def _local_model(root: Path, kind: str, skip: str | None = None) -> Path:
    for name in REQUIRED_FILES[kind]:  # type: ignore[index]
        if name != skip:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("x")
    return root


def test_configured_directory_is_used_as_is_without_network(
    refused_endpoint: str, tmp_path: Path
) -> None:
    llm_dir = _local_model(tmp_path / "my-llm", "llm")
    image_dir = _local_model(tmp_path / "my-sd", "image")
    cache = ModelCache(
        _settings(tmp_path, llm_model_dir=llm_dir, image_model_dir=image_dir),
        endpoint=refused_endpoint,
    )

    assert cache.llm_dir() == llm_dir and cache.image_dir() == image_dir
    assert cache.ensure_ready() == {"llm": llm_dir, "image": image_dir}
    statuses = cache.status()
    assert [(s.kind, s.source.configured, s.state) for s in statuses] == [
        ("llm", True, "complete"),
        ("image", True, "complete"),
    ]
    assert not (tmp_path / "models").exists()  # nothing downloaded, no manifest written


def test_incomplete_configured_directory_is_refused_with_the_missing_file(tmp_path: Path) -> None:
    llm_dir = _local_model(tmp_path / "my-llm", "llm", skip="openvino_tokenizer.xml")
    cache = ModelCache(_settings(tmp_path, llm_model_dir=llm_dir))

    with pytest.raises(ModelUnavailable) as failed:
        cache.ensure_ready(["llm"])

    assert "openvino_tokenizer.xml" in failed.value.user_message
    assert "OVBOT_LLM_MODEL_DIR" in failed.value.user_message

    (llm_dir / "openvino_model.xml").unlink()
    with pytest.raises(ModelUnavailable, match="openvino_model.xml"):
        cache.llm_dir()


def test_managed_layout_is_one_directory_per_repo_and_revision(tmp_path: Path) -> None:
    cache = ModelCache(_settings(tmp_path, image_revision="refs/pr/1"))

    assert cache.source("llm").path == tmp_path / "models" / "ovbot-test--tiny-llm" / "main"
    assert cache.source("image").path == tmp_path / "models" / "ovbot-test--tiny-sd" / "refs--pr--1"


def test_ensure_ready_downloads_missing_models_then_starts_offline(
    hub: FakeHub, tmp_path: Path
) -> None:
    cache = ModelCache(_settings(tmp_path), endpoint=hub.endpoint)
    assert [s.state for s in cache.status()] == ["missing", "missing"]

    paths = cache.ensure_ready()

    assert paths == {"llm": cache.source("llm").path, "image": cache.source("image").path}
    assert (paths["image"] / "unet" / "openvino_model.bin").stat().st_size == 1024 * 1024
    statuses = cache.status()
    assert [s.state for s in statuses] == ["complete", "complete"]
    assert statuses[0].commit_sha == _llm_repo(hub).commit
    assert statuses[0].size_bytes >= BIG_SIZE
    hub.clear_log()
    cache.ensure_ready()
    assert hub.served() == []  # a complete cache starts without the network


def test_ensure_ready_refuses_when_auto_download_is_off(hub: FakeHub, tmp_path: Path) -> None:
    cache = ModelCache(_settings(tmp_path, auto_download=False), endpoint=hub.endpoint)

    with pytest.raises(ModelUnavailable) as failed:
        cache.ensure_ready()

    message = failed.value.user_message
    assert "OVBOT_AUTO_DOWNLOAD" in message and "OVBOT_LLM_MODEL_DIR" in message
    assert "ovbot models download" in message
    assert hub.served() == []


def test_ensure_ready_offline_with_nothing_on_disk_says_what_to_do(
    refused_endpoint: str, tmp_path: Path
) -> None:
    cache = ModelCache(_settings(tmp_path), endpoint=refused_endpoint)

    with pytest.raises(ModelUnavailable, match="OVBOT_LLM_MODEL_DIR"):
        cache.ensure_ready(["llm"])


def test_checksums_on_start_catch_a_corrupt_file_and_auto_download_repairs_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    ModelCache(_settings(tmp_path), endpoint=hub.endpoint).ensure_ready(["llm"])
    llm_dir = ModelCache(_settings(tmp_path)).source("llm").path
    _flip_middle(llm_dir / BIG)

    strict_offline = ModelCache(
        _settings(tmp_path, verify_checksums_on_start=True, auto_download=False),
        endpoint=hub.endpoint,
    )
    with pytest.raises(ModelUnavailable, match=f"corrupt file \\(sha256 mismatch\\): {BIG}"):
        strict_offline.ensure_ready(["llm"])

    hub.clear_log()
    ModelCache(
        _settings(tmp_path, verify_checksums_on_start=True), endpoint=hub.endpoint
    ).ensure_ready(["llm"])
    assert hub.bytes_served(BIG) == BIG_SIZE
    assert verify(llm_dir, checksums=True).ok


async def test_ensure_ready_async_runs_the_download_off_the_loop(
    hub: FakeHub, tmp_path: Path
) -> None:
    cache = ModelCache(_settings(tmp_path), endpoint=hub.endpoint)

    paths = await cache.ensure_ready_async(["image"])

    assert verify(paths["image"], checksums=True).ok


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ovbot models")
    register(parser.add_subparsers(dest="models_command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def cli_env(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("OVBOT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OVBOT_LLM_REPO", LLM_REPO)
    monkeypatch.setenv("OVBOT_IMAGE_REPO", IMAGE_REPO)
    monkeypatch.setenv("OVBOT_HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    return tmp_path / "models"


def test_cli_list_download_verify(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert "llm: missing" in listing and "image: missing" in listing
    assert f"{LLM_REPO}@main" in listing

    assert _cli(["download", "llm"]) == 0
    assert "llm: ready" in capsys.readouterr().out

    assert _cli(["verify"]) == 1  # the image model is still missing
    out = capsys.readouterr().out
    assert "llm: OK (sizes of 7 files checked against the manifest)" in out and "image: MISSING" in out

    assert _cli(["download"]) == 0
    assert _cli(["verify", "--checksums"]) == 0
    assert "image: OK (sizes and sha256 of 6 files checked against the manifest)" in capsys.readouterr().out

    _flip_middle(cli_env / "ovbot-test--tiny-llm" / "main" / BIG)
    assert _cli(["verify"]) == 0  # sizes alone cannot see it
    assert _cli(["verify", "--checksums"]) == 1
    assert f"corrupt file (sha256 mismatch): {BIG}" in capsys.readouterr().out

    assert _cli(["list"]) == 0
    assert "llm: complete, 2.1 MB" in capsys.readouterr().out


def test_cli_download_offline_exits_non_zero_with_advice(
    cli_env: Path,
    refused_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", refused_endpoint)

    assert _cli(["download", "image"]) == 1

    captured = capsys.readouterr()
    assert "image: FAILED" in captured.err and "OVBOT_IMAGE_MODEL_DIR" in captured.err
    assert TOKEN not in captured.err + captured.out
