"""Training-stage outputs built offline for tests of the stages after training.

``build_train_out`` writes what the trainer writes (``adapter/`` or ``model/``,
``tokenizer/``, ``training-manifest.json``) for a fixture base model, in seconds:

- optionally adds a ``<pad>`` token and resizes the embeddings to a multiple of
  ``pad_to_multiple_of`` rows (the trainer's vocab decision ``added``), so the
  adapter carries the new embedding rows;
- wraps the model with a LoRA whose B matrices are small random values (fixed seed),
  then takes ``train_steps`` real optimizer steps on the pirate conversations so the
  merged model has learnt something measurable;
- wraps the assistant turns of the chat template in ``{% generation %}`` tags, as
  TRL's assistant-only loss requires, so later stages must strip them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from tuneship.common.atomic import staged_dir
from tuneship.common.hashing import sha256_file
from tuneship.quickstart.conversations import sample_conversations

PAD_TOKEN = "<pad>"


_LLAMA2_TURN = "{{ ' ' + message['content'].strip() + ' ' + eos_token }}"
_CHATML_TURN = (
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
)
_CHATML_TAGGED = (
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{%- generation -%}"
    "{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}" + _CHATML_TURN + "{%- endif -%}"
)


def add_generation_tags(template: str) -> str:
    """Wrap the assistant turns of a fixture template in ``{% generation %}`` tags."""
    if _LLAMA2_TURN in template:
        tagged = "{%- generation -%}" + _LLAMA2_TURN + "{%- endgeneration -%}"
        return template.replace(_LLAMA2_TURN, tagged)
    if _CHATML_TURN in template:
        return template.replace(_CHATML_TURN, _CHATML_TAGGED)
    raise ValueError("not a fixture template: no assistant turn found")


def build_train_out(
    base: Path,
    out: Path,
    *,
    add_pad: bool = True,
    pad_to_multiple_of: int = 64,
    method: str = "lora",
    train_steps: int = 0,
    seed: int = 0,
    rank: int = 8,
) -> Path:
    """Write a training-stage output for ``base`` into ``out`` (replaced) and return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows_before, size_before = model.get_input_embeddings().weight.shape[0], len(tokenizer)
    decision, multiple = "existing", None
    if tokenizer.pad_token is None and add_pad:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        multiple = pad_to_multiple_of
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple)
        decision = "added"
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        decision = "reused"
    tokenizer.chat_template = add_generation_tags(str(tokenizer.chat_template))
    model.config.pad_token_id = tokenizer.pad_token_id
    if method != "full":
        model = _wrap_lora(model, rank, seed, resized=decision == "added")
    if train_steps:
        _train(model, tokenizer, train_steps, seed)
    vocab = {
        "decision": decision,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "tokenizer_size_before": size_before,
        "tokenizer_size_after": len(tokenizer),
        "embedding_rows_before": rows_before,
        "embedding_rows_after": model.get_input_embeddings().weight.shape[0],
        "pad_to_multiple_of": multiple,
    }
    manifest = {
        "method": method,
        "base_model": {"path": str(base), "sha256": sha256_file(base / "model.safetensors")},
        "template": {"source": "base", "has_generation_tags": True},
        "vocab": vocab,
        "dataset": {"kind": "pirate", "seed": seed},
        "metrics": {"train_steps": train_steps},
    }
    return _save(out, base, model, tokenizer, manifest)


def _save(out: Path, base: Path, model: Any, tokenizer: Any, manifest: dict[str, Any]) -> Path:
    """Write the trainer's layout beside ``out`` and swap it into place when complete."""
    full = manifest["method"] == "full"
    with staged_dir(out) as work:
        if full:
            model.save_pretrained(work / "model")
        else:
            resized = manifest["vocab"]["decision"] == "added"
            model.save_pretrained(work / "adapter", save_embedding_layers=resized)
        tokenizer.save_pretrained(work / "tokenizer")
        if (base / "tokenizer.model").is_file():
            shutil.copy2(base / "tokenizer.model", work / "tokenizer" / "tokenizer.model")
        (work / "training-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _wrap_lora(model: Any, rank: int, seed: int, *, resized: bool) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model: Any = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if re.search(r"lora_B\.default\.weight$", name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    if resized:
        # The new <pad> row is learnt with the adapter and saved with it, as the trainer's is.
        model.get_input_embeddings().weight.requires_grad_(True)
    return peft_model


def _train(model: Any, tokenizer: Any, steps: int, seed: int) -> None:
    import torch

    texts = [
        tokenizer.apply_chat_template(c, tokenize=False)
        for c in sample_conversations(32, seed, kind="pirate", max_exchanges=2)
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    for step in range(steps):
        batch = tokenizer(texts[step % len(texts)], return_tensors="pt", add_special_tokens=False)
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
