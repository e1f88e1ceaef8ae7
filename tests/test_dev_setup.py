"""``dev.py`` and the packaging around it: both README commands install the tested
versions, pip is skipped while nothing changed, the runtime pulls no torch, the
declared ranges stop at the next major, and the README's walkthrough writes only where
git ignores it.

``dev.py``'s functions run for real; where pip would run, the venv's interpreter is a
small script that records its arguments (pip and the network are edges, not ours).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def load_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ovbot_dev_script", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject() -> dict[str, object]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- stamps


def test_the_install_stamp_matches_only_the_same_inputs(tmp_path: Path) -> None:
    dev = load_dev()
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "constraints.txt").write_text("httpx==0.28.1\n")
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("interpreter one")
    env_dir = tmp_path / "venv"

    first = dev.install_fingerprint(python, "runtime", root)
    assert not dev.is_installed(env_dir, "runtime", first)
    dev.mark_installed(env_dir, "runtime", first)
    assert dev.is_installed(env_dir, "runtime", dev.install_fingerprint(python, "runtime", root))
    assert not dev.is_installed(env_dir, "dev", dev.install_fingerprint(python, "dev", root))

    (root / "constraints.txt").write_text("httpx==0.28.2\n")
    assert not dev.is_installed(env_dir, "runtime", dev.install_fingerprint(python, "runtime", root))
    (root / "constraints.txt").write_text("httpx==0.28.1\n")
    assert dev.is_installed(env_dir, "runtime", dev.install_fingerprint(python, "runtime", root))

    (root / "pyproject.toml").write_text("[project]\nname = 'x'\ndependencies = ['y']\n")
    assert not dev.is_installed(env_dir, "runtime", dev.install_fingerprint(python, "runtime", root))
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")

    python.write_text("another interpreter, rebuilt venv")
    assert not dev.is_installed(env_dir, "runtime", dev.install_fingerprint(python, "runtime", root))


@pytest.mark.skipif(os.name == "nt", reason="the recording interpreter is a shell script")
def test_runtime_setup_installs_the_tested_versions_once(tmp_path: Path) -> None:
    dev = load_dev()
    env_dir = tmp_path / "venv"
    python = env_dir / "bin" / "python"
    python.parent.mkdir(parents=True)
    calls = tmp_path / "calls.txt"

    def recording_python(tag: str) -> None:
        python.write_text(f'#!/bin/sh\n# {tag}\necho "$@" >> "{calls}"\n')
        python.chmod(python.stat().st_mode | stat.S_IXUSR)

    def recorded() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    recording_python("first")
    dev.setup_runtime(python, env_dir)
    assert recorded() == ["-m pip install --disable-pip-version-check -q -c constraints.txt -e ."]

    dev.setup_runtime(python, env_dir)  # nothing changed: no pip
    assert len(recorded()) == 1

    recording_python("the venv was rebuilt on another Python")
    dev.setup_runtime(python, env_dir)
    assert len(recorded()) == 2


def test_runtime_dependencies_do_not_pull_torch() -> None:
    """The runtime install (no extras) must stay free of torch: with constraints.txt an
    unpinned torch would be the pinned one, without them a multi-GB CUDA build."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    pending = [Requirement(text) for text in project["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            child = Requirement(text)
            extras = {""} | set(requirement.extras)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(child)

    assert "openvino-genai" in seen and "huggingface-hub" in seen  # the walk really ran
    assert "torch" not in seen, sorted(seen)


def test_every_dependency_stops_before_the_next_major_and_admits_the_tested_version() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    project = pyproject()["project"]
    assert isinstance(project, dict)
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra

    for text in declared:
        requirement = Requirement(text)
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
            f"{text}: no upper bound"
        )
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned, prereleases=True), f"{text} excludes the tested {pinned}"


# --------------------------------------------------------------------------- .gitignore


def _ignored(path: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def test_the_tiny_model_walkthrough_writes_only_where_git_ignores() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it offline with tiny models", 1)[1].split("\n## ", 1)[0]
    written = re.findall(r"build-tiny (\S+)", section) + re.findall(r" -o (\S+)", section)
    assert len(written) == 2, written

    for path in [*written, "tiny-models/llm/openvino_model.xml", "out.png"]:
        inside = path.removeprefix("./")
        assert _ignored(inside + "/x" if not Path(inside).suffix else inside), f"git would track {path}"
    assert not _ignored("README.md")  # the check can say no
