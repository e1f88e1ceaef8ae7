"""The model cache when the hub is out of reach or misbehaves in ways ovbot did not
foresee, download progress without a terminal, and what ``models verify`` claims.

The hub is the real fake of tests/fakes/fake_hub.py on 127.0.0.1, a port where nothing
listens, or a socket server that drops every connection. Where a future
huggingface_hub is simulated (an exception class ovbot has never seen), the patch sits at
huggingface_hub's own API, the edge ovbot does not own.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants

import ovbot.models.hub as hub_module
from ovbot.bots.models_commands import register
from ovbot.core.errors import ModelUnavailable
from ovbot.models.cache import REQUIRED_FILES
from ovbot.models.hub import DownloadProgress, download_model
from ovbot.models.manifest import verify

from tests.fakes.fake_hub import FakeHub
from tests.sentinels import HF_TOKEN

TOKEN = HF_TOKEN
LLM_REPO = "ovbot-test/tiny-llm"
BIG = "openvino_model.bin"
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OVBOT_") or name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    rng = random.Random(7)
    fake = FakeHub()
    fake.add_repo(
        LLM_REPO,
        {
            "config.json": b'{"model_type": "qwen2"}\n',
            "openvino_model.xml": b"<net name='tiny'/>\n",
            BIG: rng.randbytes(2 * MB),
            "openvino_tokenizer.xml": b"<net name='tokenizer'/>\n",
            "openvino_detokenizer.xml": b"<net name='detokenizer'/>\n",
        },
        lfs={BIG},
    )
    with fake:
        yield fake


@pytest.fixture
def refused_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def dropping_endpoint() -> Iterator[str]:
    """A server that accepts every connection and closes it without a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def assert_one_actionable_line(message: str) -> None:
    assert "\n" not in message, message
    assert "models download" in message and "OVBOT_LLM_MODEL_DIR" in message, message
    assert "models build-tiny tiny-models" in message, message
    assert TOKEN not in message


# --------------------------------------------------------------------------- item 12


