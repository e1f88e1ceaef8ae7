"""Tiny random models with the real shapes' *structure* (DeepSeek-R1-style Qwen2 chat LLM
and an SD1.5-style diffusion pipeline), built offline in seconds.

They exist so tests and first-run demos exercise the real OpenVINO GenAI pipelines
(tokenizer IR, chat template, KV cache, scheduler, VAE) without downloading gigabytes.
The weights are random: outputs are gibberish, but deterministic (fixed seeds).

Heavy libraries (torch, transformers, diffusers, optimum) are imported inside functions so
that importing this module stays cheap for the bot, which never needs them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovbot.models.convert import (
    IMAGE_IR_FILES,
    LLM_IR_FILES,
    ConvertError,
    require_convert_extra,
)

#: Bump whenever anything below changes what gets built, so cached builds are redone.
TINY_BUILD_VERSION = 2
MARKER_NAME = "ovbot-tiny.json"
SEED = 1234

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# DeepSeek-R1 style: system text right after BOS, turns tagged with User/Assistant,
# reasoning stripped from earlier assistant turns, generation prompt opens a <think> block.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<｜Assistant｜><think>\\n' }}{%- endif -%}"
)

_CORPUS = (
    "Hello! How are you today?",
    "I am fine, thank you. How can I help you?",
    "The quick brown fox jumps over the lazy dog.",
    "Please draw a picture of a cat sitting on a red chair.",
    "A photo of a mountain lake at sunset, highly detailed.",
    "What is the weather like in Paris this morning?",
    "Tell me a short story about a robot who learns to paint.",
    "The answer is yes, but only if you ask nicely.",
    "Let me think about that for a moment.",
    "Sure, here is an image of a small house in the forest.",
    "I cannot help with that request.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.",
    "Good morning, good evening and good night.",
    "Can you explain how a computer works in simple words?",
    "The user wants a drawing, so I will write an image prompt.",
    "This is a plain answer without any picture.",
    '{"assistant_response": "Hello there!", "image_prompt": null}',
    '{"assistant_response": "Here is your cat.", "image_prompt": "a cute cat, watercolor"}',
    '{"assistant_response": "Sure.", "image_prompt": "a castle on a hill at night"}',
    '{"key": "value", "list": [1, 2, 3], "flag": true, "other": false, "none": null}',
    "{ } [ ] : , \" ' \\n \\t",
    "assistant_response image_prompt null true false",
)


class TinyModelBuildError(ConvertError):
    """The tiny model export finished but produced an incomplete model."""

    kind = "tiny_build"


@dataclass(frozen=True)
class TinyModels:
    """Where the tiny LLM and image IR directories live."""

    llm: Path
    image: Path


def build_tiny_models(root: Path) -> TinyModels:
    """Build (or reuse) both tiny models under ``root/llm`` and ``root/image``."""
    root = Path(root)
    return TinyModels(llm=build_tiny_llm(root / "llm"), image=build_tiny_image(root / "image"))


def build_tiny_llm(out_dir: Path) -> Path:
    """Build the tiny chat LLM as OpenVINO IR (model + tokenizer/detokenizer) in ``out_dir``."""
    return _build_cached(Path(out_dir), "llm", LLM_IR_FILES, _export_tiny_llm)


def build_tiny_image(out_dir: Path) -> Path:
    """Build the tiny SD1.5-style text-to-image pipeline as OpenVINO IR in ``out_dir``."""
    return _build_cached(Path(out_dir), "image", IMAGE_IR_FILES, _export_tiny_image)


def build_tiny_llm_checkpoint(out_dir: Path) -> Path:
    """Save the tiny LLM as a Hugging Face checkpoint, the input ``convert_llm`` expects
    from users who bring their own model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    require_convert_extra()
    tokenizer = _make_llm_tokenizer()
    tokenizer.save_pretrained(str(out_dir))
    _make_llm(tokenizer).save_pretrained(str(out_dir))
    _make_generation_config(tokenizer).save_pretrained(str(out_dir))
    return out_dir


def marker_matches(out_dir: Path, kind: str, required: tuple[str, ...]) -> bool:
    """A cached build is reusable only if it is this build version and nothing is missing."""
    marker = Path(out_dir) / MARKER_NAME
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if data != _marker(kind):
        return False
    return all((Path(out_dir) / name).is_file() for name in required)


