"""What ``tuneship validate`` checks beyond the spec itself: the inputs it can reach.

Local paths are checked (the base model directory exists and has a ``config.json``;
local datasets are read and validated record by record, exactly as training will).
Remote inputs (``hf://``, ``s3://``, ``store:``) are listed as not checked: the
controller resolves them at submit.
"""

from __future__ import annotations

from pathlib import Path

from tuneship.common.errors import InvalidInput, NotFound, TuneshipError
from tuneship.common.preferences import load_training_data
from tuneship.common.spec import PipelineSpec

REMOTE = ("hf://", "s3://", "store:", "pipeline:")


def check_inputs(spec: PipelineSpec) -> tuple[list[TuneshipError], list[str]]:
    """(problems found, inputs that could not be checked from here)."""
    problems: list[TuneshipError] = []
    unchecked: list[str] = []
    base = spec.model.base
    if base.startswith(REMOTE):
        unchecked.append(f"model.base {base}")
    elif not Path(base).is_dir():
        problems.append(
            NotFound(
                f"{base} is not a directory",
                where="model.base",
                hint="a Hugging Face model directory, hf://org/name or s3://…",
            )
        )
    elif not (Path(base) / "config.json").is_file():
        problems.append(
            InvalidInput(
                f"{base} has no config.json",
                where="model.base",
                hint="point at the directory a model was saved to",
            )
        )
    datasets = [("dataset.train", spec.dataset.train), ("dataset.eval", spec.dataset.eval)]
    remote = [f"{field} {where}" for field, where in datasets if where and where.startswith(REMOTE)]
    unchecked.extend(remote)
    if not remote:
        try:
            load_training_data(spec)  # every record, as training reads them
        except TuneshipError as exc:
            problems.append(exc)
    return problems, unchecked
