"""The chat pipeline's tuning settings (``OVBOT_LLM_*``, issue 15): each reaches the
worker's ContinuousBatchingPipeline, "auto" leaves the device's own default, and a
setting that would let a user's message crash the worker is refused per request."""

from __future__ import annotations

import openvino as ov
import openvino_genai as og
import pytest

from ovbot.core.config import Settings, load_settings
from ovbot.core.engines.factory import worker_config
from ovbot.core.engines.local import LLMTuning, LocalEngines, WorkerConfig
from ovbot.core.engines.local.worker import CPU_DYNAMIC_QUANTIZATION_GROUP_SIZE, llm_properties, llm_scheduler
from ovbot.core.engines.types import ChatMessage, GenerationOptions
from ovbot.core.errors import BadParameter, EngineUnavailable, SettingsError

TUNED_ENV = {
    "OVBOT_LLM_MAX_BATCHED_TOKENS": "64",
    "OVBOT_LLM_SPLIT_FUSE": "false",
    "OVBOT_LLM_KV_CACHE_PRECISION": "f16",
    "OVBOT_LLM_INFERENCE_PRECISION": "f32",
    "OVBOT_LLM_PERFORMANCE_HINT": "LATENCY",
    "OVBOT_LLM_THREADS": "1",
    "OVBOT_LLM_CPU_PINNING": "false",
    "OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE": "64",
}


def tiny_config(tiny_models, tuning: LLMTuning) -> WorkerConfig:
    return WorkerConfig(llm_dir=str(tiny_models.llm), image_dir=None, kv_cache_gb=1, llm_tuning=tuning)


def test_auto_leaves_every_property_to_the_device_but_the_cpu_group_size(tmp_path) -> None:
    config = worker_config(Settings(_env_file=None), tmp_path, None)
    assert llm_properties(config) == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": CPU_DYNAMIC_QUANTIZATION_GROUP_SIZE}
    on_gpu = worker_config(Settings(_env_file=None, llm_device="GPU"), tmp_path, None)
    assert llm_properties(on_gpu) == {}  # a GPU or NPU keeps its own defaults, CPU-only values included
    scheduler = llm_scheduler(og, config)
    assert (scheduler.dynamic_split_fuse, scheduler.max_num_batched_tokens) == (True, 256)
    assert scheduler.enable_prefix_caching and scheduler.cache_size == 2


def test_every_setting_reaches_the_pipeline(monkeypatch, tmp_path) -> None:
    for name, value in TUNED_ENV.items():
        monkeypatch.setenv(name, value)
    config = worker_config(load_settings(_env_file=None, compile_cache_dir=tmp_path), tmp_path, None)
    assert llm_properties(config) == {
        "CACHE_DIR": str(tmp_path),
        "KV_CACHE_PRECISION": ov.Type.f16,
        "INFERENCE_PRECISION_HINT": ov.Type.f32,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 1,
        "ENABLE_CPU_PINNING": False,
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 64,
    }
    scheduler = llm_scheduler(og, config)
    assert (scheduler.dynamic_split_fuse, scheduler.max_num_batched_tokens) == (False, 64)


@pytest.mark.parametrize("value", ["big", "-3", "5000", "1.5", ""])
def test_a_bad_group_size_is_one_clear_line(monkeypatch, value) -> None:
    monkeypatch.setenv("OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE", value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE: must be auto or")


def test_group_size_zero_turns_dynamic_quantization_off(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OVBOT_LLM_DYNAMIC_QUANTIZATION_GROUP_SIZE", "0")
    config = worker_config(load_settings(_env_file=None), tmp_path, None)
    assert llm_properties(config) == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


@pytest.mark.parametrize(("name", "value"), [
    ("OVBOT_LLM_KV_CACHE_PRECISION", "u4"), ("OVBOT_LLM_PERFORMANCE_HINT", "FAST"),
    ("OVBOT_LLM_CPU_PINNING", "maybe"), ("OVBOT_LLM_MAX_BATCHED_TOKENS", "8"), ("OVBOT_LLM_THREADS", "-1"),
])
def test_other_bad_values_name_their_variable(monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"{name}: "):
        load_settings(_env_file=None)


async def test_the_worker_serves_with_every_lever_changed(tiny_models) -> None:
    tuning = LLMTuning(
        max_num_batched_tokens=64, kv_cache_precision="f16", inference_precision="f32",
        performance_hint="LATENCY", threads=1, cpu_pinning=False, dynamic_quantization_group_size=64,
    )
    async with LocalEngines(tiny_config(tiny_models, tuning)) as engines:
        streams = [
            await engines.llm.stream(
                [ChatMessage("user", f"question {i} " * 30)], GenerationOptions(max_new_tokens=24, ignore_eos=True, seed=i)
            )
            for i in range(4)
        ]
        results = [await stream.result() for stream in streams]
        stats = await engines.stats()
    assert [r.metrics.generated_tokens for r in results] == [24] * 4
    assert min(r.metrics.prompt_tokens for r in results) > 64  # prompts longer than one step's budget: chunked
    assert stats["chat_peak_batch"] >= 2


async def test_without_split_fuse_a_too_long_prompt_is_refused_and_the_worker_lives(tiny_models) -> None:
    """The pipeline aborts the whole process on a prompt longer than one step's budget
    when split-fuse is off; the worker refuses that request and goes on serving."""
    tuning = LLMTuning(dynamic_split_fuse=False, max_num_batched_tokens=64)
    async with LocalEngines(tiny_config(tiny_models, tuning), max_restarts=2) as engines:
        pid = (await engines.stats())["pid"]
        long = await engines.llm.stream([ChatMessage("user", "word " * 100)], GenerationOptions(max_new_tokens=8))
        with pytest.raises(BadParameter) as caught:
            await long.result()
        short = await engines.llm.stream([ChatMessage("user", "hi")], GenerationOptions(max_new_tokens=8, ignore_eos=True))
        answered = await short.result()
        assert (await engines.stats())["pid"] == pid
        assert engines.health().restarts == 0
    assert "too long" in caught.value.user_message
    assert answered.metrics.generated_tokens == 8


async def test_a_property_the_device_refuses_is_a_clear_start_error(tiny_models) -> None:
    engines = LocalEngines(tiny_config(tiny_models, LLMTuning(performance_hint="FAST")), start_timeout_s=60)
    with pytest.raises(EngineUnavailable) as caught:
        await engines.start()
    await engines.close()
    assert "could not load the models" in caught.value.user_message
    assert "PERFORMANCE_HINT" in caught.value.user_message
