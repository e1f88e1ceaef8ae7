"""Convert a user's own Hugging Face checkpoint (local dir or hub repo id) to OpenVINO IR.

The export runs ``optimum-cli export openvino`` in a child process rather than calling
``main_export`` here: the CLI is optimum-intel's documented interface (its quantization
options are assembled by CLI-only helpers), and a 1.5B model export peaks near 8 GB of
RAM, which the child gives back to the OS when it exits.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ovbot.core.errors import ModelUnavailable, OvbotError

log = logging.getLogger(__name__)

LLM_WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
IMAGE_WEIGHT_FORMATS = ("fp32", "fp16", "int8")

#: Files without which OpenVINO GenAI cannot load the exported model.
LLM_IR_FILES = (
    "openvino_model.xml",
    "openvino_model.bin",
    "openvino_tokenizer.xml",
    "openvino_detokenizer.xml",
)
IMAGE_IR_FILES = (
    "model_index.json",
    "unet/openvino_model.xml",
    "vae_decoder/openvino_model.xml",
    "text_encoder/openvino_model.xml",
    "tokenizer/openvino_tokenizer.xml",
    "scheduler/scheduler_config.json",
)

_CONVERT_MODULES = ("torch", "transformers", "diffusers", "tokenizers", "optimum.intel", "nncf")
# Substrings of optimum/huggingface_hub errors that mean "the source could not be found or
# fetched" rather than "the export itself broke".
_UNAVAILABLE_HINTS = (
    "RepositoryNotFoundError",
    "is not a local folder and is not a valid model identifier",
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "GatedRepoError",
    "Cannot find an appropriate cached snapshot",
    "We couldn't connect to",
    "ConnectionError",
    "Max retries exceeded",
)
_TAIL_LINES = 40
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")


class ConvertError(OvbotError):
    """A conversion could not be started or did not produce a usable model."""

    kind = "convert"


class ConvertExtraMissing(ConvertError):
    """The optional conversion libraries are not installed."""

    kind = "convert_extra_missing"


def require_convert_extra(modules: tuple[str, ...] = _CONVERT_MODULES) -> None:
    """Fail early with install advice; a bare ImportError from deep inside optimum tells
    users nothing about the ``convert`` extra."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ModuleNotFoundError, ValueError):
            found = False
        if not found:
            raise ConvertExtraMissing(
                f"model conversion needs the Python package '{module}': install the convert "
                "extra (install CPU torch first, then: pip install 'ovbot[convert]')"
            )


def convert_llm(
    source: str,
    out_dir: Path,
    weight_format: str = "int4",
    group_size: int = 128,
    sym: bool = True,
    ratio: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Export a causal LM (with KV cache, tokenizer and detokenizer) for LLMPipeline /
    ContinuousBatchingPipeline. ``group_size`` and ``ratio`` only apply to int4 (-1 means
    channel-wise); ``sym`` applies to int8 and int4."""
    _check_choice("weight_format", weight_format, LLM_WEIGHT_FORMATS)
    if weight_format == "int4":
        _check_int4_options(group_size, ratio)
    options = ["--task", "text-generation-with-past", "--library", "transformers"]
    options += _weight_options(weight_format, group_size, sym, ratio)
    return _convert(source, Path(out_dir), options, "config.json", LLM_IR_FILES, overwrite)


def convert_image(
    source: str,
    out_dir: Path,
    weight_format: str = "fp16",
    overwrite: bool = False,
) -> Path:
    """Export a Stable Diffusion (diffusers layout) pipeline for Text2ImagePipeline."""
    _check_choice("weight_format", weight_format, IMAGE_WEIGHT_FORMATS)
    options = ["--task", "text-to-image", "--library", "diffusers"]
    options += _weight_options(weight_format, group_size=-1, sym=False, ratio=1.0)
    return _convert(source, Path(out_dir), options, "model_index.json", IMAGE_IR_FILES, overwrite)


# --------------------------------------------------------------------------- helpers


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConvertError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _check_int4_options(group_size: int, ratio: float) -> None:
    if group_size != -1 and group_size <= 0:
        raise ConvertError(f"group_size must be a positive integer or -1, not {group_size}")
    if not 0.0 < ratio <= 1.0:
        raise ConvertError(f"ratio must be in (0, 1], not {ratio}")


def _weight_options(weight_format: str, group_size: int, sym: bool, ratio: float) -> list[str]:
    """Always spell out int4 parameters: without them optimum silently swaps in its own
    per-model default config, which makes builds depend on the optimum version."""
    options = ["--weight-format", weight_format]
    if weight_format == "int4":
        options += ["--group-size", str(group_size), "--ratio", str(ratio)]
    if weight_format in ("int8", "int4") and sym:
        options.append("--sym")
    return options


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local path."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _check_source(source: str, index_file: str) -> str:
    """Resolve local sources and reject the ones that cannot work before spending a
    minute importing torch in the child process."""
    if not source or not source.strip():
        raise ModelUnavailable("no model source given (a local directory or a hub repo id)")
    local = Path(source).expanduser()
    if local.exists():
        if not (local / index_file).is_file():
            raise ModelUnavailable(
                f"{local} is not a Hugging Face checkpoint directory (no {index_file})"
            )
        return str(local.resolve())
    if _looks_like_path(source):
        raise ModelUnavailable(f"model source {source} does not exist")
    return source


def _export_command(source: str, options: list[str], output: Path) -> list[str]:
    return [
        sys.executable, "-m", "optimum.commands.optimum_cli",
        "export", "openvino", "--model", source, *options, str(output),
    ]


def _run_export(command: list[str]) -> tuple[int, list[str]]:
    """Stream the child's output to the log (exports take minutes) and keep the tail for
    the error message."""
    log.info("running %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.debug("optimum: %s", line)
        returncode = child.wait()
    return returncode, list(tail)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConvertError(f"output directory {out_dir} is not empty (use overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _convert(
    source: str,
    out_dir: Path,
    options: list[str],
    index_file: str,
    required: tuple[str, ...],
    overwrite: bool,
) -> Path:
    """Export into a staging dir beside ``out_dir`` and move it in only when complete, so a
    failed or interrupted export never leaves something that looks like a model."""
    resolved = _check_source(source, index_file)
    require_convert_extra()
    out_dir = out_dir.expanduser().resolve()
    _prepare_out_dir(out_dir, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-convert-", dir=out_dir.parent))
    try:
        returncode, tail = _run_export(_export_command(resolved, options, staging))
        if returncode != 0:
            raise _export_failure(source, returncode, tail)
        missing = [name for name in required if not (staging / name).is_file()]
        if missing:
            raise ConvertError(
                f"export of {source} finished without {', '.join(missing)} "
                "(is openvino-tokenizers installed?)"
            )
        staging.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s -> %s", source, out_dir)
    return out_dir


def _error_summary(tail: list[str]) -> str:
    """The final exception line (plus its continuation) says more to a user than the
    traceback frames above it."""
    for index in range(len(tail) - 1, -1, -1):
        if _EXCEPTION_LINE.match(tail[index]):
            return "\n".join(tail[index : index + 4])
    return "\n".join(tail[-4:])


def _export_failure(source: str, returncode: int, tail: list[str]) -> OvbotError:
    text = "\n".join(tail)
    detail = _error_summary(tail)
    if any(hint in text for hint in _UNAVAILABLE_HINTS):
        return ModelUnavailable(f"could not get model {source} (offline or no such repo):\n{detail}")
    return ConvertError(f"optimum-cli export of {source} failed (exit {returncode}):\n{detail}")
