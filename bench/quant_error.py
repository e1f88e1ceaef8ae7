"""What the faster precision settings cost in exactness: the chat model's logits under
each setting against an f32 reference without dynamic quantization, on the same token
ids (one 200-token prompt, then one decode step fed the reference's next token).

Random weights say nothing about answer quality; they do measure the arithmetic error
each setting adds, which is what changes between the rows. Run in a process of its own
(each compiled copy holds the weights):

    python -m bench.quant_error MODEL_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: (row, compile properties) measured against the reference
SETTINGS: dict[str, dict[str, Any]] = {
    "bf16, no dynamic quantization": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "group size 32 (OpenVINO's CPU default)": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32},
    "group size 64": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64},
    "group size 128 (ovbot's CPU default)": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128},
    "group size 256": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 256},
}
PROMPT_TOKENS = 200


@dataclass
class ErrorRow:
    setting: str
    #: relative L2 distance of the prompt's logits (every position) to the reference's
    prefill_error: float
    #: share of prompt positions whose most likely next token is the reference's
    top1_agreement: float
    #: relative L2 distance of one decode step's logits
    decode_error: float


class _Logits:
    """Compiles the stateful IR with some properties and returns its logits."""

    def __init__(self, model_dir: Path) -> None:
        import openvino as ov

        self._ov = ov
        self._core = ov.Core()
        self._model = self._core.read_model(model_dir / "openvino_model.xml")
        rng = np.random.default_rng(0)
        self.ids = rng.integers(100, 30000, size=(1, PROMPT_TOKENS)).astype(np.int64)
        self.next_id: int | None = None

    def __call__(self, properties: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        compiled = self._core.compile_model(self._model, "CPU", properties)
        request = compiled.create_infer_request()
        request.reset_state()
        length = self.ids.shape[1]
        prefill = request.infer(self._inputs(self.ids, np.arange(length)[None], length))[compiled.outputs[0]].copy()
        if self.next_id is None:  # the reference's choice: every row decodes the same input
            self.next_id = int(prefill[0, -1].argmax())
        step = np.array([[self.next_id]], dtype=np.int64)
        decode = request.infer(self._inputs(step, np.array([[length]]), length + 1))[compiled.outputs[0]].copy()
        return prefill[0].astype(np.float64), decode[0, -1].astype(np.float64)

    @staticmethod
    def _inputs(ids: np.ndarray, positions: np.ndarray, seen: int) -> dict[str, np.ndarray]:
        return {
            "input_ids": ids,
            "attention_mask": np.ones((1, seen), dtype=np.int64),
            "position_ids": positions.astype(np.int64),
            "beam_idx": np.zeros(1, dtype=np.int32),
        }


def _relative(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(found - reference) / np.linalg.norm(reference))


def measure(model_dir: Path) -> list[ErrorRow]:
    import openvino as ov

    logits = _Logits(model_dir)
    reference, reference_step = logits({"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0, "INFERENCE_PRECISION_HINT": ov.Type.f32})
    rows = []
    for name, properties in SETTINGS.items():
        prefill, step = logits(properties)
        agreement = float((prefill.argmax(-1) == reference.argmax(-1)).mean())
        rows.append(ErrorRow(name, _relative(prefill, reference), agreement, _relative(step, reference_step)))
    return rows


def measure_in_child(model_dir: Path) -> list[ErrorRow]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.quant_error", str(model_dir)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"quantization error run failed: {done.stderr.strip().splitlines()[-1:]}")
    return [ErrorRow(**row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


if __name__ == "__main__":
    print(json.dumps([asdict(row) for row in measure(Path(sys.argv[1]))]))
