"""Quality of each GGUF on held-out chats, scored on exactly the ids the model trained on.

The held-out conversations are tokenized by the HF tokenizer through the chat
template, special tokens as single tokens — the ids the template-parity gate proves
llama.cpp produces for a chat. Every GGUF is run on those ids through libllama
(``converter.llama_eval``): the baseline saves its full-vocabulary next-token
log-probabilities, and each quantized GGUF is scored against them, which gives its
perplexity, the mean KL divergence of its distributions from the baseline's and how
often both put the same token first. Since the ids are the transformers ids, the
baseline's perplexity is comparable with the merged HF model's (``hf_perplexity``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneship.common.chat import chat_ids, inference_template
from tuneship.common.conversations import Conversation
from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.toolchain import Toolchain


@dataclass(frozen=True)
class Quality:
    """Perplexity and divergence of one model on the held-out ids."""

    perplexity: float
    kld_mean: float
    same_top_p: float
    tokens: int


def context_for(tokens: int, largest: int = 256) -> int:
    """An imatrix context that gives at least 4 chunks of the text (≥ 32 tokens)."""
    return max(32, min(largest, tokens // 4) // 16 * 16)


def held_out_ids(
    model: Path, conversations: list[Conversation], *, context: int, max_tokens: int
) -> list[list[int]]:
    """The conversations as ``model``'s tokenizer and template give them, each cut to
    ``context`` tokens, until about ``max_tokens`` positions are scored."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = inference_template(model)
    sequences: list[list[int]] = []
    scored = 0
    for conversation in conversations:
        ids = chat_ids(tokenizer, conversation.messages, template=template,
                       where=conversation.where)[:context]  # fmt: skip
        if len(ids) >= 2:
            sequences.append(ids)
            scored += len(ids) - 1
        if scored >= max_tokens:
            break
    if not sequences:
        raise InvalidInput(
            "no held-out conversation to evaluate on",
            where="dataset.eval",
            hint="give dataset.eval, or a dataset.eval_fraction above 0",
        )
    return sequences


def baseline(
    gguf: Path, sequences: list[list[int]], logprobs: Path, *, toolchain: Toolchain
) -> Quality:
    """Score the baseline GGUF and save its log-probabilities to ``logprobs`` (.npy)."""
    request = {"gguf": str(gguf), "sequences": sequences, "save": str(logprobs)}
    return _quality(_run(toolchain, request, logprobs.parent), compared=False)


def against_baseline(
    gguf: Path, sequences: list[list[int]], logprobs: Path, *, toolchain: Toolchain
) -> Quality:
    """Perplexity and KL divergence of ``gguf`` against the saved baseline."""
    request = {"gguf": str(gguf), "sequences": sequences, "baseline": str(logprobs)}
    return _quality(_run(toolchain, request, logprobs.parent), compared=True)


def hf_perplexity(model: Path, sequences: list[list[int]]) -> float:
    """Perplexity of the HF model ``model`` (transformers, float32) on the same ids."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    hf.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in sequences:
            logits = hf(torch.tensor([ids])).logits[0, :-1].double()
            targets = torch.tensor(ids[1:])
            logp = torch.log_softmax(logits, dim=-1)
            nll -= float(logp[torch.arange(len(targets)), targets].sum())
            count += len(targets)
    return math.exp(nll / count)


def _quality(result: dict, *, compared: bool) -> Quality:
    tokens = int(result["tokens"])
    return Quality(
        perplexity=math.exp(result["nll_sum"] / tokens),
        kld_mean=max(0.0, result["kld_sum"] / tokens) if compared else 0.0,
        same_top_p=100.0 * result["same_top"] / tokens if compared else 100.0,
        tokens=tokens,
    )


def _run(toolchain: Toolchain, request: dict, work: Path) -> dict:
    """One ``llama_eval`` subprocess; a failure names the GGUF and the worker's last lines."""
    env = {**os.environ, **toolchain.bindings_env()}
    if os.environ.get("PYTHONPATH"):  # keep the caller's path after the bindings
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    request = {**request, "threads": os.cpu_count() or 1}
    gguf = Path(request["gguf"])
    request_file = work / f"{gguf.name}.eval.json"
    request_file.write_text(json.dumps(request), encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tuneship.converter.llama_eval", str(request_file)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
    finally:
        request_file.unlink(missing_ok=True)
    if done.returncode != 0 or not done.stdout.strip():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise FailedPrecondition(
            f"evaluating {gguf.name} in llama.cpp failed (exit {done.returncode}):\n{tail}",
            where=str(gguf),
            hint="`tuneship doctor` on the GGUF checks that it loads",
        )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
