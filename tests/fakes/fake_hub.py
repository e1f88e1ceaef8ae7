"""A tiny Hugging Face Hub on 127.0.0.1 speaking exactly what huggingface_hub 1.21's
``model_info`` and ``snapshot_download`` ask for over plain HTTP.

Endpoints (from ``hf_api.model_info`` and ``file_download.get_hf_file_metadata`` /
``http_get``):

* ``GET /api/models/{repo}[/revision/{rev}]`` -> ``id``, ``sha``, ``siblings``; sizes,
  ``blobId`` and ``lfs`` only with ``?blobs=True`` (as the real hub does).
* ``HEAD /{repo}/resolve/{rev}/{path}`` -> ``X-Repo-Commit``, ``ETag`` (git blob id, or
  sha256 for LFS files with ``X-Linked-Etag`` / ``X-Linked-Size``), ``Content-Length``.
* ``GET`` of the same URL, honouring ``Range: bytes=N-`` with 206 + ``Content-Range``.
  LFS files answer ``302`` to ``http://localhost:{port}/cdn/{sha256}/{path}`` like the
  real hub's CDN: another origin, so a client must not send the token there.

No ``X-Xet-*`` headers are ever sent, so the client stays on plain HTTP even with hf_xet
installed. Faults are injected per file: cut the connection mid-body, answer 503, or
serve wrong bytes. Every request is recorded for the tests to assert on.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class FakeFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        """What git (and the hub's ``blobId``) calls this file; for LFS, the pointer's id."""
        content = self.pointer() if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()

    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {len(self.data)}\n"
        ).encode()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, FakeFile]
    commit: str


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int
    range: str | None
    authorization: str | None
    body_bytes: int


@dataclass
class _Faults:
    #: per file, what the next GETs do, in order: "cut" or "fail"
    queued: dict[str, list[str]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)


class FakeHub:
    def __init__(self, lfs_via_cdn: bool = True) -> None:
        self.lfs_via_cdn = lfs_via_cdn
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Served] = []
        self._faults = _Faults()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup
    def add_repo(
        self, repo_id: str, files: Mapping[str, bytes], lfs: Iterable[str] = ()
    ) -> FakeRepo:
        lfs_names = set(lfs)
        fake_files = {name: FakeFile(data, name in lfs_names) for name, data in files.items()}
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(fake_files):
            digest.update(name.encode() + fake_files[name].data)
        repo = FakeRepo(repo_id, fake_files, digest.hexdigest())
        self.repos[repo_id] = repo
        return repo

    def cut_connection(self, filename: str, times: int = 1) -> None:
        """The next ``times`` GETs of ``filename`` send full headers, half the body, then
        close. Faults queue up in the order they are added."""
        with self._lock:
            self._faults.queued.setdefault(filename, []).extend(["cut"] * times)

    def fail_gets(self, filename: str, times: int = 1) -> None:
        """The next ``times`` GETs of ``filename`` answer 503 (after faults queued earlier)."""
        with self._lock:
            self._faults.queued.setdefault(filename, []).extend(["fail"] * times)

    def serve_corrupt(self, filename: str, corrupt: bool = True) -> None:
        with self._lock:
            if corrupt:
                self._faults.corrupt.add(filename)
            else:
                self._faults.corrupt.discard(filename)

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the fake hub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-hub",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def served(self, method: str | None = None, filename: str | None = None) -> list[Served]:
        with self._lock:
            records = list(self.requests)
        return [
            r
            for r in records
            if (method is None or r.method == method)
            and (filename is None or r.path.endswith("/" + filename))
        ]

    def cdn_url(self, fake: FakeFile, filename: str) -> str:
        port = self.endpoint.rsplit(":", 1)[1]
        return f"http://localhost:{port}/cdn/{fake.sha256}/{filename}"

    def bytes_served(self, filename: str) -> int:
        return sum(r.body_bytes for r in self.served("GET", filename))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ internals
    def _record(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)

    def _next_fault(self, filename: str) -> str | None:
        with self._lock:
            queue = self._faults.queued.get(filename)
            return queue.pop(0) if queue else None

    def _is_corrupt(self, filename: str) -> bool:
        with self._lock:
            return filename in self._faults.corrupt


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real hub; needs exact Content-Length

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        """Silent: pytest output is for the tests."""

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # ------------------------------------------------------------------ routing
    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path.startswith("/api/models/") and not head:
            self._model_info(path.removeprefix("/api/models/"), parse_qs(url.query))
            return
        cdn = _CDN.match(path)
        if cdn is not None:
            self._cdn(cdn["sha"], cdn["path"], head)
            return
        match = _RESOLVE.match(path)
        if match is None:
            self._error(404, "EntryNotFound", "no such endpoint")
            return
        self._resolve(match["repo"], match["rev"], match["path"], head)

    def _model_info(self, rest: str, query: dict[str, list[str]]) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo_at(repo_id, revision or "main")
        if repo is None:
            return
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, fake in sorted(repo.files.items()):
            sibling: dict[str, object] = {"rfilename": name}
            if with_blobs:
                sibling["blobId"] = fake.blob_id
                sibling["size"] = len(fake.data)
                if fake.lfs:
                    sibling["lfs"] = {
                        "sha256": fake.sha256,
                        "size": len(fake.data),
                        "pointerSize": len(fake.pointer()),
                    }
            siblings.append(sibling)
        body = json.dumps(
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": repo.commit,
                "private": False,
                "siblings": siblings,
            }
        ).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self._repo_at(repo_id, revision)
        if repo is None:
            return
        fake = repo.files.get(filename)
        if fake is None:
            self._error(
                404, "EntryNotFound", f"{filename} not in {repo_id}", {"X-Repo-Commit": repo.commit}
            )
            return
        headers = {
            "X-Repo-Commit": repo.commit,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if fake.lfs:
            headers |= {
                "ETag": f'"{fake.sha256}"',
                "X-Linked-Etag": f'"{fake.sha256}"',
                "X-Linked-Size": str(len(fake.data)),
            }
        else:
            headers["ETag"] = f'"{fake.blob_id}"'
        if fake.lfs and self.hub.lfs_via_cdn:
            headers["Location"] = self.hub.cdn_url(fake, filename)
            self._send(302, headers, b"", head=head)
            return
        self._serve_file(fake, filename, headers, head)

    def _cdn(self, sha256: str, filename: str, head: bool) -> None:
        for repo in self.hub.repos.values():
            fake = repo.files.get(filename)
            if fake is not None and fake.lfs and fake.sha256 == sha256:
                self._serve_file(
                    fake, filename, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}, head
                )
                return
        self._send(404, {"Content-Type": "text/plain"}, b"NoSuchKey")

    def _serve_file(
        self, fake: FakeFile, filename: str, headers: dict[str, str], head: bool
    ) -> None:
        if head:
            headers["Content-Length"] = str(len(fake.data))
            self._send(200, headers, b"", head=True)
            return
        fault = self.hub._next_fault(filename)
        if fault == "fail":
            self._error(503, None, "temporarily unavailable")
            return
        data = _corrupted(fake.data) if self.hub._is_corrupt(filename) else fake.data
        self._send_body(headers, data, cut=fault == "cut")

    def _send_body(self, headers: dict[str, str], data: bytes, cut: bool) -> None:
        total = len(data)
        status, start, end = 200, 0, total - 1
        wanted = self.headers.get("Range")
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match is None or int(match[1]) >= total:
                self._send(416, {"Content-Range": f"bytes */{total}"}, b"")
                return
            start = int(match[1])
            end = min(int(match[2]), total - 1) if match[2] else total - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        body = data[start : end + 1]
        headers["Content-Length"] = str(len(body))
        if cut:
            body = body[: len(body) // 2]
            self.close_connection = True  # the client sees EOF before Content-Length
        self._send(status, headers, body, declared=True)

    # ------------------------------------------------------------------ helpers
    def _repo_at(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _error(
        self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        headers |= extra or {}
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _send(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes,
        head: bool = False,
        declared: bool = False,
    ) -> None:
        """Record first: once the headers are out the client may act (and the test read
        the log) before this thread runs another line."""
        body = b"" if head else body
        self.hub._record(
            Served(
                method="HEAD" if head else "GET",
                path=unquote(urlsplit(self.path).path),
                status=status,
                range=self.headers.get("Range"),
                authorization=self.headers.get("Authorization"),
                body_bytes=len(body),
            )
        )
        self.send_response(status)
        if not declared and not head:
            headers = headers | {"Content-Length": str(len(body))}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


def _corrupted(data: bytes) -> bytes:
    """Same length, different bytes in the middle: only a checksum can tell."""
    middle = len(data) // 2
    patch = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    return data[:middle] + patch + data[middle + len(patch) :]
