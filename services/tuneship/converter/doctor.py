"""``doctor``: checks an HF model directory or a GGUF for what breaks conversion or serving.

Each finding says what is wrong, with the numbers, and how to fix it. The checks read
headers only (safetensors headers, GGUF metadata): no weights are loaded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneship.common.chat import has_training_tags, read_chat_template
from tuneship.common.errors import NotFound
from tuneship.common.gguf_meta import GgufInfo, read_gguf

Severity = Literal["error", "warning", "ok"]
EMBEDDING_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
FIX_COMMAND = "tuneship doctor --fix PATH"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Finding:
    """One check's outcome. ``fixable``: ``doctor --fix`` can repair it safely."""

    check: str
    severity: Severity
    message: str
    fix: str | None = None
    fixable: bool = False


@dataclass
class DoctorReport:
    """Every finding about one model, and the facts they were drawn from."""

    path: Path
    kind: Literal["hf", "gguf"]
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, check: str, severity: Severity, message: str, fix: str | None = None,
            fixable: bool = False) -> None:  # fmt: skip
        self.findings.append(Finding(check, severity, message, fix, fixable))


def check_model(path: Path) -> DoctorReport:
    """Check an HF model directory or a ``.gguf`` file (``NotFound`` if neither)."""
    if path.is_file() and path.suffix == ".gguf":
        return check_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        return check_hf(path)
    if path.is_dir():
        what = "is a directory without config.json"
    else:
        what = "is a file without the .gguf suffix" if path.is_file() else "does not exist"
    raise NotFound(
        f"{path} {what}: it is neither a Hugging Face model directory nor a .gguf file",
        where=str(path),
        hint="pass the directory a model was saved to (save_pretrained writes config.json "
        "beside the weights and tokenizer) or a .gguf file",
    )


def safetensors_shapes(model: Path, report: DoctorReport | None = None) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers of a model directory. A shard whose
    header cannot be read, or that is shorter than its header says, is reported as an
    error in ``report`` (and skipped) when one is given; else it raises ``ValueError``."""
    shapes: dict[str, list[int]] = {}
    for shard in sorted(model.glob("*.safetensors")):
        try:
            header = _safetensors_header(shard)
        except ValueError as exc:
            if report is None:
                raise
            fix = "copy or download the model again (the file was cut short?)"
            report.add("weights", "error", f"{shard.name}: {exc}", fix=fix)
            continue
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def _safetensors_header(shard: Path) -> dict[str, Any]:
    """The header of one shard, checked against the file's length."""
    size = shard.stat().st_size
    with shard.open("rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise ValueError(f"truncated: {size} bytes, not even a safetensors header")
        (length,) = struct.unpack("<Q", start)
        if 8 + length > size:
            raise ValueError(f"truncated: the header alone needs {8 + length:,} bytes, "
                             f"the file has {size:,}")  # fmt: skip
        try:
            header: dict[str, Any] = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a safetensors file (its header is not JSON: {exc})") from exc
    needed = (
        8
        + length
        + max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
        )
    )
    if needed > size:
        raise ValueError(f"truncated: its tensors need {needed:,} bytes, the file has {size:,}")
    return header


def embedding_shapes(shapes: dict[str, list[int]]) -> tuple[int | None, int | None]:
    """Rows of the input embedding and of ``lm_head`` (None when absent / tied)."""
    embd = next((s for k, s in shapes.items() if k.endswith(EMBEDDING_NAMES)), None)
    head = next((s for k, s in shapes.items() if k.endswith("lm_head.weight")), None)
    return (embd[0] if embd else None), (head[0] if head else None)


