"""llama.cpp (through llama-cpp-python's C bindings) as a benchmark peer, at its best:
all chats decoded together in one context (what llama-server / ollama do with parallel
slots), the shared system prompt kept in the KV cache and copied to every chat (what
OpenVINO's prefix caching gives ovbot), greedy sampling, EOS ignored, the same token ids
as the OpenVINO engines."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import ChatRun


class LlamaBatched:
    def __init__(
        self, gguf: Path, n_seq_max: int = 17, n_ctx: int = 8192, threads: int = 2, n_batch: int = 512,
        extra_bufts: bool = False,
    ) -> None:
        import llama_cpp as lc

        self._lc = lc
        lc.llama_backend_init()
        self._log_cb = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        started = time.perf_counter()
        model_params = lc.llama_model_default_params()
        # The CPU "extra buffer types" (weight repacking, AMX) crash llama_decode on this
        # build for Q4_0; plain CPU buffers work (see bench/README.md).
        model_params.use_extra_bufts = extra_bufts
        self._model = lc.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = True
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.load_s = time.perf_counter() - started
        self._n_batch = n_batch
        self._n_seq_max = n_seq_max
        self._n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._memory = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(max(n_batch, n_seq_max), 0, n_seq_max)
        self._prefix: tuple[int, ...] = ()  # tokens cached in sequence 0

    def close(self) -> None:
        lc = self._lc
        if self._ctx:
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ctx)
            lc.llama_model_free(self._model)
            self._ctx = None

    # ---------------------------------------------------------------- primitives
    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, wants logits)."""
        batch = self._batch
        for index, (token, position, seq, logits) in enumerate(items):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = seq
            batch.logits[index] = 1 if logits else 0
        batch.n_tokens = len(items)
        code = self._lc.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with {code}")

    def _argmax(self, batch_index: int) -> int:
        pointer = self._lc.llama_get_logits_ith(self._ctx, batch_index)
        return int(np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).argmax())

    def cache_prefix(self, ids: Sequence[int]) -> None:
        """Keep ``ids`` in sequence 0 (the shared system prompt), like a warm prefix cache."""
        self._lc.llama_memory_seq_rm(self._memory, 0, -1, -1)
        for start in range(0, len(ids), self._n_batch):
            chunk = ids[start : start + self._n_batch]
            self._decode([(tok, start + i, 0, False) for i, tok in enumerate(chunk)])
        self._prefix = tuple(ids)

    # ---------------------------------------------------------------- one run
    def run(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> ChatRun:
        lc = self._lc
        count = len(prompts)
        if count >= self._n_seq_max:
            raise ValueError(f"at most {self._n_seq_max - 1} chats at once")
        started = time.perf_counter()
        pending: list[tuple[int, int, int, bool]] = []
        owner: list[int] = []  # chat index of each pending item that wants logits
        lengths = []
        for chat, ids in enumerate(prompts):
            seq = chat + 1
            reuse = 0
            while reuse < min(len(ids) - 1, len(self._prefix)) and ids[reuse] == self._prefix[reuse]:
                reuse += 1
            if reuse:
                lc.llama_memory_seq_cp(self._memory, 0, seq, 0, reuse)
            for position in range(reuse, len(ids)):
                pending.append((ids[position], position, seq, position == len(ids) - 1))
            lengths.append(len(ids))
        ttfts = [0.0] * count
        last = [0] * count
        # prompts in chunks of n_batch tokens, the first token of each chat sampled as
        # soon as its prompt is in
        for start in range(0, len(pending), self._n_batch):
            chunk = pending[start : start + self._n_batch]
            self._decode(chunk)
            now = time.perf_counter() - started
            for index, (_, _, seq, logits) in enumerate(chunk):
                if logits:
                    last[seq - 1] = self._argmax(index)
                    ttfts[seq - 1] = now
        positions = list(lengths)
        for _ in range(new_tokens - 1):
            self._decode([(last[c], positions[c], c + 1, True) for c in range(count)])
            for c in range(count):
                last[c] = self._argmax(c)  # EOS ignored: fixed-length outputs
                positions[c] += 1
        wall = time.perf_counter() - started
        for c in range(count):
            lc.llama_memory_seq_rm(self._memory, c + 1, -1, -1)
        return ChatRun(
            engine="llama.cpp",
            concurrency=count,
            tokens=count * new_tokens,
            wall_s=wall,
            ttfts=ttfts,
            prompt_tokens=lengths,
            ends=[wall] * count,
        )
