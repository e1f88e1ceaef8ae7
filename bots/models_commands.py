"""``ovbot models download | verify | list``: the model cache from a terminal.

Output is for people; exit codes are for scripts: 0 when every requested model is
usable, 1 when one is not (the reason and what to do are printed to stderr).
"""

from __future__ import annotations

import argparse
import sys

from ovbot.core.config import load_settings
from ovbot.core.errors import ModelUnavailable
from ovbot.models.cache import KINDS, ModelCache, ModelKind, ModelStatus


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    download = subparsers.add_parser(
        "download",
        help="download the models (pinned commit, resumable, verified)",
        description="Download, finish or repair the models; a configured *_MODEL_DIR is "
        "left alone.",
    )
    download.add_argument("which", nargs="?", choices=("llm", "image", "all"), default="all")
    download.set_defaults(func=download_command)

    verify = subparsers.add_parser(
        "verify", help="check the models on disk against their manifests"
    )
    verify.add_argument(
        "--checksums",
        action="store_true",
        help="also compare the sha256 of every file (reads every byte; slow for large models)",
    )
    verify.set_defaults(func=verify_command)

    listing = subparsers.add_parser("list", help="show where each model is and its state")
    listing.set_defaults(func=list_command)


def download_command(args: argparse.Namespace) -> int:
    cache = ModelCache(load_settings())
    kinds: tuple[ModelKind, ...] = KINDS if args.which == "all" else (args.which,)
    failed = 0
    for kind in kinds:
        source = cache.source(kind)
        if source.configured:
            print(f"{kind}: using {source.path} ({source.dir_env}); nothing to download")
            continue
        print(f"{kind}: {source.repo_id}@{source.revision} -> {source.path}")
        try:
            cache.download(kind, progress=True)
        except ModelUnavailable as exc:
            failed += 1
            print(f"{kind}: FAILED: {exc.user_message}", file=sys.stderr)
            continue
        status = cache.check(kind)
        print(f"{kind}: ready ({_size(status.size_bytes)}, commit {_short(status.commit_sha)})")
    return 1 if failed else 0


def verify_command(args: argparse.Namespace) -> int:
    cache = ModelCache(load_settings())
    failed = 0
    for kind in KINDS:
        status = cache.check(kind, checksums=args.checksums)
        if status.complete:
            # says what was really looked at: a configured directory has no manifest,
            # so --checksums cannot check anything there
            print(f"{kind}: OK ({status.checked}) {status.path}")
            continue
        failed += 1
        print(f"{kind}: {status.state.upper()} {status.path}")
        for problem in status.problems:
            print(f"  - {problem}")
    if failed:
        print("Run `ovbot models download` to fetch or repair the models.", file=sys.stderr)
    return 1 if failed else 0


def list_command(args: argparse.Namespace) -> int:
    cache = ModelCache(load_settings())
    for status in cache.status():
        print(_describe(status))
    return 0


def _describe(status: ModelStatus) -> str:
    source = status.source
    origin = (
        f"configured via {source.dir_env}"
        if source.configured
        else f"{source.repo_id}@{source.revision}"
        + (f" (commit {_short(status.commit_sha)})" if status.commit_sha else "")
    )
    lines = [
        f"{status.kind}: {status.state}, {_size(status.size_bytes)}",
        f"  source: {origin}",
        f"  path:   {status.path}",
    ]
    lines += [f"  - {problem}" for problem in status.problems[:5]]
    return "\n".join(lines)


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "unknown"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
