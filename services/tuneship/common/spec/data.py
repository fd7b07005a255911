"""Spec sections for the inputs: the base model, the dataset and the chat template."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from tuneship.common.chat_templates import FAMILIES, family_name
from tuneship.common.datasources import HUB_PREFIX, parse_hub
from tuneship.common.errors import InvalidInput


class Section(BaseModel):
    """Base of every spec section: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Section):
    """The base model to fine-tune."""

    base: str = Field(
        description="Local directory, s3://bucket/prefix, hf://org/name, store:<input key>, "
        "or pipeline:<id> (the merged model of another pipeline, e.g. an SFT result to "
        "preference-tune)."
    )
    revision: str | None = Field(None, description="hf:// revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model.")
    allow_pickle: bool = Field(False, description="Allow .bin/.pt (pickle) weights.")


class DatasetSpec(Section):
    """The conversations to train on."""

    train: str = Field(
        description="JSONL/JSON/Parquet file or a save_to_disk directory (local, s3://, "
        "store:), or hf://datasets/org/name[@revision]."
    )
    eval: str | None = Field(None, description="Held-out conversations; else split from train.")
    format: Literal[
        "auto", "messages", "sharegpt", "prompt_completion", "preference",
        "alpaca", "prompt_response",
    ] = "auto"  # fmt: skip
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="tuneship field name → the dataset's column (or message key) name.",
    )
    split: str = Field("train", description="The split to train on (Hugging Face datasets).")
    eval_split: str | None = Field(
        None,
        description="The split held out (Hugging Face datasets); default: 'validation', "
        "else 'test', else eval_fraction of train.",
    )
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    on_invalid: Literal["error", "skip"] = "error"
    dedupe: bool = True
    seed: int = 0
    max_length: int = Field(2048, gt=0, description="Tokens; longer conversations are invalid.")

    @field_validator("train", "eval")
    @classmethod
    def _hub_location(cls, value: str | None) -> str | None:
        # The shape of a hub location is known without the hub: refuse a typo at once.
        if value is not None and value.startswith(HUB_PREFIX):
            try:
                parse_hub(value, "dataset")
            except InvalidInput as exc:
                raise PydanticCustomError(
                    "hub_location", "{problem}; {hint}", {"problem": exc.message, "hint": exc.hint}
                ) from exc
        return value

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        # Checked with the spec, so a typo is refused before any data is fetched.
        for name, column in value.items():
            if name not in COLUMN_FIELDS:
                close = difflib.get_close_matches(name, COLUMN_FIELDS, n=1)
                also = f"; did you mean {close[0]!r}?" if close else ""
                raise PydanticCustomError(
                    "unknown_column_field",
                    "{name} is not a field tuneship reads{also} (known: {known})",
                    {"name": repr(name), "also": also, "known": ", ".join(COLUMN_FIELDS)},
                )
            if not column.strip():
                raise PydanticCustomError(
                    "empty_column", "the column for {name} is empty", {"name": repr(name)}
                )
        return value


COLUMN_FIELDS = (
    "messages", "conversations", "role", "content", "prompt", "completion",
    "instruction", "input", "output", "response", "system", "chosen", "rejected",
)  # fmt: skip
"""The names ``dataset.columns`` maps from: a record's fields in each shape, plus the
``role`` and ``content`` keys of each message (``from``/``value`` in ShareGPT)."""


class TemplateSpec(Section):
    """The chat template, when the base model has none or it should be replaced."""

    family: str | None = Field(None, description=f"A bundled template: {', '.join(FAMILIES)}.")
    path: str | None = Field(None, description="A Jinja file with the template.")

    @field_validator("family")
    @classmethod
    def _bundled_family(cls, value: str | None) -> str | None:
        # Checked here, not when training starts, so `tuneship validate` and a submitted
        # spec are refused at once instead of after the base model has been fetched.
        if value is None:
            return None
        try:
            return family_name(value)
        except InvalidInput as exc:
            problem = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
            raise PydanticCustomError("unknown_family", "{problem}", {"problem": problem}) from exc