def check_hf(model: Path) -> DoctorReport:
    """Vocabulary sizes, special tokens, chat template and weights format of an HF dir."""
    from transformers import AutoTokenizer

    report = DoctorReport(model, "hf")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    _check_architecture(config, report)
    _check_weights_format(model, report)
    shapes = safetensors_shapes(model, report)
    rows, head_rows = embedding_shapes(shapes)
    copy_tokenizer = ("copy tokenizer.json (or tokenizer.model) and tokenizer_config.json from "
                      "the base model into the directory")  # fmt: skip
    try:
        if not any((model / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(f"none of {', '.join(TOKENIZER_FILES)} is in the directory")
        with _library_warnings_off():  # an unknown model_type is reported above, once
            tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # transformers raises many kinds; all mean "no tokenizer"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report.add("tokenizer", "error", f"the tokenizer does not load: {first}",
                   fix=copy_tokenizer)  # fmt: skip
        _check_template(report, read_chat_template(model))
        return report
    sizes = {
        "tokenizer_size": len(tokenizer),
        "config_vocab_size": config.get("vocab_size"),
        "embedding_rows": rows,
        "lm_head_rows": head_rows,
        "sentencepiece": (model / "tokenizer.model").is_file(),
    }
    report.facts.update(sizes)
    _check_vocab(report, **sizes)
    _check_special_tokens(report, tokenizer, rows)
    _check_template(report, read_chat_template(model))
    return report


@contextmanager
def _library_warnings_off() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _check_architecture(config: dict[str, Any], report: DoctorReport) -> None:
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    report.facts["model_type"] = model_type
    if model_type not in CONFIG_MAPPING:
        import transformers

        report.add(
            "architecture", "error",
            f"config.json's model_type {model_type!r} is unknown to transformers "
            f"{transformers.__version__}: it cannot be loaded, trained or converted",
            fix="check config.json (model_type, architectures) against the model's source",
        )  # fmt: skip
    else:
        names = ", ".join(config.get("architectures") or []) or "no architectures listed"
        report.add("architecture", "ok", f"{model_type} ({names})")


def _check_weights_format(model: Path, report: DoctorReport) -> None:
    if any(model.glob("*.safetensors")):
        report.add("weights", "ok", "safetensors")
        report.facts["weights_format"] = "safetensors"
    elif any(model.glob("*.bin")) or any(model.glob("*.pt")):
        report.facts["weights_format"] = "pickle"
        report.add(
            "weights", "error", "weights are pickle files (.bin/.pt), which can run code on load",
            fix="re-save the model with save_pretrained(..., safe_serialization=True) where "
            "you trust it; tuneship reads safetensors only (model.allow_pickle: true lets "
            "training load it)",
        )  # fmt: skip
    else:
        report.add("weights", "error", "no weight files (*.safetensors) in the directory")


def _check_vocab(
    report: DoctorReport,
    tokenizer_size: int,
    config_vocab_size: int | None,
    embedding_rows: int | None,
    lm_head_rows: int | None,
    sentencepiece: bool,
) -> None:
    if embedding_rows is None:
        if not any(f.check == "weights" and f.severity == "error" for f in report.findings):
            report.add("vocab", "error", "no input embedding tensor in the safetensors files",
                       fix="check that the directory holds every shard of the model")  # fmt: skip
        return  # else the weights finding says why nothing could be read
    if lm_head_rows is not None and lm_head_rows != embedding_rows:
        report.add(
            "vocab", "error",
            f"lm_head has {lm_head_rows} rows but the embedding has {embedding_rows}",
            fix="re-save the model from a consistent checkpoint",
        )  # fmt: skip
    if tokenizer_size > embedding_rows:
        report.add(
            "vocab", "error",
            f"the tokenizer has {tokenizer_size} tokens but the embedding has {embedding_rows} "
            f"rows (config.vocab_size {config_vocab_size}): {_ids(embedding_rows, tokenizer_size)} "
            "no embedding, and llama.cpp refuses the converted model "
            "('token_embd.weight' has wrong shape)",
            fix=f"`{FIX_COMMAND}` resizes embedding and lm_head to {tokenizer_size} rows and "
            f"sets config.vocab_size; or resize_token_embeddings({tokenizer_size}) before saving",
            fixable=True,
        )  # fmt: skip
    elif tokenizer_size < embedding_rows and not sentencepiece:
        report.add(
            "vocab", "error",
            f"the tokenizer has {tokenizer_size} tokens but the embedding has {embedding_rows} "
            "rows, and with tokenizer.json only the converter does not pad the token list",
            fix=f"`{FIX_COMMAND}` adds {embedding_rows - tokenizer_size} unused placeholder "
            "tokens to the tokenizer (the weights are not touched)",
            fixable=True,
        )  # fmt: skip
    if config_vocab_size is not None and config_vocab_size != embedding_rows:
        report.add(
            "vocab", "error",
            f"config.vocab_size is {config_vocab_size} but the embedding has {embedding_rows} rows",
            fix=f"`{FIX_COMMAND}` sets config.vocab_size to the embedding rows",
            fixable=True,
        )  # fmt: skip
    if not any(f.check == "vocab" for f in report.findings):
        report.add("vocab", "ok", f"{tokenizer_size} tokens, {embedding_rows} embedding rows")


def _ids(first: int, end: int) -> str:
    return f"token {first} has" if end - first == 1 else f"tokens {first}..{end - 1} have"


def _check_special_tokens(report: DoctorReport, tokenizer: Any, rows: int | None) -> None:
    limit = min(len(tokenizer), rows or len(tokenizer))
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
    }
    report.facts["special_ids"] = {k: v for k, v in ids.items() if v is not None}
    for name, token_id in ids.items():
        if token_id is not None and not 0 <= token_id < limit:
            report.add(
                "special_tokens", "error", f"{name} id {token_id} is outside 0..{limit - 1}",
                fix="set the special token to one that exists in the vocabulary",
            )  # fmt: skip
    if ids["eos"] is None:
        report.add("special_tokens", "error", "no eos token: generation would never stop",
                   fix="set eos_token in tokenizer_config.json")  # fmt: skip
    if ids["pad"] is not None and ids["pad"] == ids["eos"]:
        report.add(
            "special_tokens", "warning",
            f"pad and eos are the same token (id {ids['pad']}); a model trained this way "
            "learns to ignore eos and may not stop",
            fix="train with a distinct <pad> token (tuneship does this by default)",
        )  # fmt: skip
    if not any(f.check == "special_tokens" for f in report.findings):
        report.add("special_tokens", "ok", ", ".join(f"{k}={v}" for k, v in ids.items()))


