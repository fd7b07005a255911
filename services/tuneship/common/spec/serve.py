"""Spec section for publishing and serving (Ollama names)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tuneship.common.spec.data import Section


class ServeSpec(Section):
    """Where and how the quantized model is published."""

    backend: Literal["auto", "ollama", "llama-server"] = "auto"
    name: str | None = Field(None, description="Model name; default: metadata.name.")
    tag: str = Field(
        "latest",
        description="Version tag; 'latest' derives one from the GGUF's digest. "
        "name:latest moves to each version that passes its smoke test.",
    )
    quant: str | None = Field(
        None, description="Which quant type to publish; default: recommended."
    )
    system: str | None = None
    template_mode: Literal["auto", "jinja", "go"] = "auto"
    parameters: dict[str, Any] = Field(default_factory=dict)
    smoke_prompts: list[str] = Field(default_factory=lambda: ["Hello! Who are you?"])
    smoke_max_tokens: int = Field(
        128, gt=0, description="An answer must end by itself within this many tokens."
    )
