"""``ovbot serve`` as a user runs it: a subprocess with settings from the environment,
the tiny models, a port picked by the OS, and real signals to stop it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_serve import KEY, ovbot_serve

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_answers_then_exits_cleanly_on_signal(tiny_models: Any, tmp_path: Path, signum: int) -> None:
    async with ovbot_serve(tiny_models, tmp_path) as server:
        await server.wait_ready()
        async with server.client() as client:
            reply = await client.post("/chat", json={"user_id": "zoe", "message": "hello"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["text"]
            job = await client.get(f"/jobs/{reply.json()['job_id']}")
            assert job.json()["state"] == "done"
        async with server.client("not-the-right-key-at-all") as stranger:
            assert (await stranger.post("/chat", json={"user_id": "zoe", "message": "hi"})).status_code == 401
        async with server.client(None) as anonymous:
            assert (await anonymous.get("/metrics")).status_code == 401

        assert await server.stop(signum) == 0, server.output
    output = server.output
    assert "app shut down" in output and "bye" in output, output
    assert "http method=POST path=/chat status=200" in output
    assert KEY not in output
    assert "Traceback" not in output, output


async def test_running_job_is_requeued_at_shutdown_and_finishes_after_restart(
    tiny_models: Any, tmp_path: Path
) -> None:
    async with ovbot_serve(tiny_models, tmp_path, "--grace", "0.5") as server:
        await server.wait_ready()
        async with server.client() as client:
            accepted = await client.post("/images", json={"user_id": "yan", "prompt": "slow", "steps": 500})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            async with client.stream("GET", f"/jobs/{job_id}/events") as events:
                lines = events.aiter_lines()
                async for line in lines:
                    if line == "event: image_progress":
                        break
                # SIGTERM mid-image: the job does not finish within the grace period,
                # so it is released, and this stream ends instead of hanging
                server.process.send_signal(signal.SIGTERM)
                rest = [line async for line in lines]
            ends = [line for line in rest if line.startswith("event: ") and line != "event: image_progress"]
            # released (the turn says it was interrupted and will resume), then the stream ended
            assert ends and ends[-1] == "event: interrupted", ends
        assert await asyncio.wait_for(server.process.wait(), 60) == 0, server.output
    assert "app shut down" in server.output

    async with ovbot_serve(tiny_models, tmp_path) as restarted:
        async with restarted.client() as client:
            deadline = time.monotonic() + 60
            while (job := (await client.get(f"/jobs/{job_id}")).json())["state"] != "done":
                assert job["state"] in ("queued", "running"), job
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.2)
            assert job["result"]["url"].startswith(restarted.url + "/images/")
            png = await client.get(job["result"]["url"])
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert await restarted.stop() == 0, restarted.output


async def test_served_connections_disable_nagle() -> None:
    """Connections accepted on serve's socket get TCP_NODELAY from asyncio; without it a
    response on a kept-alive connection waited ~40 ms for the client's delayed ACK."""
    import socket

    from ovbot.bots.serve import _bind

    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    listener = _bind("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    try:
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
