"""Next-token log-probabilities of a GGUF on given token ids, through libllama itself.

``llama-perplexity`` cannot do this: it tokenizes its text with special-token parsing
off, so ``<start_of_turn>``, ``<|im_start|>``… are scored as strings of ordinary
pieces, not the single tokens the model saw in training. This worker feeds llama.cpp
the exact ids (the ones the template-parity gate checks) through the pinned tree's own
C API, using the ctypes bindings that ship with the same ``llama-cpp-python`` sdist
(the toolchain build puts them in ``python/``) and the ``libllama`` it built.

It runs as a subprocess (``python -m tuneship.converter.llama_eval REQUEST.json``), so
a ggml abort cannot take a service down with it. The request names the GGUF, the
sequences, and either a file to save the full-vocabulary log-probabilities to (the
baseline) or a saved baseline to compare against (KL divergence, top-1 agreement).
The answer is one JSON object on stdout.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# Saved log-probabilities are float16, as llama-perplexity keeps its own baseline in
# 16 bits: ample for a KL divergence, and half the disk of float32.
SAVED_DTYPE = np.float16


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class _Model:
    """One GGUF loaded on the CPU with a context long enough for the longest sequence."""

    def __init__(self, ll: Any, gguf: Path, context: int, threads: int) -> None:
        self.ll = ll
        params = ll.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = ll.llama_model_load_from_file(str(gguf).encode(), params)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {gguf}")
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = context
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise SystemExit(f"llama.cpp could not create a context of {context} for {gguf}")
        self.batch = ll.llama_batch_init(context, 0, 1)

    def logits(self, ids: list[int]) -> np.ndarray:
        """The logits after every position of ``ids`` (a fresh sequence), [len, vocab]."""
        ll, batch = self.ll, self.batch
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        status = ll.llama_decode(self.ctx, batch)
        if status != 0:
            raise SystemExit(f"llama_decode failed with status {status}")
        pointer = ll.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(pointer, shape=(len(ids), self.n_vocab)).copy()

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def score(ll: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Run one request (see the module docstring); returns the sums the caller needs."""
    sequences: list[list[int]] = request["sequences"]
    context = max(len(s) for s in sequences)
    model = _Model(ll, Path(request["gguf"]), context, int(request.get("threads", 1)))
    rows = sum(len(s) - 1 for s in sequences)
    save = request.get("save")
    saved = (np.lib.format.open_memmap(save, mode="w+", dtype=SAVED_DTYPE,
                                       shape=(rows, model.n_vocab)) if save else None)  # fmt: skip
    base = np.load(request["baseline"], mmap_mode="r") if request.get("baseline") else None
    if base is not None and base.shape != (rows, model.n_vocab):
        raise SystemExit(
            f"the baseline has shape {base.shape}, this model gives {(rows, model.n_vocab)}: "
            "the GGUFs do not share a vocabulary"
        )
    nll = kld = 0.0
    same_top = row = 0
    for ids in sequences:
        logp = _log_softmax(model.logits(ids)[:-1])
        targets = np.asarray(ids[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        block = slice(row, row + len(targets))
        if saved is not None:
            saved[block] = logp
        if base is not None:
            ref = np.asarray(base[block], dtype=np.float64)
            kld += float((np.exp(ref) * (ref - logp)).sum())
            same_top += int((ref.argmax(axis=1) == logp.argmax(axis=1)).sum())
        row += len(targets)
    if saved is not None:
        saved.flush()
    model.close()
    return {"tokens": row, "nll_sum": nll, "kld_sum": kld, "same_top": same_top,
            "n_vocab": model.n_vocab}  # fmt: skip


def _quiet(ll: Any) -> Any:
    @ll.llama_log_callback
    def ignore(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    ll.llama_log_set(ignore, ctypes.c_void_p(0))
    return ignore  # kept alive by the caller: ctypes does not hold callbacks


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    import llama_cpp.llama_cpp as ll  # the pinned bindings, on PYTHONPATH from the caller

    keep = _quiet(ll)
    ll.llama_backend_init()
    result = score(ll, request)
    del keep
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
