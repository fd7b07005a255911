"""Quality of each quantized GGUF against the 16-bit baseline, with llama-perplexity.

The baseline pass saves its logits over the held-out conversations
(``--kl-divergence-base``); each quantized model is then scored against them
(``--kl-divergence``), which gives its perplexity and the KL divergence of its
next-token distributions from the baseline's on the very same tokens.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tuneship.common.errors import FailedPrecondition
from tuneship.common.toolchain import Toolchain

_FINAL_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+)")
_PPL_Q = re.compile(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)")
_KLD = re.compile(r"Mean\s+KLD:\s*([0-9.]+)")
_TOP_P = re.compile(r"Same top p:\s*([0-9.]+)")


@dataclass(frozen=True)
class Quality:
    """Perplexity and divergence of one model on the held-out text."""

    perplexity: float
    kld_mean: float
    same_top_p: float


def context_for(tokens: int, largest: int = 256) -> int:
    """A perplexity context that gives at least 4 chunks of the text (≥ 32 tokens)."""
    return max(32, min(largest, tokens // 4) // 16 * 16)


def baseline(
    gguf: Path, text: Path, logits: Path, *, toolchain: Toolchain, context: int
) -> Quality:
    """Score the baseline and save its logits to ``logits``."""
    output = _perplexity(
        toolchain, ["-m", str(gguf), "-f", str(text), "-c", str(context), "-b", str(context),
                    "--kl-divergence-base", str(logits)], expect=[_FINAL_PPL],
    )  # fmt: skip
    return Quality(_number(_FINAL_PPL, output, "perplexity"), 0.0, 100.0)


def against_baseline(gguf: Path, logits: Path, *, toolchain: Toolchain) -> Quality:
    """Perplexity and KL divergence of ``gguf`` on the baseline's saved tokens."""
    output = _perplexity(
        toolchain,
        ["-m", str(gguf), "--kl-divergence-base", str(logits), "--kl-divergence"],
        expect=[_PPL_Q, _KLD, _TOP_P],
    )
    return Quality(
        _number(_PPL_Q, output, "perplexity"),
        _number(_KLD, output, "KL divergence"),
        _number(_TOP_P, output, "same top p"),
    )


# llama.cpp's logger is asynchronous and deliberately never flushed at exit (its
# log.cpp says so), so the summary lines printed last are sometimes lost although the
# run succeeded (seen in about half the runs of a tiny model here). The run is repeated
# until the lines are there; it is deterministic, so any complete run gives the answer.
_ATTEMPTS = 12


def _perplexity(toolchain: Toolchain, args: list[str], expect: list[re.Pattern[str]]) -> str:
    argv = [str(toolchain.binary("llama-perplexity")), *args, "-t", str(os.cpu_count() or 1)]
    output = ""
    for _ in range(_ATTEMPTS):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            tail = "\n".join(output.splitlines()[-12:])
            raise FailedPrecondition(
                f"llama-perplexity failed (exit {done.returncode}):\n{tail}",
                hint="the held-out text must hold at least 2 contexts of tokens",
            )
        if all(pattern.search(output) for pattern in expect):
            break
    return output


def _number(pattern: re.Pattern[str], output: str, what: str) -> float:
    match = pattern.search(output)
    if match is None:
        tail = "\n".join(output.splitlines()[-8:])
        raise FailedPrecondition(f"llama-perplexity printed no {what}:\n{tail}")
    return float(match.group(1))
