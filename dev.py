#!/usr/bin/env python3
"""Set up a virtual environment and run ovbot or its tests — one command each, on a
fresh machine, on Linux, macOS or Windows (``python dev.py run`` / ``python dev.py test``).

Why a script and not a bare ``pip install``: the model-conversion tools depend on
torch, and an unpinned torch request pulls a multi-GB CUDA build. The test setup installs
the CPU build of torch first and constrains everything else to it, then removes
torchvision (optimum-intel drags it in; transformers' model imports break with it and
export does not need it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"


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


def setup_runtime(python: Path) -> None:
    pip(python, "-e", ".")


def setup_dev(python: Path) -> None:
    """Runtime + conversion + test extras at the versions in constraints.txt (tested
    together, and pip needs no backtracking through the converters' wide ranges)."""
    pip(python, TORCH)
    pip(python, "-c", "constraints.txt", "-e", ".[convert,test,bench]")
    run(python, "-m", "pip", "uninstall", "-y", "-q", "torchvision")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "test", "setup"], help="what to do")
    parser.add_argument("--venv", default=os.environ.get("OVBOT_VENV", ".venv"), help="virtualenv dir")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="extra arguments for ovbot / pytest")
    args = parser.parse_args()
    python = ensure_venv(ROOT / args.venv)
    try:
        if args.action == "run":
            setup_runtime(python)
            run(python, "-m", "ovbot.bots.cli", *(args.rest or ["serve"]))
        elif args.action == "setup":
            setup_dev(python)
        else:
            setup_dev(python)
            run(python, "-m", "pytest", *args.rest)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
