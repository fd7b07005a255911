"""The merge stage: adapter + base → one Hugging Face model with a consistent vocabulary."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.atomic import staged_dir
from tuneship.common.errors import NotFound
from tuneship.common.events import EventSink, Log, Progress
from tuneship.common.hashing import sha256_file
from tuneship.common.loading import MODEL_LOADING
from tuneship.common.spec import PipelineSpec
from tuneship.merger.manifest import TrainManifest, read_manifest
from tuneship.merger.nf4 import round_trip_linear_layers
from tuneship.merger.vocab import VocabReport, reconcile_rows, write_sentencepiece_added_tokens

STAGE = "merge"
MERGE_MANIFEST = "merge-manifest.json"
STEPS = ("load base", "apply adapter", "reconcile vocab", "save")


@dataclass(frozen=True)
class MergeResult:
    """The merged model directory and what is in it."""

    out: Path
    files: list[Path]
    dtype: str
    vocab: VocabReport
    manifest: Path
    notes: list[str] = field(default_factory=list)


def merge(
    spec: PipelineSpec, base: Path, train_out: Path, out: Path, events: EventSink
) -> MergeResult:
    """Merge the training output in ``train_out`` into ``base``; write the model to ``out``.

    ``out`` receives sharded safetensors in ``spec.merge.dtype``, the tokenizer (plus
    ``tokenizer.model`` when the base had one), a generation config with the eos and
    pad ids, and ``merge-manifest.json`` (written last). ``out`` is replaced only once
    everything is written. Raises ``NotFound`` (missing inputs), ``InvalidInput`` (bad
    manifest) and ``FailedPrecondition`` (a vocabulary that cannot be made consistent).
    """
    manifest = read_manifest(train_out)
    if manifest.method != "full" and not (base / "config.json").is_file():
        raise NotFound(f"no config.json in base model {base}", where=str(base))
    dtype = spec.merge.dtype
    tokenizer = _load_tokenizer(manifest)
    events.emit(Progress(STAGE, 0, len(STEPS), message=f"loading base in {dtype}"))
    model, notes = _merged_model(manifest, base, dtype, spec.merge.qlora_base, events)
    events.emit(Progress(STAGE, 2, len(STEPS), message="reconciling vocabulary"))
    vocab = reconcile_rows(model, tokenizer)
    if vocab.rows_merged != vocab.rows_saved:
        events.emit(
            Log(STAGE, f"embedding rows {vocab.rows_merged} → {vocab.rows_saved} "
                f"(= tokenizer size; rows past the last token are unused)")
        )  # fmt: skip
    _set_special_ids(model, tokenizer)
    events.emit(Progress(STAGE, 3, len(STEPS), message=f"saving to {out}"))
    with staged_dir(out) as work:
        model.save_pretrained(work, max_shard_size=spec.merge.max_shard_size)
        del model
        tokenizer.save_pretrained(work)
        _keep_sentencepiece_model(manifest, base, work)
        write_sentencepiece_added_tokens(work, tokenizer)
        _write_generation_config(base, work, tokenizer)
        manifest_path = _write_merge_manifest(work, manifest, base, dtype, vocab, notes)
    events.emit(Progress(STAGE, len(STEPS), len(STEPS), message="merged"))
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    return MergeResult(out, [out / f for f in files], dtype, vocab, out / manifest_path.name, notes)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _load_tokenizer(manifest: TrainManifest) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(manifest.tokenizer_dir)


def _merged_model(
    manifest: TrainManifest, base: Path, dtype: str, qlora_base: str, events: EventSink
) -> tuple[Any, list[str]]:
    from transformers import AutoModelForCausalLM

    notes: list[str] = []
    model: Any
    if manifest.method == "full":
        with MODEL_LOADING:
            model = AutoModelForCausalLM.from_pretrained(
                manifest.weights_dir, dtype=_torch_dtype(dtype)
            )
        return model, notes
    from peft import PeftModel

    # Loaded straight in the target dtype (transformers 5 loads lazily, one copy of the
    # weights); PEFT computes each B·A delta in float32 on the CPU before adding it.
    with MODEL_LOADING:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=_torch_dtype(dtype))
    rows_after = manifest.vocab.embedding_rows_after
    if int(model.get_input_embeddings().weight.shape[0]) != rows_after:
        # Same shape as in training, so the adapter's saved embedding rows load as-is.
        model.resize_token_embeddings(rows_after, mean_resizing=False)
    if manifest.method == "qlora" and qlora_base == "dequantized":
        layers = round_trip_linear_layers(model)
        notes.append(f"qlora: {layers} linear layers rounded through NF4 before merging, "
                     "as the adapter saw them in training")  # fmt: skip
    elif manifest.method == "qlora":
        notes.append("qlora: merged onto the original 16-bit weights (merge.qlora_base)")
        events.emit(Log(STAGE, notes[-1], level="warning"))
    events.emit(Progress(STAGE, 1, len(STEPS), message="applying adapter"))
    with MODEL_LOADING:
        peft_model = PeftModel.from_pretrained(model, manifest.weights_dir)
    merged = peft_model.merge_and_unload()
    return merged, notes


def _set_special_ids(model: Any, tokenizer: Any) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        model.config.bos_token_id = tokenizer.bos_token_id


def _keep_sentencepiece_model(manifest: TrainManifest, base: Path, work: Path) -> None:
    # transformers 5 saves tokenizer.json only; the SentencePiece file keeps the
    # converter's SentencePiece path (scores, byte tokens) available.
    for source in (manifest.tokenizer_dir / "tokenizer.model", base / "tokenizer.model"):
        if source.is_file():
            shutil.copy2(source, work / "tokenizer.model")
            return


def _write_generation_config(base: Path, work: Path, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(base)
    except OSError:
        config = GenerationConfig()
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(work)


def _write_merge_manifest(
    work: Path, manifest: TrainManifest, base: Path, dtype: str, vocab: VocabReport, notes: list
) -> Path:
    files = sorted(p for p in work.rglob("*") if p.is_file())
    payload = {
        "stage": STAGE,
        "dtype": dtype,
        "base_model": str(base),
        "training": manifest.raw,
        "vocab": vocab.as_dict(),
        "notes": notes,
        "files": [
            {"path": str(p.relative_to(work)), "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in files
        ],
    }
    path = work / MERGE_MANIFEST
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
