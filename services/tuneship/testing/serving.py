"""Helpers for serving tests with untrained tiny models.

An untrained model never ends its turn by itself; a stop string chosen from its own
greedy answer makes it stop after a few characters, which exercises the same path
(``done_reason: stop`` before the token limit) a trained model takes at its
end-of-turn token.
"""

from __future__ import annotations


def early_stop_string(answer: str, length: int = 3) -> str:
    """A substring of ``answer`` whose first occurrence follows some visible text, so that
    stopping there leaves a short, non-empty answer."""
    start = len(answer) - len(answer.lstrip())
    for at in range(start + 1, len(answer) - length + 1):
        candidate = answer[at : at + length]
        if candidate.strip() and answer.find(candidate) == at:
            return candidate
    raise ValueError(f"no usable stop string in {answer!r}")
