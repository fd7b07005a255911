"""Training throughput: tuneship's trainer vs TRL ``SFTTrainer`` defaults, same everything else.

Same model (tiny-chatml, built offline), same multi-turn conversations with a spread of
lengths, same LoRA, batch size, steps, seed and machine, in one process. TRL runs twice:
with its defaults as a user gets them (pad to the longest example, no packing,
activation checkpointing on), and with activation checkpointing off so that only the
batching differs. ``ratio`` compares with the defaults, ``ratio_batching_only`` with
the second.

Throughput is real (non-pad) tokens per second of the training loop. Writes
``bench/results/train_throughput.json``.

Also in the same rounds: tuneship with two data-parallel ranks (torchrun, gloo on CPU,
4 examples each: the same global batch), ``tuneship_2_ranks`` and ``ratio_2_ranks``. On
a CPU the two ranks share the cores one process used, so this measures what the launch,
the gradient all-reduce and the rank-0 relay cost, not a speed-up; on GPUs it is the
per-device scaling.

``BENCH_BEFORE=<commit>`` also runs that commit's trainer (its ``services/`` from
``git archive``, in a subprocess) in the same rounds, for a before/after in the same
conditions: ``tuneship_before`` and ``after_over_before`` in the results.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
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

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
BEFORE = os.environ.get("BENCH_BEFORE", "")
CONVERSATIONS, MAX_EXCHANGES, BATCH, STEPS, SEED = 1024, 10, 8, 24, 42
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


class CountingCollator:
    """Wraps a collator to count real and padded tokens of the batches it builds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.real = 0
        self.total = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()
        return batch


def run_tuneship(base: Path, data: Path, work: Path, devices: int = 1) -> dict[str, Any]:
    spec = PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "bench"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data), "eval_fraction": 0.0, "max_length": 4096},
            "train": {
                "max_steps": STEPS,
                "per_device_train_batch_size": BATCH // devices,
                "save_steps": STEPS,
                "seed": SEED,
                "lora": LORA,
                **({"devices": devices} if devices > 1 else {}),
            },
        }
    )
    out = Path(tempfile.mkdtemp(prefix="tuneship-", dir=work)) / "out"
    metrics = train(spec, base, out, NullSink(), resume=False).manifest["metrics"]
    return {
        "tokens_per_s": metrics["train_tokens_per_s"],
        "padding_fraction": metrics["padding_fraction"],
        "batching": metrics["batching"],
    }


def checkout_services(commit: str, into: Path) -> Path:
    """``services/`` of ``commit``, unpacked under ``into``."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", commit, "services"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "services"


def run_tuneship_from(services: Path, base: Path, data: Path, work: Path) -> dict[str, Any]:
    """``run_tuneship`` in a subprocess that imports tuneship from ``services``."""
    env = {**os.environ, "PYTHONPATH": str(services)}
    command = [sys.executable, __file__, "--tuneship-only", str(base), str(data), str(work)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def run_trl(base: Path, conversations: list, work: Path, checkpointing: bool) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = SFTConfig(
        output_dir=str(work / "trl"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        seed=SEED,
        max_length=4096,
        activation_checkpointing=checkpointing,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=config,
        train_dataset=Dataset.from_list([{"messages": c} for c in conversations]),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    return {
        "tokens_per_s": counter.real / seconds,
        "padding_fraction": 1 - counter.real / counter.total,
        "batching": "padded to longest, no packing",
        "activation_checkpointing": checkpointing,
    }


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="tuneship-bench-") as tmp:
        work = Path(tmp)
        base = build_fixture("tiny-chatml", work / "tiny-chatml")
        conversations = sample_conversations(
            CONVERSATIONS, SEED, kind="chat", max_exchanges=MAX_EXCHANGES
        )
        data = write_jsonl(work / "chat.jsonl", [{"messages": c} for c in conversations])
        # alternate and keep the best of each: the machine may be shared
        before = checkout_services(BEFORE, work / "before") if BEFORE else None
        runs: list[tuple[dict, ...]] = []
        for _ in range(2):
            runs.append(
                (
                    run_tuneship(base, data, work),
                    run_trl(base, conversations, work, checkpointing=True),
                    run_trl(base, conversations, work, checkpointing=False),
                    run_tuneship(base, data, work, devices=2),
                    *([run_tuneship_from(before, base, data, work)] if before else []),
                )
            )
        ours, theirs, plain, ranks, *earlier = (
            max((r[i] for r in runs), key=lambda r: r["tokens_per_s"]) for i in range(len(runs[0]))
        )
    result = {
        "model": "tiny-chatml (LlamaForCausalLM, hidden 256, 2 layers, fp32)",
        "dataset": f"{CONVERSATIONS} chat conversations, 1-{MAX_EXCHANGES} exchanges",
        "steps": STEPS,
        "batch_size": BATCH,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        + ("cuda" if torch.cuda.is_available() else "cpu"),
        "unit": "real (non-pad) tokens per second of the training loop, best of 2 runs each",
        "tuneship": ours,
        "trl_sft_defaults": theirs,
        "trl_sft_no_checkpointing": plain,
        "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
        "ratio_batching_only": ours["tokens_per_s"] / plain["tokens_per_s"],
        "tuneship_2_ranks": ranks,
        "ratio_2_ranks": ranks["tokens_per_s"] / ours["tokens_per_s"],
    }
    if earlier:
        result["tuneship_before"] = {"commit": BEFORE, **earlier[0]}
        result["ratio_before"] = earlier[0]["tokens_per_s"] / theirs["tokens_per_s"]
        result["after_over_before"] = ours["tokens_per_s"] / earlier[0]["tokens_per_s"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tuneship-only"]:
        base_dir, data_file, work_dir = (Path(arg) for arg in sys.argv[2:5])
        print(json.dumps(run_tuneship(base_dir, data_file, work_dir)))
    else:
        main()
