"""The training stage, top to bottom: spec + base model + conversations → adapter.

Work happens in ``<out>.partial/``: checkpoints every ``train.save_steps`` steps and the
metrics so far. Running the same call again after a crash or a SIGKILL resumes from
the last complete checkpoint. The finished output is assembled beside it and renamed
to ``<out>`` in one step, so ``<out>`` is either absent or complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition, Unavailable
from tuneship.common.events import EventSink, Log
from tuneship.common.preferences import load_training_data
from tuneship.common.spec import PipelineSpec, TrainSpec
from tuneship.trainer import distributed, evaluation, model_io, tracking
from tuneship.trainer.batching import (
    PaddedCollator,
    PaddingFreeCollator,
    TokenCount,
    choose_batching,
)
from tuneship.trainer.manifest import build_manifest
from tuneship.trainer.preference import (
    build_preference_trainer,
    drop_reference,
    preference_config,
)
from tuneship.trainer.prepare import PreparedData, encode_all, prepare_tokenizer
from tuneship.trainer.progress import STAGE, EventBridge, plot_loss, read_metrics
from tuneship.trainer.sft import build_trainer, sft_config
from tuneship.trainer.targets import check_target_modules
from tuneship.trainer.vocab import PadDecision, apply_pad, forbidden_pad_ids

MANIFEST = "training-manifest.json"
_CHECKPOINT_FILES = ("trainer_state.json", "scheduler.pt")
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
"""``optimizer.bin``: accelerate's name for the gathered optimizer state under FSDP."""


@dataclass(frozen=True)
class TrainResult:
    """Where the output is and what the manifest says."""

    out: Path
    manifest: dict[str, Any]

    @property
    def steps(self) -> int:
        return int(self.manifest["metrics"]["steps"])

    @property
    def final_loss(self) -> float:
        return float(self.manifest["metrics"]["final_loss"])


def train(
    spec: PipelineSpec,
    base: Path,
    out: Path,
    events: EventSink,
    *,
    resume: bool = True,
    data: Mapping[str, Path] | None = None,
    stop: Callable[[], bool] | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """Fine-tune ``base`` on ``spec.dataset`` and write the adapter, tokenizer and manifest.

    ``resume``: continue from the last checkpoint in ``<out>.partial`` (and return an
    already complete ``out`` as it is); ``False`` starts over. ``data`` maps ``train`` /
    ``eval`` to local copies of the dataset files (errors still name the spec's
    locations). ``stop`` returning True (the worker is going away) saves a checkpoint
    at the end of the current step and raises ``Unavailable``. ``run_name`` names the run
    in ``out/tensorboard`` and in the trackers of ``train.report_to`` (the worker passes
    the pipeline id; default: ``metadata.name``). Raises ``InvalidInput``
    for bad data or spec, ``FailedPrecondition`` for a model or machine that cannot do
    what the spec asks (pickle weights, QLoRA without CUDA, an unusable template).
    """
    if (out / MANIFEST).is_file() and resume:
        events.emit(Log(STAGE, f"{out} is already complete; nothing to do"))
        return TrainResult(out, json.loads((out / MANIFEST).read_text(encoding="utf-8")))
    if out.exists():
        raise FailedPrecondition(
            f"{out} exists and is not a finished training output",
            where="--out",
            hint="remove it or choose another output directory",
        )
    model_io.check_method(spec.train)
    tracking.check_report_to(spec.train)
    run_name = run_name or spec.metadata.name
    partial = out.with_name(out.name + ".partial")
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    if distributed.needs_launch(spec.train):
        # Several processes (devices > 1 or nodes > 1): torchrun runs this same function
        # in each rank, and rank 0 commits the output (see distributed.py).
        manifest = distributed.launch(
            spec, base, out, events, data=data, stop=stop, run_name=run_name
        )
        return TrainResult(out, manifest)
    prepared, model, pad = _load(spec, base, events, data)
    if spec.train.method != "full":
        check_target_modules(model, spec.train.lora)
    evaluation.check_eval_split(spec.train, prepared.counts[1])
    # Only now: a spec, dataset or model refused while loading leaves nothing behind.
    partial.mkdir(parents=True, exist_ok=True)
    tokenizer = prepared.tokenizer

    model = _with_method(model, spec.train)
    count = TokenCount()
    bridge = EventBridge(events, partial / "metrics.jsonl", count, stop)
    if prepared.preference:
        # Pairs are padded batches of similar lengths (TRL's preference collators).
        batching = "padded-length-grouped"
        config = preference_config(spec.train, partial, run_name)
        trainer = build_preference_trainer(model, prepared, config, pad.pad_token_id, bridge)
    else:
        batching = choose_batching(model, spec.train.packing, pad.embedding_rows_after)
        packed = batching == "padding-free"
        collator: Any = (
            PaddingFreeCollator(count) if packed else PaddedCollator(pad.pad_token_id, count)
        )
        config = sft_config(spec.train, partial, packed, run_name)
        trainer = build_trainer(model, prepared, config, collator, bridge)
    events.emit(Log(STAGE, f"objective: {spec.train.objective}; batches: {batching}"))
    watch = evaluation.EvalWatch(spec.train, events)
    trainer.add_callback(watch)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=last_checkpoint(partial / "checkpoints"))
    if bridge.stopped_at is not None:
        raise Unavailable(
            f"training stopped at step {bridge.stopped_at} because the worker is stopping; "
            "a checkpoint was saved there",
            hint="the controller retries; the next attempt resumes from that checkpoint",
        )
    seconds = time.monotonic() - started
    # With eval_steps the curve ends at the last step and holds the exported weights'
    # evaluation: no second pass (whose ranks might not all hold the best weights).
    curve = evaluation.export_weights(trainer, spec.train, partial / "checkpoints", watch)
    if curve is not None:
        held_out = curve.held_out
    else:
        held_out = trainer.evaluate() if prepared.counts[1] else {}
    eval_loss = held_out.get("eval_loss")
    real_tokens = distributed.total_over_ranks(count.real)
    # FSDP: each rank holds a shard; they gather the whole model together (a collective)
    # and rank 0 writes it.
    whole = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    drop_reference(model)
    if not distributed.is_main_rank():
        return TrainResult(out, {})  # rank 0 commits; the launcher returns its manifest

    rows = read_metrics(partial / "metrics.jsonl")
    measured = {
        "final_loss": rows[-1]["loss"] if rows else None,
        "eval_loss": eval_loss,
        "train_tokens_per_s": real_tokens / seconds if seconds > 0 else 0.0,
        "padding_fraction": count.padding_fraction,
        "steps": int(trainer.state.global_step),
        "batching": batching,
        "processes": distributed.world_size(),
        "global_batch_size": spec.train.per_device_train_batch_size
        * spec.train.gradient_accumulation_steps
        * distributed.world_size(),
        **preference_metrics(held_out),
        "evaluation": curve.as_dict() if curve else None,
    }
    manifest = build_manifest(spec, base, prepared, pad, measured)
    tracking.write_tensorboard(rows, eval_loss, partial / tracking.TENSORBOARD_DIR, run_name)
    _finish(model, tokenizer, base, spec.train, pad, manifest, rows, partial, out, whole)
    if curve is not None:
        chosen = f"export: {curve.exported}; eval loss {curve.exported_eval_loss:.4f}"
        events.emit(Log(STAGE, f"exported the weights of step {curve.exported_step} ({chosen})"))
    events.emit(Log(STAGE, f"trained {measured['steps']} steps; output in {out}"))
    return TrainResult(out, manifest)


