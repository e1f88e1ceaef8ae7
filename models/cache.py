"""Where each model lives on disk and whether it can be loaded now.

Two sources: a directory the user configured (``OVBOT_LLM_MODEL_DIR`` /
``OVBOT_IMAGE_MODEL_DIR``), used as is and never written to; or a directory this cache
downloads into, ``<models_dir>/<org>--<name>/<revision>``, trusted only once its
manifest is there and matches. Start-up never touches the network when the models are
complete, so a bot that worked yesterday starts offline today.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from ovbot.core.config import Settings
from ovbot.core.errors import ModelUnavailable
from ovbot.models.hub import download_model, offline_help
from ovbot.models.manifest import verify

log = logging.getLogger("ovbot.models")

ModelKind = Literal["llm", "image"]
KINDS: tuple[ModelKind, ...] = ("llm", "image")

#: what OpenVINO GenAI needs to load a directory that has no manifest to go by
REQUIRED_FILES: Mapping[ModelKind, tuple[str, ...]] = MappingProxyType(
    {
        "llm": (
            "openvino_model.xml",
            "openvino_model.bin",
            "openvino_tokenizer.xml",
            "openvino_detokenizer.xml",
        ),
        "image": (
            "model_index.json",
            "unet/openvino_model.xml",
            "vae_decoder/openvino_model.xml",
            "text_encoder/openvino_model.xml",
        ),
    }
)
_LABEL: Mapping[ModelKind, str] = MappingProxyType({"llm": "LLM", "image": "image"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ModelSource:
    kind: ModelKind
    repo_id: str
    revision: str
    path: Path
    configured: bool

    @property
    def dir_env(self) -> str:
        return f"OVBOT_{self.kind.upper()}_MODEL_DIR"


@dataclass(frozen=True)
class ModelStatus:
    source: ModelSource
    present: bool
    complete: bool
    size_bytes: int
    problems: tuple[str, ...]
    commit_sha: str | None = None
    #: what the check looked at, in words (``ovbot models verify`` prints it as is)
    checked: str = ""

    @property
    def kind(self) -> ModelKind:
        return self.source.kind

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        return "incomplete" if self.present else "missing"


class ModelCache:
    """``endpoint`` defaults to ``HF_ENDPOINT`` read now, not at huggingface_hub's import."""

    def __init__(self, settings: Settings, endpoint: str | None = None) -> None:
        self._settings = settings
        self._endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None

    def source(self, kind: ModelKind) -> ModelSource:
        settings = self._settings
        repo, revision, configured = {
            "llm": (settings.llm_repo, settings.llm_revision, settings.llm_model_dir),
            "image": (settings.image_repo, settings.image_revision, settings.image_model_dir),
        }[kind]
        if configured is not None:
            return ModelSource(kind, repo, revision, Path(configured), configured=True)
        path = (
            Path(settings.models_dir).expanduser()
            / _segment(repo.replace("/", "--"))
            / _segment(revision.replace("/", "--"))
        )
        return ModelSource(kind, repo, revision, path, configured=False)

    def llm_dir(self) -> Path:
        return self._load_dir("llm")

    def image_dir(self) -> Path:
        return self._load_dir("image")

    def check(self, kind: ModelKind, checksums: bool = False) -> ModelStatus:
        source = self.source(kind)
        present = source.path.is_dir()
        if source.configured:
            # a directory the user made has no manifest: there are no sizes or hashes to
            # compare with, only the files OpenVINO needs can be looked for
            required = REQUIRED_FILES[kind]
            missing = [f for f in required if not (source.path / f).is_file()]
            problems = (
                [f"missing file: {name}" for name in missing]
                if present
                else [f"{source.path} does not exist"]
            )
            checked = (
                f"the {len(required)} required files present; a configured directory has no "
                "manifest, so sizes and sha256 were not checked"
            )
            return ModelStatus(
                source,
                present,
                present and not missing,
                _du(source.path),
                tuple(problems),
                checked=checked,
            )
        if not present:
            return ModelStatus(source, False, False, 0, ("not downloaded",))
        report = verify(source.path, checksums=checksums)
        what = "sizes and sha256" if report.checksums_checked else "sizes"
        return ModelStatus(
            source,
            True,
            report.ok,
            _du(source.path),
            tuple(report.problems()),
            report.commit_sha,
            checked=f"{what} of {report.files_checked} files checked against the manifest",
        )

    def status(self) -> list[ModelStatus]:
        """Both models, sizes only (fast enough for ``ovbot models list``)."""
        return [self.check(kind) for kind in KINDS]

    def download(self, kind: ModelKind, progress: bool = True) -> Path:
        """Fetch (or finish, or repair) the managed copy; a configured directory is left alone."""
        source = self.source(kind)
        if source.configured:
            return source.path
        token = self._settings.hf_token.get_secret_value() if self._settings.hf_token else None
        return download_model(
            source.repo_id,
            source.revision,
            source.path,
            token=token or None,
            endpoint=self._endpoint,
            progress=progress,
        )

    def ensure_ready(
        self, kinds: Iterable[ModelKind] = KINDS, progress: bool = True
    ) -> dict[ModelKind, Path]:
        """Check each model (sha256 too if ``verify_checksums_on_start``); download what is
        missing or damaged when allowed, else raise ModelUnavailable saying what to do.
        A download shows a bar when stderr is a terminal (unless ``progress`` is false)
        and logs its progress periodically otherwise."""
        ready: dict[ModelKind, Path] = {}
        for kind in kinds:
            status = self.check(kind, checksums=self._settings.verify_checksums_on_start)
            if not status.complete:
                self._repair(status, progress)
            ready[kind] = status.path
        return ready

    async def ensure_ready_async(
        self, kinds: Iterable[ModelKind] = KINDS, progress: bool = True
    ) -> dict[ModelKind, Path]:
        """The same, off the event loop: hashing and downloading block for minutes."""
        return await asyncio.to_thread(self.ensure_ready, tuple(kinds), progress)

    def _repair(self, status: ModelStatus, progress: bool) -> None:
        source = status.source
        label = _LABEL[source.kind]
        detail = "; ".join(status.problems[:3])
        if source.configured:
            raise ModelUnavailable(
                f"{source.dir_env}={source.path} is not a usable OpenVINO {label} model "
                f"({detail}). Point it at a converted model directory, or unset it to download "
                f"{source.repo_id}."
            )
        if not self._settings.auto_download:
            raise ModelUnavailable(
                f"The {label} model {source.repo_id}@{source.revision} is {status.state} in "
                f"{source.path} ({detail}) and auto-download is off (OVBOT_AUTO_DOWNLOAD=false). "
                f"{offline_help()}"
            )
        log.info("%s model %s is %s (%s); downloading", label, source.repo_id, status.state, detail)
        self.download(source.kind, progress=progress)

    def _load_dir(self, kind: ModelKind) -> Path:
        """The directory to hand to OpenVINO; a configured one is checked cheaply here
        because nothing else checks it before the pipeline fails with a worse message."""
        source = self.source(kind)
        if source.configured:
            marker = REQUIRED_FILES[kind][0]
            if not (source.path / marker).is_file():
                raise ModelUnavailable(
                    f"{source.dir_env}={source.path} has no {marker}: it is not an OpenVINO "
                    f"{_LABEL[kind]} model directory."
                )
        return source.path


def _segment(text: str) -> str:
    """One safe path component from a repo id or revision (branch names may hold '/')."""
    cleaned = _UNSAFE.sub("_", text)
    return cleaned if cleaned.strip(".") else f"_{cleaned}"


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total
