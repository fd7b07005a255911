"""HF model directory → GGUF with the pinned ``convert_hf_to_gguf.py``.

The script runs on a *view* of the model directory: symlinks to the original files,
except the chat template (training-only tags removed) and a metadata override file.
Nothing is copied, and the script's default lazy mode streams one tensor at a time,
so memory stays near the largest tensor rather than the model size.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.atomic import staged_file
from tuneship.common.chat import (
    has_training_tags,
    read_chat_template,
    render_chat,
    strip_training_tags,
)
from tuneship.common.conversations import Conversation
from tuneship.common.errors import FailedPrecondition
from tuneship.common.events import EventSink, Log, Progress
from tuneship.common.toolchain import Toolchain
from tuneship.converter.doctor import check_model
from tuneship.converter.scores import restore_merge_scores
from tuneship.converter.template import check_same_rendering, parity_conversations

STAGE = "convert"
OUTTYPES = ("f16", "bf16", "f32", "q8_0", "auto")
_WRITING = re.compile(r"Writing:\s+(\d+)%")
_TENSOR = re.compile(r"^INFO:hf-to-gguf:(\S+\.weight|\S+\.bias),")


@dataclass(frozen=True)
class ConvertResult:
    """The GGUF written, and what was done on the way."""

    gguf: Path
    outtype: str
    seconds: float
    template_stripped: bool
    metadata: dict[str, Any]


def lineage_metadata(model: Path, name: str | None = None) -> dict[str, Any]:
    """GGUF ``general.*`` overrides: name, base model, fine-tune lineage, license if known."""
    meta: dict[str, Any] = {"general.name": name or model.name}
    manifest = model / "merge-manifest.json"
    if manifest.is_file():
        merged = json.loads(manifest.read_text(encoding="utf-8"))
        training = merged.get("training", {})
        base = str(training.get("base_model", {}).get("path") or merged.get("base_model", ""))
        if base:
            meta["general.base_models"] = [{"name": Path(base).name, "repo_url": base}]
        meta["general.finetune"] = str(training.get("method", "fine-tuned"))
        license_name = _license(Path(base)) if base else None
        if license_name:
            meta["general.license"] = license_name
    return meta


def _license(base: Path) -> str | None:
    readme = base / "README.md"
    if not readme.is_file():
        return None
    match = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace"), re.MULTILINE)
    return match.group(1) if match else None


def require_convertible(model: Path) -> None:
    """``FailedPrecondition`` listing every ``doctor`` error (with its fix) of the HF
    directory ``model``; ``NotFound`` when it is not a model directory at all."""
    report = check_model(model) if not model.is_file() else None
    if report is None or report.kind != "hf":
        raise FailedPrecondition(
            f"{model} is a file: conversion takes a Hugging Face model directory",
            where=str(model), hint="pass the directory the model was saved to",
        )  # fmt: skip
    if report.errors:
        lines = "\n".join(f"  - {f.message}\n    fix: {f.fix}" for f in report.errors)
        raise FailedPrecondition(
            f"{model} cannot be converted as it is:\n{lines}",
            where=str(model),
            hint="`tuneship doctor PATH` shows every check; `--fix` repairs what is safe",
        )


def convert(
    model: Path,
    out: Path,
    *,
    toolchain: Toolchain,
    events: EventSink,
    outtype: str = "f16",
    metadata: dict[str, Any] | None = None,
    conversations: list[Conversation] | None = None,
) -> ConvertResult:
    """Convert ``model`` into the GGUF file ``out`` (written beside, renamed at the end).

    Raises ``FailedPrecondition`` when ``doctor`` finds an error in the directory (each
    problem with its fix) or the script fails (with its last lines).
    """
    if outtype not in OUTTYPES:
        raise FailedPrecondition(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    require_convertible(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    view = Path(tempfile.mkdtemp(prefix=f".{out.name}.view.", dir=out.parent))
    started = time.monotonic()
    try:
        stripped = _prepare_view(model, view, conversations)
        meta = metadata if metadata is not None else lineage_metadata(model)
        (view / "tuneship-metadata.json").write_text(json.dumps(meta), encoding="utf-8")
        with staged_file(out) as tmp_out:
            argv = [
                *toolchain.convert_command(), str(view), "--outfile", str(tmp_out),
                "--outtype", outtype, "--metadata", str(view / "tuneship-metadata.json"),
            ]  # fmt: skip
            _run_script(argv, events)
            if restore_merge_scores(tmp_out, model):
                events.emit(Log(STAGE, "token scores set from the BPE merge ranks"))
    finally:
        shutil.rmtree(view, ignore_errors=True)
    seconds = time.monotonic() - started
    events.emit(Log(STAGE, f"wrote {out.name} ({out.stat().st_size / 1e6:.1f} MB, {seconds:.1f}s)"))
    return ConvertResult(out, outtype, seconds, stripped, meta)


def _prepare_view(model: Path, view: Path, conversations: list[Conversation] | None) -> bool:
    """Fill ``view`` with links to ``model``; return whether the template was changed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    original = read_chat_template(model)
    changed = original is not None and has_training_tags(original)
    stripped = strip_training_tags(original) if original is not None else None
    for item in model.iterdir():
        if item.name in ("chat_template.jinja", "tokenizer_config.json"):
            continue
        (view / item.name).symlink_to(item.resolve())
    if changed and original is not None and stripped is not None:
        samples = parity_conversations(tokenizer, original, list(conversations or []))
        check_same_rendering(tokenizer, original, stripped, samples)
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    if isinstance(config.get("chat_template"), str) or stripped is None:
        config["chat_template"] = stripped
    else:
        (view / "chat_template.jinja").write_text(stripped, encoding="utf-8")
    config.update(tokenization_flags(tokenizer, stripped))
    (view / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return changed


def tokenization_flags(tokenizer: Any, template: str | None) -> dict[str, bool]:
    """``add_bos_token`` / ``add_prefix_space`` that make llama.cpp tokenize chats like HF.

    llama-server drops a leading BOS text from the rendered prompt and adds the BOS id
    itself when the GGUF says so: it must say so exactly when the template starts with
    BOS. llama.cpp's SentencePiece tokenizer puts a space before the text after every
    special token unless told not to; tokenizers' ``Metaspace(prepend_scheme="first")``
    (transformers 5) does not, so the GGUF must say no prefix.
    """
    flags: dict[str, bool] = {}
    if template is not None:
        probe = [{"role": "user", "content": "Hi"}]
        rendered = render_chat(tokenizer, probe, template=template, where="a one-turn probe")
        bos = tokenizer.bos_token
        flags["add_bos_token"] = bool(bos) and rendered.startswith(str(bos))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and "Metaspace" in repr(backend.pre_tokenizer):
        special = str(tokenizer.eos_token or tokenizer.all_special_tokens[0])
        after = tokenizer(special + "Hello", add_special_tokens=False)["input_ids"][1:]
        alone = tokenizer("Hello", add_special_tokens=False)["input_ids"]
        flags["add_prefix_space"] = after == alone
    return flags


def _run_script(argv: list[str], events: EventSink) -> None:
    """Run the convert script, turning its tensor lines and write bar into progress."""
    tail: list[str] = []
    tensors, last_pct = 0, -1
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    buffer = b""
    while chunk := process.stdout.read1(65536):  # type: ignore[attr-defined]
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            tail = [*tail[-30:], line]
            if _TENSOR.match(line):
                tensors += 1
                events.emit(Progress(STAGE, tensors, 0, unit="tensors", message="planning"))
            elif (match := _WRITING.search(line)) and int(match.group(1)) != last_pct:
                last_pct = int(match.group(1))
                events.emit(Progress(STAGE, last_pct, 100, unit="%", message="writing"))
    if process.wait() != 0:
        raise FailedPrecondition(
            "convert_hf_to_gguf.py failed (exit {}):\n{}".format(
                process.returncode, "\n".join(tail[-15:])
            ),
            hint="`tuneship doctor PATH` on the model directory explains most failures",
        )