def _load(
    spec: PipelineSpec, base: Path, events: EventSink, data: Mapping[str, Path] | None
) -> tuple[PreparedData, Any, PadDecision]:
    """Tokenizer, template, model with its pad token, and the masked examples."""
    conversations = load_training_data(spec, data)  # bad data: refused before loading
    tokenizer, template, mask = prepare_tokenizer(spec, base)
    model = model_io.load_model(base, spec.model, spec.train)
    pad = apply_pad(
        tokenizer,
        model,
        forbidden_pad_ids(tokenizer, model, mask.end_of_turn_ids()),
        template.text,
        spec.train.pad_to_multiple_of,
    )
    events.emit(Log(STAGE, f"pad token: {pad.pad_token!r} (id {pad.pad_token_id}, {pad.decision})"))
    prepared = PreparedData(tokenizer, template, mask, conversations)
    encode_all(prepared, spec, events)
    return prepared, model, pad


def preference_metrics(held_out: Mapping[str, float]) -> dict[str, float]:
    """dpo/orpo on held-out pairs: the reward margin (chosen over rejected) and how often
    the chosen reply wins, from TRL's evaluation."""
    names = {
        "eval_rewards/margins": "eval_reward_margin",
        "eval_rewards/accuracies": "eval_reward_accuracy",
    }
    return {name: float(held_out[key]) for key, name in names.items() if key in held_out}


def _with_method(model: Any, train: TrainSpec) -> Any:
    """Wrap the model in LoRA adapters (``lora``/``qlora``) or train it all (``full``)."""
    from transformers import set_seed

    set_seed(train.seed)
    if train.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if train.method == "qlora":
        model = prepare_model_for_kbit_training(model, train.gradient_checkpointing)
    config = LoraConfig(
        r=train.lora.r,
        lora_alpha=train.lora.lora_alpha,
        lora_dropout=train.lora.lora_dropout,
        target_modules=train.lora.target_modules,
        use_dora=train.lora.use_dora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def last_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint that was written completely (a kill can tear the last one)."""
    if not checkpoints.is_dir():
        return None
    complete = [
        path
        for path in checkpoints.glob("checkpoint-*")
        if path.name.split("-")[-1].isdigit()
        and all((path / name).is_file() for name in _CHECKPOINT_FILES)
        and any((path / name).is_file() for name in _OPTIMIZER_FILES)
    ]
    if not complete:
        return None
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1])))


def _finish(
    model: Any,
    tokenizer: Any,
    base: Path,
    train: TrainSpec,
    pad: PadDecision,
    manifest: dict[str, Any],
    rows: list[dict[str, float]],
    partial: Path,
    out: Path,
    whole: dict[str, Any] | None = None,
) -> None:
    """Assemble the output beside ``out`` and rename it into place."""
    staging = partial / "result"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    model_io.save_weights(model, train.method, pad.resized, staging, whole)
    model_io.save_tokenizer(tokenizer, base, staging / "tokenizer")
    shutil.copy2(partial / "metrics.jsonl", staging / "metrics.jsonl")
    (partial / tracking.TENSORBOARD_DIR).rename(staging / tracking.TENSORBOARD_DIR)
    plot_loss(rows, staging / "loss.png", f"{manifest['method']} on {base.name}")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    staging.rename(out)
    shutil.rmtree(partial, ignore_errors=True)
