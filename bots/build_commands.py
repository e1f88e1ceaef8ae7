"""``ovbot models build-tiny`` and ``ovbot models convert``: make OpenVINO IR locally.

Both need the optional ``convert`` extra (torch, transformers, optimum-intel); the model
modules import those only inside the build functions (conversion itself runs optimum in a
child process), so ``ovbot --help`` and the bot stay light.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ovbot.models.convert import (
    IMAGE_WEIGHT_FORMATS,
    LLM_WEIGHT_FORMATS,
    convert_image,
    convert_llm,
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``build-tiny`` and ``convert`` to the ``ovbot models`` group."""
    _register_build_tiny(subparsers)
    _register_convert(subparsers)


def _register_build_tiny(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "build-tiny",
        help="build tiny random LLM + image models (offline, seconds; for tests and demos)",
        description="Build tiny random models into DIR/llm and DIR/image. Their output is "
        "gibberish: they only prove the pipeline works without downloading gigabytes.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.set_defaults(func=handle_build_tiny)


def _register_convert(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "convert",
        help="convert your own Hugging Face checkpoint to OpenVINO IR",
        description="Convert a local Hugging Face checkpoint directory or a hub repo id "
        "with optimum-intel. LLM default: int4 group-wise (group size 128, symmetric).",
    )
    parser.add_argument("kind", choices=("llm", "image"))
    parser.add_argument("source", metavar="SOURCE", help="local checkpoint dir or hub repo id")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument(
        "--weight-format",
        choices=sorted(set(LLM_WEIGHT_FORMATS) | set(IMAGE_WEIGHT_FORMATS)),
        default=None,
        help="llm: fp32, fp16, int8 or int4 (default int4); image: fp32, fp16 or int8 "
        "(default fp16)",
    )
    parser.add_argument(
        "--group-size", type=int, default=128, help="int4 group size; -1 = channel-wise"
    )
    parser.add_argument(
        "--ratio", type=float, default=1.0, help="int4 share of layers (rest int8)"
    )
    parser.add_argument(
        "--asym", action="store_true", help="asymmetric int4/int8 weights (default symmetric)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUT_DIR"
    )
    parser.set_defaults(func=handle_convert)


def handle_build_tiny(args: argparse.Namespace) -> int:
    from ovbot.models.tiny import build_tiny_models

    models = build_tiny_models(Path(args.dir).expanduser().resolve())
    print(f"tiny LLM:   {models.llm}")
    print(f"tiny image: {models.image}")
    print("Use them with:")
    print(f"OVBOT_LLM_MODEL_DIR={models.llm}")
    print(f"OVBOT_IMAGE_MODEL_DIR={models.image}")
    return 0


def handle_convert(args: argparse.Namespace) -> int:
    if args.kind == "llm":
        out = convert_llm(
            args.source,
            args.out_dir,
            weight_format=args.weight_format or "int4",
            group_size=args.group_size,
            sym=not args.asym,
            ratio=args.ratio,
            overwrite=args.overwrite,
        )
        env = "OVBOT_LLM_MODEL_DIR"
    else:
        out = convert_image(
            args.source,
            args.out_dir,
            weight_format=args.weight_format or "fp16",
            overwrite=args.overwrite,
        )
        env = "OVBOT_IMAGE_MODEL_DIR"
    print(f"converted {args.source} -> {out}")
    print(f"{env}={out}")
    return 0
