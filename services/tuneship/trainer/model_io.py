"""Loading the base model safely and writing the trained artifacts.

Base weights load from safetensors only; pickle weights (``.bin``, ``.pt``) run code
when loaded and are refused unless the spec allows them. ``trust_remote_code`` is off
unless the spec turns it on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition, NotFound
from tuneship.common.loading import MODEL_LOADING
from tuneship.common.spec import ModelSpec, TrainSpec

_PICKLE = (".bin", ".pt", ".pth", ".ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_IDENTITY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def load_tokenizer(base: Path, spec: ModelSpec) -> Any:
    """The base's tokenizer (``FailedPrecondition`` naming the files when it does not load)."""
    from transformers import AutoTokenizer

    _require_dir(base)
    hint = ("copy tokenizer.json (or tokenizer.model) and tokenizer_config.json from the "
            "model's source into the directory; `tuneship doctor DIR` checks it")  # fmt: skip
    if not any((base / name).is_file() for name in _TOKENIZER_FILES):
        raise FailedPrecondition(
            f"{base} has no tokenizer ({', '.join(_TOKENIZER_FILES)} are all missing)",
            where="model.base", hint=hint,
        )  # fmt: skip
    try:
        return AutoTokenizer.from_pretrained(base, trust_remote_code=spec.trust_remote_code)
    except (ValueError, OSError, KeyError) as exc:  # transformers' ways of saying "cannot"
        raise FailedPrecondition(
            f"the tokenizer in {base} does not load: {_first_line(exc)}",
            where="model.base", hint=hint,
        ) from exc  # fmt: skip


def load_model(base: Path, spec: ModelSpec, train: TrainSpec) -> Any:
    """The base causal LM in the training dtype (4-bit for QLoRA), on the GPU if any."""
    import torch
    from transformers import AutoModelForCausalLM

    _require_dir(base)
    safetensors = any(base.glob("*.safetensors"))
    if not safetensors and not spec.allow_pickle:
        pickled = [p.name for p in base.iterdir() if p.suffix in _PICKLE]
        raise FailedPrecondition(
            "the base model has no safetensors weights"
            + (f" (only pickle files: {', '.join(pickled)})" if pickled else ""),
            where="model.base",
            hint="convert the weights to safetensors, or set model.allow_pickle: true if you "
            "trust where they came from (loading pickle runs code)",
        )
    options: dict[str, Any] = {
        "dtype": training_dtype(train),
        "trust_remote_code": spec.trust_remote_code,
        "use_safetensors": safetensors or not spec.allow_pickle,
    }
    if torch.cuda.is_available():
        options["device_map"] = {"": 0}
    if train.method == "qlora":
        options["quantization_config"] = _four_bit(options["dtype"])
    _require_known_architecture(base)
    try:
        with MODEL_LOADING:
            model = AutoModelForCausalLM.from_pretrained(base, **options)
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"the weights in {base} do not load: {_first_line(exc)}",
            where="model.base",
            hint="a file may be cut short or damaged: copy or download the model again; "
            "`tuneship doctor DIR` checks every file",
        ) from exc
    except Exception as exc:  # safetensors' own error type is not importable by name
        if type(exc).__name__ != "SafetensorError":
            raise
        raise FailedPrecondition(
            f"the weights in {base} cannot be read ({_first_line(exc)}): a safetensors file "
            "is truncated or damaged",
            where="model.base",
            hint="copy or download the model again; `tuneship doctor DIR` names the file",
        ) from exc
    model.config.use_cache = False
    return model


def _require_known_architecture(base: Path) -> None:
    import json

    import transformers
    from transformers import CONFIG_MAPPING

    model_type = json.loads((base / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise FailedPrecondition(
            f"config.json's model_type {model_type!r} is unknown to transformers "
            f"{transformers.__version__}: the model cannot be loaded",
            where="model.base",
            hint="check config.json (model_type, architectures) against the model's source; "
            "a model newer than this transformers needs a newer tuneship image",
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def training_dtype(train: TrainSpec) -> Any:
    """fp32 on CPU; bf16 on GPUs that have it, else fp16 (unless the spec says)."""
    import torch

    if train.dtype != "auto":
        return getattr(torch, train.dtype)
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def check_method(train: TrainSpec) -> None:
    """Refuse QLoRA, or FSDP, where it cannot run, before any work is done."""
    import torch

    if train.strategy == "fsdp" and not torch.cuda.is_available():
        # accelerate would quietly train with DDP instead: every rank would hold the
        # whole model, which is what fsdp was asked for to avoid.
        raise FailedPrecondition(
            "strategy: fsdp needs CUDA GPUs (accelerate shards models only across GPUs); "
            "this machine has none",
            where="train.strategy",
            hint="use strategy: ddp on CPU, or run on a GPU node",
        )
    if train.method != "qlora":
        return
    if not torch.cuda.is_available():
        raise FailedPrecondition(
            "QLoRA (4-bit) needs a CUDA GPU and bitsandbytes; this machine has no CUDA GPU",
            where="train.method",
            hint="use method: lora on CPU, or run on a GPU node with bitsandbytes installed",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FailedPrecondition(
            "QLoRA (4-bit) needs the bitsandbytes package, which is not installed",
            where="train.method",
            hint="use the training image (Dockerfile.train) or pip install bitsandbytes",
        )


def _four_bit(compute_dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def hash_base(base: Path) -> str:
    """SHA-256 over the names and bytes of the weight, config and tokenizer files."""
    digest = hashlib.sha256()
    files = sorted(p for p in base.iterdir() if p.suffix == ".safetensors" or p.name in _IDENTITY)
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_tokenizer(tokenizer: Any, base: Path, out: Path) -> None:
    """Tokenizer files with the pad and template set; ``tokenizer.model`` kept if any."""
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out)
    if (base / "tokenizer.model").is_file() and not (out / "tokenizer.model").is_file():
        shutil.copy2(base / "tokenizer.model", out / "tokenizer.model")


def save_weights(
    model: Any, method: str, resized: bool, out: Path, state_dict: dict[str, Any] | None = None
) -> Path:
    """The adapter (``adapter/``) or, for full fine-tuning, the model (``model/``).

    When the pad token was added, the adapter also carries the resized input and output
    embeddings, so that loading it onto the base resized to the same rows and merging
    reproduces the trained model exactly. ``state_dict``: the whole model's weights
    when the model itself holds only this rank's shard (FSDP).
    """
    if method == "full":
        target = out / "model"
        model.save_pretrained(target, safe_serialization=True, state_dict=state_dict)
    else:
        target = out / "adapter"
        model.save_pretrained(target, safe_serialization=True, save_embedding_layers=resized)
    for stray in target.glob("*.bin"):
        stray.unlink()
    return target


def _require_dir(base: Path) -> None:
    if not (base / "config.json").is_file():
        raise NotFound(
            f"no model at {base} (config.json missing)",
            where="model.base",
            hint="point model.base at a Hugging Face model directory",
        )
