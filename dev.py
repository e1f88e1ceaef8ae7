#!/usr/bin/env python3
"""Set up a virtual environment and run ovbot or its tests — one command each, on a
fresh machine, on Linux, macOS or Windows (``python dev.py run`` / ``python dev.py test``).

Why a script and not a bare ``pip install``: the model-conversion tools depend on
torch, and an unpinned torch request pulls a multi-GB CUDA build. The test setup installs
the CPU build of torch first and constrains everything else to it, then removes
torchvision (optimum-intel drags it in; transformers' model imports break with it and
export does not need it).

Both setups install the versions the tests ran with (``constraints.txt``): left to
itself pip picks the newest releases, e.g. a huggingface_hub major ovbot was never
tested with. The runtime setup asks for no extra, so the torch pin in the constraints
never applies to it.

Re-running pip costs ~11 s even when nothing changed, so each setup leaves a stamp in
the venv (a hash of pyproject.toml, constraints.txt and the venv's interpreter) and is
skipped while the stamp matches.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"
CONSTRAINTS = "constraints.txt"
#: files whose content decides what pip installs
INSTALL_INPUTS = ("pyproject.toml", CONSTRAINTS)


def venv_python(env_dir: Path) -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return env_dir / scripts / ("python.exe" if os.name == "nt" else "python")


def run(*command: str | Path) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, cwd=ROOT)


def ensure_venv(env_dir: Path) -> Path:
    python = venv_python(env_dir)
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(env_dir)
    return python


def pip(python: Path, *args: str) -> None:
    run(python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args)


def install_fingerprint(python: Path, setup: str, root: Path = ROOT) -> str:
    """A hash of what decides an install: the setup's name, pyproject.toml and
    constraints.txt as they are now, and the interpreter (its path, and the file it
    resolves to, whose size and mtime change when the venv is rebuilt on another
    Python)."""
    digest = hashlib.sha256(f"{setup}\n{python}\n".encode())
    try:
        real = python.resolve()
        stat = real.stat()
        digest.update(f"{real}\n{stat.st_size}\n{stat.st_mtime_ns}\n".encode())
    except OSError:
        digest.update(b"no interpreter\n")
    for name in INSTALL_INPUTS:
        path = root / name
        digest.update(f"{name}\n".encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()


def stamp_path(env_dir: Path, setup: str) -> Path:
    return env_dir / f".ovbot-{setup}.stamp"


def is_installed(env_dir: Path, setup: str, fingerprint: str) -> bool:
    """Whether ``setup`` already ran with exactly these inputs (its stamp matches)."""
    try:
        return stamp_path(env_dir, setup).read_text().strip() == fingerprint
    except OSError:
        return False


def mark_installed(env_dir: Path, setup: str, fingerprint: str) -> None:
    """Written only after pip succeeded: a failed install is retried next time."""
    stamp_path(env_dir, setup).write_text(fingerprint + "\n")


def setup_runtime(python: Path, env_dir: Path) -> None:
    fingerprint = install_fingerprint(python, "runtime")
    if is_installed(env_dir, "runtime", fingerprint):
        print("dependencies up to date (pyproject.toml and constraints.txt unchanged)", flush=True)
        return
    pip(python, "-c", CONSTRAINTS, "-e", ".")
    mark_installed(env_dir, "runtime", fingerprint)


def setup_dev(python: Path, env_dir: Path) -> None:
    """Runtime + conversion + test extras at the versions in constraints.txt (tested
    together, and pip needs no backtracking through the converters' wide ranges)."""
    fingerprint = install_fingerprint(python, "dev")
    if is_installed(env_dir, "dev", fingerprint):
        print("dev dependencies up to date (pyproject.toml and constraints.txt unchanged)", flush=True)
        return
    pip(python, TORCH)
    pip(python, "-c", CONSTRAINTS, "-e", ".[convert,test,bench]")
    run(python, "-m", "pip", "uninstall", "-y", "-q", "torchvision")
    mark_installed(env_dir, "dev", fingerprint)
    # the dev install is the runtime install plus extras, under the same constraints
    mark_installed(env_dir, "runtime", install_fingerprint(python, "runtime"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "test", "setup"], help="what to do")
    parser.add_argument("--venv", default=os.environ.get("OVBOT_VENV", ".venv"), help="virtualenv dir")
    parser.add_argument(
        "--reinstall", action="store_true", help="run pip even if nothing changed since the last setup"
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="extra arguments for ovbot / pytest")
    args = parser.parse_args()
    env_dir = ROOT / args.venv
    python = ensure_venv(env_dir)
    if args.reinstall:
        for setup in ("runtime", "dev"):
            stamp_path(env_dir, setup).unlink(missing_ok=True)
    try:
        if args.action == "run":
            setup_runtime(python, env_dir)
            run(python, "-m", "ovbot.bots.cli", *(args.rest or ["serve"]))
        elif args.action == "setup":
            setup_dev(python, env_dir)
        else:
            setup_dev(python, env_dir)
            run(python, "-m", "pytest", *args.rest)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
