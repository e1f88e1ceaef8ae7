"""``ovbot serve`` as a user runs it: a subprocess with settings from the environment,
the tiny models, a port picked by the OS, real signals. Shared by the serve, crash and
terminal-chat tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.sentinels import SERVE_API_KEY

KEY = SERVE_API_KEY
SERVING = re.compile(r"serving on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 120.0


def serve_env(tiny_models: Any, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a served ovbot on the tiny models; ``extra`` overrides."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OVBOT_")}
    env.update(
        OVBOT_LLM_MODEL_DIR=str(tiny_models.llm),
        OVBOT_IMAGE_MODEL_DIR=str(tiny_models.image),
        OVBOT_IMAGE_SIZES="64x64",
        OVBOT_IMAGE_DEFAULT_SIZE="64x64",
        OVBOT_IMAGE_DEFAULT_STEPS="2",
        OVBOT_IMAGE_MAX_STEPS="500",
        OVBOT_MAX_NEW_TOKENS="32",
        OVBOT_KV_CACHE_GB="1",
        OVBOT_DATA_DIR=str(data_dir),
        OVBOT_API_KEYS=KEY,
        OVBOT_LOG_LEVEL="DEBUG",  # the most verbose logs must not leak the key either
    )
    env.update(extra)
    return env


@dataclass
class Server:
    process: asyncio.subprocess.Process
    url: str
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def client(self, key: str | None = KEY, timeout: float = 120) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), timeout)

    def signal_group(self, signum: int) -> None:
        """To the whole process group, as systemd's stop and Ctrl-C do (needs a server
        started with ``new_session=True``)."""
        os.killpg(self.process.pid, signum)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with self.client(None) as client:
            while (await client.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline, "never ready:\n" + self.output[-3000:]
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def ovbot_serve(
    tiny_models: Any, workdir: Path, *args: str, new_session: bool = False, **env: str
) -> AsyncIterator[Server]:
    """``python -m ovbot.bots.cli serve --port 0`` until it logs where it serves;
    ``new_session`` gives it a process group of its own (killed whole at the end)."""
    data_dir = workdir / "data"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ovbot.bots.cli", "serve", "--port", "0", *args,
        cwd=workdir,
        env=serve_env(tiny_models, data_dir, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=new_session,
    )
    lines: list[str] = []
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            match = SERVING.search(line)
            if match and not found.done():
                found.set_result(match.group(1))
        if not found.done():
            found.set_exception(AssertionError("ovbot serve exited:\n" + "\n".join(lines[-30:])))

    reader = asyncio.create_task(read())
    try:
        url = await asyncio.wait_for(asyncio.shield(found), START_TIMEOUT_S)
        yield Server(process, url, data_dir, lines)
    finally:
        if new_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
        elif process.returncode is None:
            process.kill()
        await process.wait()
        await reader
