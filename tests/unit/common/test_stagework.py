"""A stage's work directory: kept for a retry that can resume, removed when the input
itself is wrong (nothing would reuse the copies of the base model and data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common import errors
from tuneship.common.jobs import StageJob
from tuneship.common.stagework import StageContext, run_committed_stage
from tuneship.common.store import LocalStore

pytestmark = pytest.mark.unit


class Sink:
    def emit(self, event: object) -> None:
        return None


def attempt(tmp_path: Path, failure: errors.TuneshipError) -> Path:
    ctx = StageContext(LocalStore(tmp_path / "store"), tmp_path / "work")
    job = StageJob("p.train.1", "p", "{}", {}, "pipelines/p/train/", 1)

    def work(workdir: Path) -> tuple[Path, dict]:
        (workdir / "base").mkdir()
        (workdir / "base" / "model.safetensors").write_bytes(b"\0" * 1024)
        raise failure

    with pytest.raises(type(failure)):
        run_committed_stage(ctx, job, Sink(), stage="train", section={}, versions={}, work=work)
    return ctx.workdir(job, "train") if (tmp_path / "work").exists() else tmp_path / "none"


def test_a_bad_input_leaves_no_work_copy(tmp_path: Path) -> None:
    workdir = attempt(tmp_path, errors.InvalidInput("train.jsonl:3: not JSON"))
    assert not (workdir / "base").exists()


@pytest.mark.parametrize(
    "failure", [errors.Unavailable("store down"), errors.Cancelled("cancelled by the user")]
)
def test_a_failure_a_retry_can_resume_keeps_it(tmp_path: Path, failure) -> None:
    workdir = attempt(tmp_path, failure)
    assert (workdir / "base" / "model.safetensors").is_file()
