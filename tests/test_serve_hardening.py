"""``ovbot serve`` against hostile or careless clients, as a user runs it: one subprocess
with the tiny models, API keys, DEBUG logging and small HTTP limits, real sockets.

* a request path cannot forge a log line, and no control byte reaches the log;
* made-up HTTP methods do not grow ``/metrics``;
* clients that send their headers slowly are disconnected within the header timeout,
  and the connection limit answers 503 instead of taking more;
* at DEBUG no user message text reaches the log (aiosqlite logs SQL parameters);
* a device OpenVINO cannot find stops the start with one line, not a traceback.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_serve import KEY, serve_env


SERVING = re.compile(rb"serving on (http://127\.0\.0\.1:(\d+))")
START_TIMEOUT_S = 120.0
HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
#: a log record line starts with ovbot's timestamp format
RECORD_START = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    raw: list[bytes] = field(default_factory=list)  # every output line, bytes as written

    @property
    def output(self) -> bytes:
        return b"".join(self.raw)

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def wait_for_output(self, needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            assert time.monotonic() < deadline, f"{needle!r} never logged"
            time.sleep(0.05)


def hardened_env(tiny_models: Any, workdir: Path, **extra: str) -> dict[str, str]:
    return serve_env(
        tiny_models,
        workdir / "data",
        OVBOT_HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        OVBOT_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        **extra,
    )


def start_serve(env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen[bytes], list[bytes], threading.Thread]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ovbot.bots.cli", "serve", "--port", "0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    raw: list[bytes] = []

    def read() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            raw.append(line)

    reader = threading.Thread(target=read, name="serve-output", daemon=True)
    reader.start()
    return process, raw, reader


@pytest.fixture(scope="module")
def served(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("serve-hardening")
    process, raw, reader = start_serve(hardened_env(tiny_models, workdir), workdir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        match = None
        while match is None:
            match = SERVING.search(b"".join(raw))
            if match is None:
                assert process.poll() is None, b"".join(raw)[-3000:].decode(errors="replace")
                assert time.monotonic() < deadline, "ovbot serve did not start"
                time.sleep(0.05)
        server = Served(process, match.group(1).decode(), int(match.group(2)), raw)
        with server.client(None) as client:
            while client.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)


def raw_request(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    """Send ``head`` as is and read until the server closes: what a hostile client does,
    without an HTTP library normalising the request line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- item 7


def test_request_path_cannot_forge_a_log_line_or_write_control_bytes(served: Served) -> None:
    forged = "1999-12-31 23:59:59,000 INFO ovbot.http: FORGED"
    target = ("/x%0a" + forged.replace(" ", "%20") + "%0d%00%1b[31mRED%e2%80%a8tail").encode()
    head = (
        b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nConnection: close\r\n\r\n"
    )

    response = raw_request(served.port, head)

    assert response.startswith(b"HTTP/1.1 404"), response[:200]
    served.wait_for_output(b"FORGED")
    output = served.output
    lines = output.split(b"\n")
    assert not [line for line in lines if line.startswith(b"1999-12-31")], "a forged record reached the log"
    logged = [line for line in lines if b"FORGED" in line]
    assert len(logged) == 1 and RECORD_START.match(logged[0]), logged
    assert b"path=/x\\n1999-12-31 23:59:59,000 INFO ovbot.http: FORGED\\r\\x00\\x1b[31mRED\\u2028tail" in logged[0]
    for byte in (b"\x00", b"\x1b", b"\r", "\u2028".encode()):
        assert byte not in output, byte
    assert KEY.encode() not in output


# --------------------------------------------------------------------------- item 8


