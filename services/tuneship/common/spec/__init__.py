"""The pipeline spec (``apiVersion: tuneship/v1``): YAML validated into typed sections.

Every error names the file, line and field path and says what is expected; all the
mistakes of a spec are reported at once. Relative paths in the spec are resolved
against the spec file's directory.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from tuneship.common.errors import InvalidInput
from tuneship.common.spec.data import DatasetSpec, ModelSpec, Section, TemplateSpec
from tuneship.common.spec.export import ExportSpec, MergeSpec
from tuneship.common.spec.serve import ServeSpec
from tuneship.common.spec.train import LoraSpec, TrainSpec

__all__ = [
    "DatasetSpec",
    "ExportSpec",
    "LoraSpec",
    "MergeSpec",
    "Metadata",
    "ModelSpec",
    "PipelineSpec",
    "ServeSpec",
    "SpecError",
    "TemplateSpec",
    "TrainSpec",
    "load_spec",
    "parse_spec",
]

API_VERSION = "tuneship/v1"


class Metadata(Section):
    """Identity of a pipeline."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="DNS-like name.")
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=64,
        description="Up to 64 labels for List filters; keys up to 63 characters, values up to 253.",
    )  # fmt: skip

    @field_validator("labels")
    @classmethod
    def _label_sizes(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not 0 < len(key) <= 63:
                raise ValueError(f"label key {key[:40]!r}... must be 1 to 63 characters")
            if len(value) > 253:
                raise ValueError(f"label {key!r} is {len(value)} characters long; at most 253")
        return labels


class PipelineSpec(Section):
    """One pipeline: base model + conversations → served, quantized chat model."""

    apiVersion: Literal["tuneship/v1"]
    kind: Literal["Pipeline"] = "Pipeline"
    metadata: Metadata
    model: ModelSpec
    dataset: DatasetSpec
    template: TemplateSpec = TemplateSpec()
    train: TrainSpec = TrainSpec()
    merge: MergeSpec = MergeSpec()
    export: ExportSpec = ExportSpec()
    serve: ServeSpec = ServeSpec()

    @field_validator("train")
    @classmethod
    def _eval_split(cls, train: TrainSpec, info: ValidationInfo) -> TrainSpec:
        dataset = info.data.get("dataset")
        if train.eval_steps is None or dataset is None:
            return train
        if dataset.eval is None and dataset.eval_fraction == 0:
            raise ValueError(
                "train.eval_steps evaluates on the eval split, and this dataset has none "
                "(dataset.eval_fraction is 0 and dataset.eval is not set): set "
                "dataset.eval_fraction (e.g. 0.1) or dataset.eval, or remove eval_steps"
            )
        return train


class SpecError(InvalidInput):
    """A spec with one or more mistakes; ``problems`` lists each as (where, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str) -> None:
        self.problems = problems
        lines = "\n".join(f"  {where}: {message}" for where, message in problems)
        super().__init__(
            f"{len(problems)} problem(s) in {source}:\n{lines}",
            where=source,
            hint="fix the fields above; `tuneship validate SPEC` re-checks without running",
        )

    def render(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


def _line_of(root: yaml.Node | None, path: tuple[str | int, ...]) -> int | None:
    """1-based line of the deepest YAML node along ``path`` (the spec's own lines): the
    line of its key, where the field is named (a nested value starts on the next line)."""
    node, line = root, None
    for part in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            if not match:
                return line
            key, node = match[0]
            line = key.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _problems(exc: ValidationError, root: yaml.Node | None, source: str) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors():
        path = tuple(p for p in error["loc"] if isinstance(p, str | int))
        field = ".".join(str(p) for p in path) or "(top level)"
        line = _line_of(root, path)
        where = f"{source}:{line}: {field}" if line else f"{source}: {field}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field" + _suggestion(path)
        elif error["type"] == "model_type":
            message = f"a section is a mapping of its fields ({field}: {{...}}), not a value"
        elif error["type"] == "missing":
            message = "required field is missing"
        problems.append((where, message))
    return problems


def _suggestion(path: tuple[str | int, ...]) -> str:
    """``"; did you mean 'train'?"`` for an unknown field close to a known one."""
    section: Any = PipelineSpec
    for part in path[:-1]:
        field = section.model_fields.get(part) if isinstance(part, str) else None
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, Section)):
            return " (check the spelling; see examples/ for every field)"
    known = list(section.model_fields)
    close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; {'.'.join(map(str, path[:-1])) or 'a spec'} has {', '.join(known)}"


def parse_spec(text: str, source: str = "<spec>", base_dir: Path | None = None) -> PipelineSpec:
    """Validate spec text; relative local paths are resolved against ``base_dir``."""
    try:
        root = yaml.compose(text)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InvalidInput(
            f"not valid YAML: {exc}", where=where,
            hint="indent with spaces (not tabs) and quote values that contain ': ' or '#'",
        ) from exc  # fmt: skip
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a YAML {type(data).__name__}, not a mapping"
        expected = "a spec is a YAML mapping with apiVersion: tuneship/v1"
        raise SpecError([(source, f"the spec is {what}: {expected}")], source)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problems(exc, root, source), source) from exc
    return _resolve_paths(spec, base_dir) if base_dir else spec


def load_spec(path: Path) -> PipelineSpec:
    """Read and validate a spec file (``SpecError`` lists every problem with file:line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(
            f"cannot read spec: {exc.strerror}", where=str(path),
            hint="check the path; examples/ has specs to start from",
        ) from exc  # fmt: skip
    return parse_spec(text, str(path), path.resolve().parent)


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")  # s3://, hf://, store:...


def _local(value: str | None, base_dir: Path) -> str | None:
    if value is None or _SCHEME.match(value) or Path(value).is_absolute():
        return value
    return str((base_dir / value).resolve())


def _resolve_paths(spec: PipelineSpec, base_dir: Path) -> PipelineSpec:
    model = spec.model.model_copy(update={"base": _local(spec.model.base, base_dir)})
    dataset = spec.dataset.model_copy(
        update={
            "train": _local(spec.dataset.train, base_dir),
            "eval": _local(spec.dataset.eval, base_dir),
        }
    )
    template = spec.template.model_copy(update={"path": _local(spec.template.path, base_dir)})
    return spec.model_copy(update={"model": model, "dataset": dataset, "template": template})
