"""Download one model repo from the Hugging Face Hub into a plain directory, pinned to
one commit, and prove every byte arrived intact before calling it done.

The branch name (``main``) is resolved to a commit sha first and exactly that sha is
downloaded, so a push to the repo mid-download cannot mix two versions. Files are
checked against the hub's own metadata (LFS sha256, or the git blob id for small
files), not against what the download happened to deliver.

Small (git) files go through ``snapshot_download``. Large (LFS) files are streamed here,
with huggingface_hub's URL, headers, session and errors, into a partial file under
``.cache/ovbot/partial/<sha256>.part`` that survives a failed run: huggingface_hub 1.x
deletes its own partial file when a download fails (its temporary name is unique per
attempt since huggingface_hub PR #4228; Xet restarts from zero too), so without this a
dropped connection at 90% of a 1 GB file would cost the whole gigabyte again.

Progress: a bar on a terminal; otherwise (``ovbot serve`` under a service manager, logs
to a file) a log line every ``PROGRESS_LOG_EVERY_S`` with percent, MB/s and ETA, so a
2-3 GB first start does not look hung.

Any failure, whatever library raises it (huggingface_hub's own errors, httpx's, or the
next major version's), ends in one ``ModelUnavailable`` line that says what to do.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import httpx
from huggingface_hub import (
    HfApi,
    constants,
    get_session,
    hf_hub_url,
    hf_raise_for_status,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import WeakFileLock, build_hf_headers
from huggingface_hub.utils import tqdm as hf_tqdm
from ovbot.core.errors import ModelUnavailable
from ovbot.models.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    Sha256Source,
    digests,
    file_path,
    load_manifest,
    remove_manifest,
    write_manifest,
)

log = logging.getLogger("ovbot.models")

#: the directory ``offline_help`` suggests for ``models build-tiny`` (ignored by git)
TINY_MODELS_DIR = "tiny-models"
#: seconds between two progress log lines when no progress bar is shown
PROGRESS_LOG_EVERY_S = 10.0
#: where large files grow between runs, relative to the model directory
PARTIAL_DIR = Path(".cache") / "ovbot" / "partial"
#: consecutive failed attempts without a single new byte before giving up
_MAX_STALLS = 4
_HF_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
_MB = 1024 * 1024


def ovbot_command() -> str:
    """How the user can run ovbot from their shell now: ``ovbot`` when that name on PATH
    is this installation, else the script's path (``dev.py run`` does not put
    ``.venv/bin`` on PATH), relative to the working directory when inside it."""
    bin_dir = Path(sys.executable).parent
    script = bin_dir / ("ovbot.exe" if os.name == "nt" else "ovbot")
    on_path = shutil.which("ovbot")
    try:
        if on_path and Path(on_path).resolve() == script.resolve():
            return "ovbot"
    except OSError:
        pass
    target = script if script.exists() else None
    if target is None:
        return f"{_shell_path(Path(sys.executable))} -m ovbot.bots.cli"
    return _shell_path(target.with_suffix("") if os.name == "nt" else target)


def _shell_path(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def offline_help() -> str:
    """What to do without the hub; every "no model" message ends with it (one line)."""
    ovbot = ovbot_command()
    return (
        f"Connect to the internet and run `{ovbot} models download`, or set "
        "OVBOT_LLM_MODEL_DIR / OVBOT_IMAGE_MODEL_DIR to a local OpenVINO model directory. "
        f"To try ovbot offline, build tiny random models with `{ovbot} models build-tiny "
        f"{TINY_MODELS_DIR}` (needs the convert extra: `python3 dev.py setup`) and set "
        f"OVBOT_LLM_MODEL_DIR={TINY_MODELS_DIR}/llm OVBOT_IMAGE_MODEL_DIR={TINY_MODELS_DIR}/image."
    )


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    lfs_sha256: str | None
    blob_id: str | None


@dataclass(frozen=True)
class RemoteSnapshot:
    """One commit of a repo as the hub describes it: the reference we verify against."""

    repo_id: str
    revision: str
    commit_sha: str
    files: tuple[RemoteFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class _SilentTqdm(hf_tqdm):
    """huggingface_hub's bar with output forced off (logs or pipes must not fill with
    carriage-return noise)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class DownloadProgress:
    """Progress of the large files of one download: a bar on a terminal, otherwise a log
    line at most every ``log_every_s`` with percent, MB/s and ETA.

    The speed counts only bytes fetched in this run (a resumed partial file is not
    downloaded again, so it must not inflate MB/s or shrink the ETA)."""

    def __init__(
        self,
        desc: str,
        total: int,
        bar: bool,
        log_every_s: float = PROGRESS_LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc = desc
        self.total = total
        self.done = 0
        self._fetched = 0
        self._log_every_s = log_every_s
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._bar = hf_tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not bar)
        self._log = not bar

    def resumed(self, size: int) -> None:
        """``size`` bytes are on disk from an earlier attempt (negative: they were not)."""
        self.done += size
        self._bar.update(size)

    def update(self, size: int) -> None:
        """``size`` new bytes arrived."""
        self.done += size
        self._fetched += size
        self._bar.update(size)
        if self._log:
            now = self._clock()
            if now - self._last_line >= self._log_every_s:
                self._last_line = now
                log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``downloading REPO: 45% (1234.5 of 2740.0 MB) at 12.3 MB/s, ETA 02:03``"""
        elapsed = (self._clock() if now is None else now) - self._started
        percent = 100.0 * self.done / self.total if self.total else 100.0
        rate = self._fetched / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            eta = hf_tqdm.format_interval(max(0.0, self.total - self.done) / rate)
            speed = f"{rate / _MB:.1f} MB/s"
        else:
            eta, speed = "unknown", "? MB/s"
        return (
            f"downloading {self.desc}: {percent:.0f}% ({self.done / _MB:.1f} of "
            f"{self.total / _MB:.1f} MB) at {speed}, ETA {eta}"
        )

    def close(self) -> None:
        self._bar.close()


def offline_requested() -> bool:
    """huggingface_hub reads ``HF_HUB_OFFLINE`` once at import; honour a later setting too."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.is_offline_mode() or flag in {"1", "ON", "YES", "TRUE"}


