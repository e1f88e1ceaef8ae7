"""Local OpenVINO GenAI engines running in a supervised worker process."""

from ovbot.core.engines.local.client import LocalEngines
from ovbot.core.engines.local.protocol import LLMTuning, WorkerConfig

__all__ = ["LLMTuning", "LocalEngines", "WorkerConfig"]
