"""The tiny models must behave like the real ones as far as OpenVINO GenAI can tell:
same file layout, chat template, tokenizer IR, and image tensor shapes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ovbot.bots.build_commands import register
from ovbot.core.errors import ModelUnavailable
from ovbot.models.convert import (
    IMAGE_IR_FILES,
    LLM_IR_FILES,
    ConvertError,
    convert_image,
    convert_llm,
)
from ovbot.models.tiny import (
    MARKER_NAME,
    TINY_BUILD_VERSION,
    TinyModels,
    build_tiny_llm,
    build_tiny_llm_checkpoint,
)

ov_genai = pytest.importorskip("openvino_genai")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovbot models")
    register(parser.add_subparsers(dest="models_command", required=True))
    return parser.parse_args(argv)


def _chat_prompt(llm_dir: Path, messages: list[dict[str, str]]) -> str:
    tokenizer = ov_genai.LLMPipeline(str(llm_dir), "CPU").get_tokenizer()
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


# --------------------------------------------------------------------------- layout


def test_fixture_builds_complete_ir_dirs(tiny_models: TinyModels) -> None:
    for name in LLM_IR_FILES:
        assert (tiny_models.llm / name).is_file(), name
    for name in IMAGE_IR_FILES:
        assert (tiny_models.image / name).is_file(), name
    # only IR: the intermediate Hugging Face weights must not be left behind
    assert not list(tiny_models.llm.rglob("*.safetensors"))
    assert not list(tiny_models.image.rglob("*.safetensors"))


def test_markers_record_kind_and_version(tiny_models: TinyModels) -> None:
    for path, kind in ((tiny_models.llm, "llm"), (tiny_models.image, "image")):
        marker = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
        assert marker["kind"] == kind
        assert marker["version"] == TINY_BUILD_VERSION


# --------------------------------------------------------------------------- LLM


def test_chat_template_is_deepseek_r1_style(tiny_models: TinyModels) -> None:
    prompt = _chat_prompt(
        tiny_models.llm,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>secret</think>Hello!"},
            {"role": "user", "content": "Draw a cat"},
        ],
    )
    assert prompt == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello!"
        "<｜end▁of▁sentence｜><｜User｜>Draw a cat<｜Assistant｜><think>\n"
    )


def test_special_tokens_are_single_ids(tiny_models: TinyModels) -> None:
    tokenizer = ov_genai.LLMPipeline(str(tiny_models.llm), "CPU").get_tokenizer()
    assert tokenizer.get_eos_token() == "<｜end▁of▁sentence｜>"
    ids = tokenizer.encode("<｜User｜><think>", add_special_tokens=False).input_ids.data
    assert ids.shape == (1, 2)
    # the template supplies the BOS: plain encoding must not add a second one
    plain = tokenizer.encode("<｜begin▁of▁sentence｜>hello").input_ids.data[0].tolist()
    assert plain.count(tokenizer.get_bos_token_id()) == 1


def test_llm_pipeline_generates_tokens(tiny_models: TinyModels) -> None:
    pipe = ov_genai.LLMPipeline(str(tiny_models.llm), "CPU")
    prompt = pipe.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True
    )
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = 8
    result = pipe.generate([prompt], config)
    assert len(result.texts) == 1
    assert 1 <= result.perf_metrics.get_num_generated_tokens() <= 8
    again = pipe.generate([prompt], config)
    assert again.texts == result.texts  # greedy on fixed weights is deterministic


def test_continuous_batching_pipeline_serves_requests(tiny_models: TinyModels) -> None:
    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size = 1
    scheduler.enable_prefix_caching = True
    pipe = ov_genai.ContinuousBatchingPipeline(str(tiny_models.llm), scheduler, "CPU")
    prompt = _chat_prompt(tiny_models.llm, [{"role": "user", "content": "Hi there"}])
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = 6
    handles = [pipe.add_request(i, prompt, config) for i in range(2)]
    while pipe.has_non_finished_requests():
        pipe.step()
    outputs = [handle.read_all()[0].generated_ids for handle in handles]
    assert all(1 <= len(ids) <= 6 for ids in outputs)
    assert outputs[0] == outputs[1]


def test_structured_output_closes_json(tiny_models: TinyModels) -> None:
    """Guards the initializer choice: a collapsed random model never finishes the JSON."""
    pipe = ov_genai.LLMPipeline(str(tiny_models.llm), "CPU")
    prompt = pipe.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "Draw a cat"}], add_generation_prompt=True
    )
    schema = {
        "type": "object",
        "properties": {
            "assistant_response": {"type": "string", "maxLength": 10},
            "image_prompt": {"type": ["string", "null"], "maxLength": 10},
        },
        "required": ["assistant_response", "image_prompt"],
    }
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = 80
    config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=json.dumps(schema))
    data = json.loads(pipe.generate(prompt, config), strict=False)
    assert set(data) == {"assistant_response", "image_prompt"}


# --------------------------------------------------------------------------- image


def test_text2image_generates_64x64(tiny_models: TinyModels) -> None:
    pipe = ov_genai.Text2ImagePipeline(str(tiny_models.image), "CPU")
    steps: list[int] = []

    def on_step(step: int, num_steps: int, latent: object) -> bool:
        steps.append(step)
        return False

    image = pipe.generate(
        "a photo of a cat", width=64, height=64, num_inference_steps=4, rng_seed=7,
        callback=on_step,
    )
    assert image.data.shape == (1, 64, 64, 3)
    assert str(image.data.dtype) == "uint8"
    assert steps and steps[-1] >= 3


# --------------------------------------------------------------------------- caching / CLI


def test_rebuild_is_skipped_when_marker_matches(tiny_models: TinyModels) -> None:
    model_bin = tiny_models.llm / "openvino_model.bin"
    before = model_bin.stat().st_mtime_ns
    assert build_tiny_llm(tiny_models.llm) == tiny_models.llm
    assert model_bin.stat().st_mtime_ns == before


def test_stale_marker_forces_rebuild(tiny_models: TinyModels, tmp_path: Path) -> None:
    target = tmp_path / "llm"
    build_tiny_llm(target)
    marker = target / MARKER_NAME
    stale = json.loads(marker.read_text(encoding="utf-8"))
    stale["version"] = -1
    marker.write_text(json.dumps(stale), encoding="utf-8")
    (target / "leftover.txt").write_text("from an old build", encoding="utf-8")

    build_tiny_llm(target)

    assert json.loads(marker.read_text(encoding="utf-8"))["version"] == TINY_BUILD_VERSION
    assert not (target / "leftover.txt").exists()
    # same seed, same bytes as the shared build
    assert (target / "openvino_model.bin").read_bytes() == (
        tiny_models.llm / "openvino_model.bin"
    ).read_bytes()


def test_build_tiny_command_prints_env_lines(
    tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tiny_models.llm.parent  # already built: the command must reuse it
    args = _parse(["build-tiny", str(root)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"OVBOT_LLM_MODEL_DIR={tiny_models.llm.resolve()}" in out.splitlines()
    assert f"OVBOT_IMAGE_MODEL_DIR={tiny_models.image.resolve()}" in out.splitlines()


# --------------------------------------------------------------------------- convert


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("optimum.intel")
    return build_tiny_llm_checkpoint(tmp_path_factory.mktemp("tiny-hf"))


def test_convert_llm_int8_is_loadable(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = convert_llm(str(tiny_checkpoint), tmp_path / "llm-int8", weight_format="int8")
    for name in LLM_IR_FILES:
        assert (out / name).is_file(), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    pipe = ov_genai.LLMPipeline(str(out), "CPU")
    prompt = pipe.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True
    )
    assert prompt.endswith("<｜Assistant｜><think>\n")
    assert isinstance(pipe.generate(prompt, max_new_tokens=4), str)


def test_convert_command_reports_env_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "llm-fp16"
    args = _parse(["convert", "llm", str(tiny_checkpoint), str(out_dir), "--weight-format", "fp16"])
    assert args.func(args) == 0
    assert f"OVBOT_LLM_MODEL_DIR={out_dir.resolve()}" in capsys.readouterr().out.splitlines()
    assert (out_dir / "openvino_model.xml").is_file()


def test_convert_missing_local_source_is_model_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(ModelUnavailable, match="does not exist"):
        convert_llm(str(missing), tmp_path / "out", weight_format="int8")
    assert not (tmp_path / "out").exists()


def test_convert_rejects_dir_without_config(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match="model_index.json"):
        convert_image(str(empty), tmp_path / "out")


def test_convert_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="weight_format"):
        convert_image("some/repo", tmp_path / "out", weight_format="int4")
    with pytest.raises(ConvertError, match="group_size"):
        convert_llm("some/repo", tmp_path / "out", weight_format="int4", group_size=0)


def test_convert_refuses_non_empty_output(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("user data", encoding="utf-8")
    with pytest.raises(ConvertError, match="not empty"):
        convert_llm(str(tiny_checkpoint), out_dir, weight_format="int8")
    assert (out_dir / "keep.txt").read_text(encoding="utf-8") == "user data"


def test_convert_unreachable_repo_is_model_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline mode stands in for "no network / no such repo" without touching the hub."""
    pytest.importorskip("optimum.intel")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="could not get model") as caught:
        convert_llm("ovbot-test/definitely-not-a-repo", tmp_path / "out", weight_format="int8")
    assert "Traceback" not in caught.value.user_message
    assert not list(tmp_path.iterdir())  # neither output nor staging dir left behind