# --------------------------------------------------------------------------- building


def _marker(kind: str) -> dict[str, Any]:
    return {"what": f"ovbot tiny random {kind} model (tests only)", "kind": kind,
            "version": TINY_BUILD_VERSION, "seed": SEED}


def _build_cached(
    out_dir: Path,
    kind: str,
    required: tuple[str, ...],
    export: Callable[[Path, Path], None],
) -> Path:
    """Export into a staging dir next to ``out_dir`` and swap it in at the end, so an
    interrupted build never leaves a half-written model that looks usable."""
    if marker_matches(out_dir, kind, required):
        return out_dir
    require_convert_extra()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="ovbot-tiny-hf-") as hf_dir:
            export(Path(hf_dir), staging)
        missing = [name for name in required if not (staging / name).is_file()]
        if missing:
            raise TinyModelBuildError(f"tiny {kind} export is missing {', '.join(missing)}")
        (staging / MARKER_NAME).write_text(json.dumps(_marker(kind), indent=2), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; the bot may run as another user
        _swap_in(staging, out_dir, kind, required)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _swap_in(staging: Path, out_dir: Path, kind: str, required: tuple[str, ...]) -> None:
    """Several test sessions may build the same cache dir at once: whoever finishes
    second keeps the first build (identical bytes) instead of deleting it under a reader."""
    if marker_matches(out_dir, kind, required):
        return
    if out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        staging.rename(out_dir)
    except OSError:
        if not marker_matches(out_dir, kind, required):
            raise


@contextmanager
def _quiet_export() -> Iterator[None]:
    """optimum/transformers warn loudly about random tiny configs; keep test logs readable."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("optimum", "transformers", "nncf", "diffusers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _main_export(source: Path, output: Path, task: str, library: str) -> None:
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    with _quiet_export():
        main_export(
            model_name_or_path=str(source),
            output=Path(output),
            task=task,
            library_name=library,
            ov_config=OVConfig(dtype="fp32"),
            convert_tokenizer=True,
            local_files_only=True,
        )


# --------------------------------------------------------------------------- tiny LLM


def _export_tiny_llm(hf_dir: Path, out_dir: Path) -> None:
    build_tiny_llm_checkpoint(hf_dir)
    _main_export(hf_dir, out_dir, "text-generation-with-past", "transformers")


def _make_llm_tokenizer() -> Any:
    """Byte-level BPE like Qwen's, trained on a fixed corpus so it is identical every run."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        min_frequency=1,
        special_tokens=[BOS, EOS, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    tok.add_tokens([AddedToken(THINK_OPEN, special=False, normalized=False),
                    AddedToken(THINK_CLOSE, special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _make_llm(tokenizer: Any) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # The usual 0.02 makes a random model collapse onto one token (greedy output is
        # all newlines, grammar-constrained JSON never leaves whitespace). 0.3 gives
        # varied tokens, so structured output actually closes its keys and strings.
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    return Qwen2ForCausalLM(config).eval()


def _make_generation_config(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# --------------------------------------------------------------------------- tiny SD1.5


_CLIP_WORDS = (
    "a", "an", "the", "of", "on", "in", "at", "and", "with", "photo", "picture", "painting",
    "cat", "dog", "house", "tree", "lake", "mountain", "castle", "hill", "night", "sunset",
    "red", "blue", "green", "cute", "small", "big", "detailed", "watercolor", "forest",
)


def _export_tiny_image(hf_dir: Path, out_dir: Path) -> None:
    pipeline_dir = hf_dir / "sd"
    _make_sd_pipeline(hf_dir / "tokenizer-src").save_pretrained(str(pipeline_dir))
    _main_export(pipeline_dir, out_dir, "text-to-image", "diffusers")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clip_merges() -> list[tuple[str, str]]:
    """Merges that spell each word of a small fixed vocabulary left to right, so common
    prompt words become single tokens as in the real CLIP vocabulary."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in _CLIP_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            pair = (left, right)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            left = left + right
    return merges


def _write_clip_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = _clip_merges()
    for left, right in merges:
        merged = left + right
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab_file, merges_file


def _make_sd_pipeline(tokenizer_dir: Path) -> Any:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # from_pretrained on the two files works across transformers 4.x and 5.x, whose
    # constructors disagree (file paths vs. in-memory vocab).
    _write_clip_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=32,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
