"""Preference tuning: tuneship's DPO vs TRL ``DPOTrainer`` as a user gets it, same everything else.

Same model (tiny-chatml, built offline), same preference pairs (multi-turn prompts with
a spread of lengths; the chosen reply is the conversation's, the rejected one another
conversation's), same LoRA, batch size, steps, seed and machine, in one process, two
rounds alternating, best of each kept.

Measured for each:

- ``tokens_per_s``: real (non-pad) tokens per second of the training loop (TRL twice:
  with its defaults, activation checkpointing on, and with it off so that only the
  batching and the per-step metrics differ: ``ratio`` and ``ratio_batching_only``);
- ``scored_after_end_of_turn``: of the completion tokens the loss scores, the share
  that is template text after the reply's end-of-turn token (ChatML's newline after
  ``<|im_end|>``). TRL tokenizes ``prompt + chosen`` with the template and scores all
  of it after the prompt; tuneship scores the reply up to and including that token.

Writes ``bench/results/preference.json``.
"""

from __future__ import annotations

import json
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tuneship.common.events import NullSink
from tuneship.common.spec import PipelineSpec
from tuneship.quickstart.conversations import sample_conversations, write_jsonl
from tuneship.quickstart.tiny_models import build_fixture
from tuneship.trainer import train

RESULTS = Path(__file__).parent / "results" / "preference.json"
PAIRS, MAX_EXCHANGES, BATCH, STEPS, SEED = 512, 6, 8, 16, 42
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
END_OF_TURN = "<|im_end|>"


def preference_records(count: int) -> list[dict[str, Any]]:
    conversations = sample_conversations(count, SEED, kind="chat", max_exchanges=MAX_EXCHANGES)
    rng = random.Random(SEED)
    records = []
    for conversation in conversations:
        other = rng.choice(conversations)[-1]["content"]
        if other == conversation[-1]["content"]:
            other += " Or not."
        records.append(
            {
                "prompt": conversation[:-1],
                "chosen": [conversation[-1]],
                "rejected": [{"role": "assistant", "content": other}],
            }
        )
    return records


def run_tuneship(base: Path, data: Path, work: Path) -> dict[str, Any]:
    spec = PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "bench-dpo"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data), "eval_fraction": 0.0, "dedupe": False},
            "train": {
                "objective": "dpo",
                "max_steps": STEPS,
                "per_device_train_batch_size": BATCH,
                "seed": SEED,
                "save_steps": 10_000,
                "lora": LORA,
                "dtype": "float32",
            },
        }
    )
    out = work / f"tuneship-{time.monotonic_ns()}"
    metrics = train(spec, base, out, NullSink()).manifest["metrics"]
    return {
        "tokens_per_s": metrics["train_tokens_per_s"],
        "padding_fraction": metrics["padding_fraction"],
        "scored_after_end_of_turn": 0.0,  # the spans end at the end-of-turn token (tested)
    }


def run_trl(
    base: Path, records: list[dict[str, Any]], work: Path, checkpointing: bool
) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = DPOConfig(
        output_dir=str(work / "trl"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        seed=SEED,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=checkpointing,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    after = total = 0
    for row in trainer.train_dataset:
        for side in ("chosen_ids", "rejected_ids"):
            ids = row[side]
            total += len(ids)
            after += len(ids) - (ids.index(end) + 1) if end in ids else 0
    inner, counted = trainer.data_collator, {"real": 0}

    def counting(features: list[dict[str, Any]]) -> Any:
        batch = inner(features)
        counted["real"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    return {
        "tokens_per_s": counted["real"] / seconds,
        "scored_after_end_of_turn": after / total,
        "activation_checkpointing": checkpointing,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tuneship-bench-") as tmp:
        work = Path(tmp)
        base = build_fixture("tiny-chatml", work / "tiny-chatml")
        records = preference_records(PAIRS)
        data = write_jsonl(work / "pairs.jsonl", records)
        runs = [
            (
                run_tuneship(base, data, work),
                run_trl(base, records, work, checkpointing=True),
                run_trl(base, records, work, checkpointing=False),
            )
            for _ in range(2)
        ]
        ours, theirs, plain = (
            max((r[i] for r in runs), key=lambda r: r["tokens_per_s"]) for i in (0, 1, 2)
        )
    result = {
        "model": "tiny-chatml (LlamaForCausalLM, hidden 256, 2 layers, fp32)",
        "dataset": f"{PAIRS} preference pairs, prompts of 1-{MAX_EXCHANGES} exchanges",
        "steps": STEPS,
        "batch_size": BATCH,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("cuda" if torch.cuda.is_available() else "cpu"),
        "unit": "real (non-pad) tokens per second of the training loop, best of 2 runs each",
        "tuneship_dpo": ours,
        "trl_dpo_defaults": theirs,
        "trl_dpo_no_checkpointing": plain,
        "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "ratio_batching_only": ours["tokens_per_s"] / plain["tokens_per_s"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
