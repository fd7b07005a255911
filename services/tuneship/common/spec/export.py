"""Spec sections for merging, GGUF conversion, quantization and evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneship.common.spec.data import Section


class MergeSpec(Section):
    """Merging the adapter into the base model."""

    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    max_shard_size: str = "2GB"


class ExportSpec(Section):
    """GGUF conversion and quantization (llama.cpp names)."""

    outtype: Literal["f16", "bf16", "f32", "q8_0", "auto"] = "f16"
    quant_types: list[str] = Field(default_factory=lambda: ["q4_k_m"])
    imatrix: Literal["auto", "always", "never"] = "auto"
    max_kld: float = Field(0.1, gt=0, description="Quality budget: mean KL divergence vs f16.")