@pytest.mark.parametrize("endpoint_fixture", ["refused_endpoint", "dropping_endpoint"])
def test_an_unreachable_or_broken_hub_ends_in_one_line_with_what_to_do(
    endpoint_fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    endpoint = request.getfixturevalue(endpoint_fixture)

    with pytest.raises(ModelUnavailable) as failed:
        download_model(LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=endpoint, progress=False)

    assert failed.value.user_message.startswith(f"Cannot reach the model hub at {endpoint}")
    assert_one_actionable_line(failed.value.user_message)


class HubConnectionError(Exception):
    """What a huggingface_hub major ovbot was not written for might raise."""


class HubSurprise(Exception):
    pass


@pytest.mark.parametrize("wrapped", [True, False], ids=["wraps-a-connection-error", "unknown-error"])
def test_an_error_type_ovbot_never_saw_still_ends_in_one_line(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    def model_info(*args: Any, **kwargs: Any) -> Any:
        if wrapped:
            try:
                raise httpx.ConnectError("[Errno -2] Name or service not known")
            except httpx.ConnectError as exc:
                raise HubConnectionError("could not connect to the Hub") from exc
        raise HubSurprise("the hub library changed its mind")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)

    with pytest.raises(ModelUnavailable) as failed:
        download_model(LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=hub.endpoint, progress=False)

    message = failed.value.user_message
    assert_one_actionable_line(message)
    if wrapped:
        assert message.startswith("Cannot reach the model hub") and "Name or service not known" in message
    else:
        assert message.startswith(f"Cannot download {LLM_REPO}@main") and "HubSurprise" in message


class _BreaksOnce:
    """huggingface_hub's session, except that the first large-file stream breaks after
    its first chunk with an error type of another library version (wrapping httpx's)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.broken = 0

    @contextlib.contextmanager
    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self.real.stream(*args, **kwargs) as response:
            if self.broken:
                yield response
                return
            self.broken += 1
            yield _BreakingResponse(response)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _BreakingResponse:
    def __init__(self, inner: httpx.Response) -> None:
        self._inner = inner

    def iter_bytes(self) -> Iterator[bytes]:
        chunks = self._inner.iter_bytes()
        yield next(chunks)
        try:
            raise httpx.ReadError("connection reset by peer")
        except httpx.ReadError as exc:
            raise HubConnectionError("the download broke") from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_the_resume_loop_survives_a_connection_error_of_any_library(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    session = _BreaksOnce(hub_module.get_session())
    monkeypatch.setattr(hub_module, "get_session", lambda: session)
    caplog.set_level(logging.INFO, logger="ovbot.models")

    dest = download_model(LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=hub.endpoint, progress=False)

    assert session.broken == 1
    assert verify(dest, checksums=True).ok
    assert "connection lost" in caplog.text and "resuming" in caplog.text
    ranges = [r.range for r in hub.served("GET", BIG) if r.range]
    assert ranges, "the second attempt did not continue with a Range request"


def test_serve_offline_with_no_model_ends_in_one_line_not_a_traceback(
    refused_endpoint: str, tmp_path: Path
) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OVBOT_", "HF_"))}
    env.update(
        HF_ENDPOINT=refused_endpoint,
        OVBOT_MODELS_DIR=str(tmp_path / "models"),
        OVBOT_DATA_DIR=str(tmp_path / "data"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "ovbot.bots.cli", "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ovbot: Cannot reach the model hub"), last
    assert_one_actionable_line(last)
    # the command it prints runs as printed: here the venv's script, not a bare "ovbot"
    command = re.search(r"`(\S+) models download`", last)
    assert command is not None, last
    expected = Path(sys.executable).parent / "ovbot"
    assert Path(tmp_path, command.group(1)).resolve() == expected.resolve() or command.group(1) == "ovbot"


# --------------------------------------------------------------------------- item 13

LINE = re.compile(
    r"^downloading ovbot-test/tiny-llm: (\d+)% \((\d+\.\d) of 2\.0 MB\) at (\d+\.\d) MB/s, ETA (\d\d:\d\d)$"
)


def test_download_without_a_terminal_logs_percent_speed_and_eta(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="ovbot.models")

    download_model(
        LLM_REPO, "main", tmp_path / "llm", token=TOKEN, endpoint=hub.endpoint, progress=True, log_every_s=0
    )

    progress = [m for m in (r.getMessage() for r in caplog.records) if m.startswith("downloading ovbot-test/tiny-llm:")]
    matches = [LINE.match(m) for m in progress]
    assert len(progress) >= 2 and all(matches), progress
    percents = [int(m.group(1)) for m in matches if m]
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert "%|" not in capfd.readouterr().err  # no bar without a terminal


def test_progress_lines_are_throttled_and_count_only_this_runs_bytes() -> None:
    now = [0.0]
    progress = DownloadProgress("org/model", 100 * MB, bar=False, log_every_s=10, clock=lambda: now[0])
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ovbot.models")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        progress.resumed(50 * MB)  # on disk from an earlier run: not downloaded now
        for second in range(1, 26):
            now[0] = float(second)
            progress.update(MB)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        progress.close()

    assert lines == [
        "downloading org/model: 60% (60.0 of 100.0 MB) at 1.0 MB/s, ETA 00:40",
        "downloading org/model: 70% (70.0 of 100.0 MB) at 1.0 MB/s, ETA 00:30",
    ]


# --------------------------------------------------------------------------- item 16


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ovbot models")
    register(parser.add_subparsers(dest="models_command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_verify_checksums_on_a_configured_directory_says_what_it_really_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind in ("llm", "image"):
        for name in REQUIRED_FILES[kind]:  # type: ignore[index]
            path = tmp_path / kind / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        monkeypatch.setenv(f"OVBOT_{kind.upper()}_MODEL_DIR", str(tmp_path / kind))

    assert _cli(["verify", "--checksums"]) == 0

    out = capsys.readouterr().out
    assert "sha256 checked" not in out and "sizes checked" not in out, out
    for kind in ("llm", "image"):
        assert (
            f"{kind}: OK (the 4 required files present; a configured directory has no manifest, "
            "so sizes and sha256 were not checked)"
        ) in out, out