def progress_enabled(requested: bool, stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return requested and stream.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_snapshot(
    repo_id: str, revision: str, token: str | None, endpoint: str | None = None
) -> RemoteSnapshot:
    """Ask the hub which commit ``revision`` is now and what files (sizes, hashes) it has.
    Raises huggingface_hub/httpx errors; ``download_model`` translates them."""
    api = HfApi(endpoint=endpoint, token=token, library_name="ovbot")
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    if not info.sha or info.siblings is None:
        raise ModelUnavailable(f"The hub returned no commit or file list for {repo_id}@{revision}.")
    files: list[RemoteFile] = []
    for sibling in info.siblings:
        size = sibling.lfs.size if sibling.lfs is not None else sibling.size
        if size is None:
            raise ModelUnavailable(f"The hub returned no size for {repo_id}/{sibling.rfilename}.")
        file_path(Path("."), sibling.rfilename)  # rejects paths escaping the model directory
        files.append(
            RemoteFile(
                path=sibling.rfilename,
                size=int(size),
                lfs_sha256=sibling.lfs.sha256.lower() if sibling.lfs is not None else None,
                blob_id=sibling.blob_id,
            )
        )
    return RemoteSnapshot(repo_id, revision, info.sha, tuple(files))


def download_model(
    repo_id: str,
    revision: str,
    dest_dir: Path,
    token: str | None = None,
    endpoint: str | None = None,
    progress: bool = True,
    log_every_s: float = PROGRESS_LOG_EVERY_S,
) -> Path:
    """Download ``repo_id@revision`` into ``dest_dir``, verify it and write its manifest.

    Safe to re-run: finished files are kept, so an interrupted download continues where
    it stopped. ``progress``: a bar when stderr is a terminal; without one, progress is
    logged every ``log_every_s``. Raises ModelUnavailable (never containing ``token``)
    on any failure.
    """
    dest = Path(dest_dir)
    try:
        return _download(repo_id, revision, dest, token, endpoint, progress, log_every_s)
    except ModelUnavailable as exc:
        raise ModelUnavailable(_scrub(exc.user_message, token)) from None
    except Exception as exc:  # noqa: BLE001 - whatever the hub library raises, one clear line
        log.debug("download of %s failed: %s", repo_id, _scrub(_chain_repr(exc), token))
        raise _unavailable(exc, repo_id, revision, dest, token, endpoint) from None


def _download(
    repo_id: str,
    revision: str,
    dest: Path,
    token: str | None,
    endpoint: str | None,
    progress: bool,
    log_every_s: float,
) -> Path:
    if offline_requested():
        raise ModelUnavailable(
            f"Cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE). {offline_help()}"
        )
    started = time.monotonic()
    log.info("resolving %s@%s", repo_id, revision)
    snapshot = resolve_snapshot(repo_id, revision, token, endpoint)
    dest.mkdir(parents=True, exist_ok=True)
    _forget_other_commit(dest, snapshot.commit_sha)

    needed = [f for f in snapshot.files if not _has_size(dest, f)]
    log.info(
        "downloading %d of %d files (%.1f MB) of %s@%s into %s",
        len(needed),
        len(snapshot.files),
        sum(f.size for f in needed) / _MB,
        repo_id,
        snapshot.commit_sha[:12],
        dest,
    )
    _fetch(snapshot, dest, token, endpoint, progress, log_every_s, only=None)
    log.info("downloaded %s in %.1f s", repo_id, time.monotonic() - started)

    entries, missing, bad = _check_against_hub(snapshot, dest)
    if missing or bad:
        # A file finished on an earlier run may have been damaged on disk since; the
        # library trusts its metadata and keeps it, so delete and fetch it once more.
        log.warning(
            "re-fetching %d damaged or missing files of %s", len(missing) + len(bad), repo_id
        )
        _delete(dest, bad)
        _fetch(snapshot, dest, token, endpoint, progress, log_every_s, only=missing + bad)
        entries, missing, bad = _check_against_hub(snapshot, dest)
    if missing:
        raise ModelUnavailable(
            f"The download of {repo_id} is incomplete ({len(missing)} files missing, e.g. "
            f"{missing[0]}). {offline_help()}"
        )
    if bad:
        _delete(dest, bad)
        raise ModelUnavailable(
            f"{repo_id}: file {bad[0]} is corrupt (its sha256 does not match the hub's) and "
            "was deleted. Re-run `ovbot models download` to fetch it again."
        )
    write_manifest(
        dest,
        Manifest(
            repo_id=repo_id,
            revision=revision,
            commit_sha=snapshot.commit_sha,
            downloaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            files=tuple(entries),
        ),
    )
    log.info(
        "verified %d files (%.1f MB, sha256) of %s@%s",
        len(entries),
        snapshot.total_size / _MB,
        repo_id,
        snapshot.commit_sha[:12],
    )
    return dest


def _fetch(
    snapshot: RemoteSnapshot,
    dest: Path,
    token: str | None,
    endpoint: str | None,
    progress: bool,
    log_every_s: float,
    only: Sequence[str] | None,
) -> None:
    wanted = [f for f in snapshot.files if only is None or f.path in only]
    small = [f.path for f in wanted if f.lfs_sha256 is None]
    if small:
        snapshot_download(
            snapshot.repo_id,
            revision=snapshot.commit_sha,
            local_dir=dest,
            token=token,
            endpoint=endpoint,
            library_name="ovbot",
            allow_patterns=[glob.escape(p) for p in small],
            tqdm_class=None if progress_enabled(progress) else _SilentTqdm,
        )
    large = [f for f in wanted if f.lfs_sha256 is not None and not _has_size(dest, f)]
    if not large:
        return
    bar = DownloadProgress(
        snapshot.repo_id,
        sum(f.size for f in large),
        bar=progress_enabled(progress),
        log_every_s=log_every_s,
    )
    try:
        for remote in large:
            _fetch_large(snapshot, remote, dest, token, endpoint, bar)
    finally:
        bar.close()


def _fetch_large(
    snapshot: RemoteSnapshot,
    remote: RemoteFile,
    dest: Path,
    token: str | None,
    endpoint: str | None,
    bar: DownloadProgress,
) -> None:
    """Grow ``<sha256>.part`` to the expected size, continuing from its current length
    with a ``Range`` request (in this run after a dropped connection, or in the next
    run after a failure), then move it into place. Naming the partial by the expected
    sha256 means bytes of another version can never be continued."""
    partial = dest / PARTIAL_DIR / f"{remote.lfs_sha256}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    url = hf_hub_url(snapshot.repo_id, remote.path, revision=snapshot.commit_sha, endpoint=endpoint)
    headers = build_hf_headers(token=token, library_name="ovbot")
    headers["Accept-Encoding"] = "identity"  # a Range of a gzip stream is meaningless
    with WeakFileLock(partial.with_suffix(".lock")):
        have = _size_or_zero(partial)
        if have > remote.size:
            partial.unlink()
            have = 0
        if have:
            log.info("resuming %s at %.1f of %.1f MB", remote.path, have / _MB, remote.size / _MB)
        bar.resumed(have)
        stalls = 0
        while have < remote.size:
            try:
                _stream_into(url, headers, partial, have, bar)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                grown = _size_or_zero(partial)
                stalls = 0 if grown > have else stalls + 1
                if stalls >= _MAX_STALLS:
                    raise
                log.warning(
                    "connection lost after %.1f of %.1f MB of %s (%s); resuming",
                    grown / _MB,
                    remote.size / _MB,
                    remote.path,
                    _first_line(exc),
                )
                time.sleep(0.2 if stalls == 0 else float(2**stalls))
            have = _size_or_zero(partial)
        target = file_path(dest, remote.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)


def _stream_into(
    url: str, headers: dict[str, str], partial: Path, have: int, bar: DownloadProgress
) -> None:
    """Append the rest of the file; every received byte is on disk before the next read,
    so an exception here loses nothing already counted."""
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with get_session().stream(
        "GET",
        url,
        headers=request_headers,
        timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        follow_redirects=True,
    ) as response:
        if response.status_code == 416:  # our partial is longer than the file: start over
            partial.unlink(missing_ok=True)
        hf_raise_for_status(response)
        if have and response.status_code != 206:  # Range ignored: the body is the whole file
            bar.resumed(-have)
            have = 0
        with open(partial, "ab" if have else "wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
                bar.update(len(chunk))


def _check_against_hub(
    snapshot: RemoteSnapshot, dest: Path
) -> tuple[list[FileEntry], list[str], list[str]]:
    """``(manifest entries, missing paths, wrong-content paths)`` by hashing every file."""
    entries: list[FileEntry] = []
    missing: list[str] = []
    bad: list[str] = []
    for remote in snapshot.files:
        path = file_path(dest, remote.path)
        if not path.is_file():
            missing.append(remote.path)
            continue
        if path.stat().st_size != remote.size:
            bad.append(remote.path)
            continue
        sha256, blob = digests(path, git_blob=remote.lfs_sha256 is None)
        if remote.lfs_sha256 is not None:
            intact = sha256 == remote.lfs_sha256
        else:
            intact = remote.blob_id is None or blob == remote.blob_id
        if not intact:
            log.warning("%s: %s does not match the hub's checksum", snapshot.repo_id, remote.path)
            bad.append(remote.path)
            continue
        source: Sha256Source = "hub-lfs" if remote.lfs_sha256 is not None else "local"
        entries.append(FileEntry(remote.path, remote.size, sha256, source))
    return entries, missing, bad


def _has_size(dest: Path, remote: RemoteFile) -> bool:
    try:
        return file_path(dest, remote.path).stat().st_size == remote.size
    except OSError:
        return False


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _delete(dest: Path, paths: Sequence[str]) -> None:
    for relative in paths:
        file_path(dest, relative).unlink(missing_ok=True)


def _forget_other_commit(dest: Path, commit_sha: str) -> None:
    """A manifest of another commit would vouch for a directory being rewritten."""
    try:
        manifest = load_manifest(dest)
    except ManifestError:
        manifest = None
        remove_manifest(dest)
    if manifest is not None and manifest.commit_sha != commit_sha:
        log.info(
            "updating %s from commit %s to %s", dest, manifest.commit_sha[:12], commit_sha[:12]
        )
        remove_manifest(dest)


def _unavailable(
    exc: BaseException,
    repo_id: str,
    revision: str,
    dest: Path,
    token: str | None,
    endpoint: str | None,
) -> ModelUnavailable:
    """One actionable sentence per failure family; the library's text only as a hint.
    Unknown exception types (another huggingface_hub major, a new httpx) still end in
    one line with what to do, never a traceback."""
    hub = endpoint or constants.ENDPOINT
    network = _connection_error_in(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        text = f"Cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE). {offline_help()}"
    elif isinstance(exc, RevisionNotFoundError):
        text = (
            f"{repo_id} has no revision {revision!r}: check OVBOT_LLM_REVISION / "
            "OVBOT_IMAGE_REVISION."
        )
    elif isinstance(exc, GatedRepoError):
        text = (
            f"{repo_id} is gated: accept its terms on the hub and set OVBOT_HF_TOKEN to a token "
            "with access."
        )
    elif isinstance(exc, RepositoryNotFoundError) or (
        isinstance(exc, HfHubHTTPError) and _status(exc) in (401, 403)
    ):
        text = (
            f"{repo_id} was not found on {hub} or needs a token: check OVBOT_LLM_REPO / "
            "OVBOT_IMAGE_REPO and OVBOT_HF_TOKEN."
        )
    elif isinstance(exc, HfHubHTTPError):
        text = (
            f"The hub at {hub} answered HTTP {_status(exc)} while downloading {repo_id}; try "
            f"again later. {offline_help()}"
        )
    elif network is not None or isinstance(exc, LocalEntryNotFoundError):
        cause = network if network is not None else exc
        text = f"Cannot reach the model hub at {hub} ({_first_line(cause)}). {offline_help()}"
    elif isinstance(exc, OSError) and exc.errno is not None:
        text = f"Cannot write the model to {dest}: {exc.strerror or exc}."
    elif isinstance(exc, OSError):
        text = (
            f"The download of {repo_id} was cut short ({_first_line(exc)}). Re-run "
            "`ovbot models download` to continue."
        )
    else:
        text = (
            f"Cannot download {repo_id}@{revision} from {hub} ({_first_line(exc)}). "
            f"{offline_help()}"
        )
    return ModelUnavailable(_scrub(text, token))


#: what a lost or impossible connection looks like, in any library built on these
_CONNECTION_ERRORS = (httpx.TransportError, ConnectionError, TimeoutError, socket.gaierror)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps, via ``__cause__``/``__context__``) is a lost or
    refused connection, a timeout or a failed name lookup: worth resuming, not a bug."""
    return _connection_error_in(exc) is not None


def _connection_error_in(exc: BaseException) -> BaseException | None:
    for link in _chain(exc):
        if isinstance(link, _CONNECTION_ERRORS):
            return link
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _chain_repr(exc: BaseException) -> str:
    return " <- ".join(repr(link) for link in _chain(exc))


def _status(exc: HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone says "connection refused"
    when a library's message is empty)."""
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    line = f"{name}: {text[0]}" if text else name
    return line[:200]


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "[REDACTED]")
    return _HF_TOKEN_SHAPE.sub("[REDACTED]", text)
