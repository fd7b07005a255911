"""Spec sections for merging, GGUF conversion, quantization and evaluation."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator

from tuneship.common.spec.data import Section

# llama-quantize's type names (lower case) → whether tuneship requires an importance
# matrix. llama.cpp itself refuses the 1- and 2-bit IQ types without one; the other IQ
# types and Q2_K_S run without one but lose much more quality, so tuneship requires it.
_PLAIN = """q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q3_k_s q3_k_m q3_k_l q4_k q4_k_s q4_k_m
    q5_k q5_k_s q5_k_m q6_k tq1_0 tq2_0 f16 bf16 f32"""
_WITH_IMATRIX = """q2_k_s iq1_s iq1_m iq2_xxs iq2_xs iq2_s iq2_m iq3_xxs iq3_xs iq3_s iq3_m
    iq4_nl iq4_xs"""
QUANT_TYPES: dict[str, bool] = {
    **dict.fromkeys(_PLAIN.split(), False),
    **dict.fromkeys(_WITH_IMATRIX.split(), True),
}


class MergeSpec(Section):
    """Merging the adapter into the base model."""

    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    max_shard_size: str = "2GB"
    qlora_base: Literal["dequantized", "original"] = Field(
        "dequantized",
        description="QLoRA only: merge onto the NF4-rounded base the adapter was trained "
        "against (dequantized) or onto the original 16-bit weights.",
    )


class ExportSpec(Section):
    """GGUF conversion and quantization (llama.cpp names)."""

    outtype: Literal["f16", "bf16", "f32", "q8_0", "auto"] = "f16"
    quant_types: list[str] = Field(default_factory=lambda: ["q4_k_m"], min_length=1)
    imatrix: Literal["auto", "always", "never"] = "auto"
    max_kld: float = Field(0.1, gt=0, description="Quality budget: mean KL divergence vs f16.")
    eval_context: int = Field(
        256,
        ge=32,
        le=32768,
        description="Longest held-out conversation scored (tokens; longer ones are cut) "
        "and the largest imatrix chunk.",
    )
    eval_tokens: int = Field(
        2048,
        ge=64,
        le=1_000_000,
        description="About this many held-out token positions are scored per GGUF (the "
        "baseline keeps a full-vocabulary distribution for each on disk).",
    )
    imatrix_chunks: int = Field(
        128, gt=0, description="At most this many contexts of training text for the imatrix."
    )
    verify: bool = Field(True, description="Load every GGUF in llama.cpp and check parity.")

    @field_validator("quant_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        lowered = [t.lower() for t in value]
        unknown = [t for t in lowered if t not in QUANT_TYPES]
        if unknown:
            named = []
            for name in unknown:
                close = difflib.get_close_matches(name, list(QUANT_TYPES), n=1)
                named.append(f"{name} (did you mean {close[0]}?)" if close else name)
            raise ValueError(
                f"unknown llama-quantize type(s) {', '.join(named)}; "
                f"choose from {', '.join(QUANT_TYPES)}"
            )
        return list(dict.fromkeys(lowered))