def test_made_up_http_methods_do_not_grow_metrics(served: Served) -> None:
    with served.client() as client:
        client.request("XFIRST", "/health")  # the "other" series exists from here on
        before = client.get("/metrics").text
        before = client.get("/metrics").text  # the /metrics series itself, created too
        for number in range(20):
            response = client.request(f"XMETHOD{number}", "/health")
            assert response.status_code in (401, 404, 405), response.status_code
        after = client.get("/metrics").text

    assert "XMETHOD" not in after and "XFIRST" not in after
    assert 'method="other"' in after
    assert len(after.splitlines()) == len(before.splitlines()), "metrics grew with made-up methods"


# --------------------------------------------------------------------------- item 10


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that sent a request line and one header, not the blank line."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        clients.append(sock)
    return clients


def _closed_by_server(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_slow_clients_are_disconnected_within_the_header_timeout(served: Served) -> None:
    started = time.monotonic()
    clients = _slow_clients(served.port, 5)
    closed_after: dict[int, float] = {}
    try:
        # a header line every 0.2 s: data trickling in must not extend the deadline
        while len(closed_after) < len(clients) and time.monotonic() - started < HEADER_TIMEOUT_S + 5:
            for index, sock in enumerate(clients):
                if index in closed_after:
                    continue
                if _closed_by_server(sock):
                    closed_after[index] = time.monotonic() - started
                    continue
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed_after[index] = time.monotonic() - started
            time.sleep(0.2)
    finally:
        for sock in clients:
            sock.close()

    assert len(closed_after) == len(clients), f"still open after {HEADER_TIMEOUT_S + 5} s: {closed_after}"
    assert max(closed_after.values()) < HEADER_TIMEOUT_S + 2, closed_after
    with served.client(None) as client:
        assert client.get("/health").status_code == 200  # the server itself is fine


def test_connection_limit_answers_503_until_slow_clients_time_out(served: Served) -> None:
    clients = _slow_clients(served.port, MAX_CONNECTIONS - 1)
    try:
        time.sleep(0.3)  # accepted by the server
        with served.client(None) as client:
            busy = client.get("/health")
            assert busy.status_code == 503, busy.status_code
            deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
            while (status := client.get("/health").status_code) != 200:
                assert status == 503 and time.monotonic() < deadline, status
                time.sleep(0.2)
    finally:
        for sock in clients:
            sock.close()


# --------------------------------------------------------------------------- item 11


def test_debug_logs_never_hold_the_users_message(served: Served) -> None:
    canary = f"zebra-canary-{uuid.uuid4().hex}"
    with served.client() as client:
        reply = client.post("/chat", json={"user_id": "quinn", "message": f"my secret is {canary}"})
        assert reply.status_code == 200, reply.text
        job = client.get(f"/jobs/{reply.json()['job_id']}").json()
        assert job["state"] == "done", job
    served.wait_for_output(b"path=/jobs/")  # the log has caught up with the whole turn

    output = served.output
    assert b" DEBUG " in output, "the server does not log at DEBUG: the test proves nothing"
    assert b"http method=POST path=/chat status=200" in output
    assert canary.encode() not in output


# --------------------------------------------------------------------------- item 15


def test_unavailable_device_stops_the_start_with_one_line(tiny_models: Any, tmp_path: Path) -> None:
    import openvino

    available = openvino.Core().available_devices
    if any(device.startswith("GPU") for device in available):
        pytest.skip(f"this computer has a GPU ({available})")
    env = hardened_env(tiny_models, tmp_path, OVBOT_LLM_DEVICE="GPU", OVBOT_IMAGE_DEVCE="CPU")
    process, raw, reader = start_serve(env, tmp_path)
    try:
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(10)
    output = b"".join(raw).decode(errors="replace")

    assert code == 2, output
    assert "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("ovbot: OVBOT_LLM_DEVICE=GPU: OpenVINO finds no GPU on this computer"), last
    assert "OVBOT_LLM_DEVICE=CPU" in last
    assert "OVBOT_IMAGE_DEVCE (environment) is not an ovbot setting and is ignored; did you mean OVBOT_IMAGE_DEVICE?" in output