def _check_template(report: DoctorReport, template: str | None) -> None:
    if template is None:
        report.add(
            "chat_template", "error", "no chat template: servers cannot format conversations",
            fix="set template.family or template.path in the spec, or add chat_template.jinja",
        )  # fmt: skip
    elif has_training_tags(template):
        report.add(
            "chat_template", "warning",
            "the chat template has training-only {% generation %} tags that llama.cpp and "
            "Ollama do not understand",
            fix="`tuneship convert` removes them on export; "
            f"`{FIX_COMMAND}` removes them from the directory",
            fixable=True,
        )  # fmt: skip
    else:
        report.add("chat_template", "ok", "present, no training-only tags")


RECONVERT = "re-create the GGUF with `tuneship convert` from a model that `doctor` passes"


def check_gguf(path: Path) -> DoctorReport:
    """Token count vs tensor rows, special ids, template, architecture and tensor types."""
    info = read_gguf(path)
    report = DoctorReport(path, "gguf")
    report.facts.update(
        architecture=info.architecture, n_tokens=info.n_tokens,
        embedding_rows=info.embedding_rows, output_rows=info.output_rows,
        special_ids=info.special_ids, tensor_types=info.tensor_types, add_bos=info.add_bos,
        bits_per_weight=round(info.bits_per_weight, 3), size_bytes=info.size_bytes,
    )  # fmt: skip
    if not info.architecture:
        report.add("architecture", "error", "general.architecture is missing", fix=RECONVERT)
    else:
        report.add("architecture", "ok", info.architecture)
    _check_gguf_vocab(report, info)
    _check_gguf_specials_and_template(report, info)
    types = ", ".join(f"{v} {k}" for k, v in sorted(info.tensor_types.items()))
    report.add("tensors", "ok", f"{types}; {info.bits_per_weight:.2f} bits per weight")
    consistent = {
        "vocab": f"{info.n_tokens} tokens = {info.embedding_rows} token_embd rows",
        "special_tokens": ", ".join(f"{k}={v}" for k, v in info.special_ids.items()),
        "chat_template": "present, no training-only tags",
    }
    for check, message in consistent.items():
        if not any(f.check == check for f in report.findings):
            report.add(check, "ok", message)
    return report


def _check_gguf_vocab(report: DoctorReport, info: GgufInfo) -> None:
    for name, rows in (("token_embd", info.embedding_rows), ("output", info.output_rows)):
        if rows is not None and rows != info.n_tokens:
            report.add(
                "vocab", "error",
                f"the GGUF lists {info.n_tokens} tokens but {name}.weight has {rows} rows; "
                "llama.cpp refuses it ('wrong shape')",
                fix=RECONVERT,
            )  # fmt: skip
    if info.embedding_rows is None:
        report.add("vocab", "error", "no token_embd.weight tensor", fix=RECONVERT)
    if info.placeholder_scores:
        report.add(
            "vocab", "warning",
            "every token score is the same placeholder: llama.cpp merges BPE pairs in an "
            "arbitrary order and tokenizes differently from the training tokenizer",
            fix="re-create the GGUF with `tuneship convert` (it restores the merge order)",
        )  # fmt: skip


def _check_gguf_specials_and_template(report: DoctorReport, info: GgufInfo) -> None:
    for name, token_id in info.special_ids.items():
        if not 0 <= token_id < info.n_tokens:
            report.add(
                "special_tokens", "error",
                f"{name} id {token_id} is outside the {info.n_tokens} tokens", fix=RECONVERT,
            )  # fmt: skip
    if "eos" not in info.special_ids:
        report.add("special_tokens", "error", "tokenizer.ggml.eos_token_id is missing",
                   fix=RECONVERT)  # fmt: skip
    pad, eos = info.special_ids.get("pad"), info.special_ids.get("eos")
    if pad is not None and pad == eos:
        report.add("special_tokens", "warning", f"pad and eos are the same token (id {pad})")
    if info.chat_template is None:
        report.add("chat_template", "error", "tokenizer.chat_template is missing", fix=RECONVERT)
    elif has_training_tags(info.chat_template):
        message = "the template has training-only {% generation %} tags"
        report.add("chat_template", "error", message, fix=RECONVERT)
