"""The record of what a downloaded model directory must contain.

``ovbot-manifest.json`` is written last, after every file was checked against the hub,
so its presence means "this download finished and was verified once". Later checks
compare the directory against it without the network: sizes always (cheap, catches
truncation and half-copied directories), sha256 on request (reads every byte).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

MANIFEST_NAME = "ovbot-manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1024 * 1024

#: where a file's sha256 came from: the hub's LFS metadata (proves the download was
#: intact) or computed here after a git-blob check (proves only later integrity)
Sha256Source = Literal["hub-lfs", "local"]


class ManifestError(ValueError):
    """The manifest exists but cannot be trusted (bad JSON, wrong shape, unsafe path)."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    sha256_source: Sha256Source


@dataclass(frozen=True)
class Manifest:
    repo_id: str
    revision: str
    commit_sha: str
    downloaded_at: str
    files: tuple[FileEntry, ...]
    format: int = FORMAT_VERSION

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(entry) for entry in self.files]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data: Any = json.loads(text)
            files = tuple(
                FileEntry(
                    path=_safe_relative(str(item["path"])),
                    size=int(item["size"]),
                    sha256=str(item["sha256"]).lower(),
                    sha256_source=item.get("sha256_source", "local"),
                )
                for item in data["files"]
            )
            if int(data.get("format", 0)) > FORMAT_VERSION:
                raise ManifestError(f"written by a newer ovbot (format {data['format']})")
            return cls(
                repo_id=str(data["repo_id"]),
                revision=str(data["revision"]),
                commit_sha=str(data["commit_sha"]),
                downloaded_at=str(data["downloaded_at"]),
                files=files,
            )
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"unreadable {MANIFEST_NAME}: {exc}") from None


@dataclass(frozen=True)
class SizeMismatch:
    path: str
    expected: int
    actual: int


@dataclass(frozen=True)
class VerifyReport:
    """Everything wrong with a model directory, so one run tells the user all of it."""

    model_dir: Path
    manifest_found: bool
    checksums_checked: bool
    files_checked: int = 0
    missing: tuple[str, ...] = ()
    size_mismatches: tuple[SizeMismatch, ...] = ()
    checksum_mismatches: tuple[str, ...] = ()
    manifest_error: str | None = None
    commit_sha: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.manifest_found
            and self.manifest_error is None
            and not self.missing
            and not self.size_mismatches
            and not self.checksum_mismatches
        )

    @property
    def bad_files(self) -> tuple[str, ...]:
        """Files that exist but hold the wrong bytes (safe to delete and re-fetch)."""
        return tuple(m.path for m in self.size_mismatches) + self.checksum_mismatches

    def problems(self) -> list[str]:
        lines: list[str] = []
        if not self.manifest_found:
            lines.append(f"no {MANIFEST_NAME} in {self.model_dir}: the download did not finish")
        if self.manifest_error:
            lines.append(self.manifest_error)
        lines += [f"missing file: {path}" for path in self.missing]
        lines += [
            f"wrong size: {m.path} is {m.actual} bytes, expected {m.expected}"
            for m in self.size_mismatches
        ]
        lines += [f"corrupt file (sha256 mismatch): {path}" for path in self.checksum_mismatches]
        return lines


def manifest_path(model_dir: Path) -> Path:
    return Path(model_dir) / MANIFEST_NAME


def load_manifest(model_dir: Path) -> Manifest | None:
    """The manifest, or None when there is none; ManifestError when it is damaged."""
    path = manifest_path(model_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Manifest.from_json(text)


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    """Write atomically: a crash mid-write must not leave a manifest that claims a
    complete download."""
    path = manifest_path(model_dir)
    fd, tmp = tempfile.mkstemp(prefix=".ovbot-manifest.", dir=str(model_dir))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(manifest.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_manifest(model_dir: Path) -> None:
    manifest_path(model_dir).unlink(missing_ok=True)


def file_path(model_dir: Path, relative: str) -> Path:
    return Path(model_dir).joinpath(*PurePosixPath(_safe_relative(relative)).parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digests(path: Path, git_blob: bool) -> tuple[str, str | None]:
    """``(sha256, git blob sha1 or None)`` in one read: the hub names small (non-LFS)
    files only by their git blob id, so that is what proves such a download intact."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % path.stat().st_size) if git_blob else None
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            if blob is not None:
                blob.update(chunk)
    return sha256.hexdigest(), (blob.hexdigest() if blob is not None else None)


def verify(model_dir: Path, checksums: bool) -> VerifyReport:
    """Compare ``model_dir`` against its manifest. Sizes are always checked; sha256 only
    when ``checksums`` (it reads every byte, slow for GB models)."""
    model_dir = Path(model_dir)
    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        return VerifyReport(model_dir, True, checksums, manifest_error=str(exc))
    if manifest is None:
        return VerifyReport(model_dir, False, checksums)

    missing: list[str] = []
    sizes: list[SizeMismatch] = []
    corrupt: list[str] = []
    for entry in manifest.files:
        path = file_path(model_dir, entry.path)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            missing.append(entry.path)
            continue
        if actual != entry.size:
            sizes.append(SizeMismatch(entry.path, entry.size, actual))
        elif checksums and sha256_file(path) != entry.sha256:
            corrupt.append(entry.path)
    return VerifyReport(
        model_dir=model_dir,
        manifest_found=True,
        checksums_checked=checksums,
        files_checked=len(manifest.files),
        missing=tuple(missing),
        size_mismatches=tuple(sizes),
        checksum_mismatches=tuple(corrupt),
        commit_sha=manifest.commit_sha,
    )


def _safe_relative(path: str) -> str:
    """Reject paths that would escape the model directory (a hostile hub or manifest)."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path or ":" in path:
        raise ManifestError(f"unsafe file path in model repo: {path!r}")
    return path
