"""Faults a cluster meets, done to real processes: every component is a `tuneship serve`
process on loopback, artifacts live in a real S3 server process, pipelines train a tiny
model for real.

- The controller is SIGKILLed and started again: every pipeline completes and no
  finished stage runs twice (one attempt each, one staging prefix per stage in the
  store, one commit log line per stage).
- A trainer is SIGKILLed mid-training: the stage is retried on a new trainer process
  with empty scratch space, which resumes from the newest checkpoint in the store; the
  steps lost are at most `save_steps` and the per-step losses equal an uninterrupted run.
- The S3 server stops answering for 30 s (SIGSTOP, then SIGCONT) during an upload and
  during a download: the pipeline waits and completes, and every committed object's
  sha256 matches its manifest.

By default one pipeline meets one moment of each (a trainer kill at step 10, S3 gone
for 30 s while merge downloads, a controller kill during export); `-m faults` runs each
fault at three moments on its own pipeline, and the controller kills on PostgreSQL too.
All tests of the module share one cluster on their own S3 server. The measured numbers
are printed as `FAULT {...}` lines (`pytest -s`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tuneship.client import PipelineClient, PipelineInfo, WatchEvent
from tuneship.common import layout
from tuneship.common.store.commit import fetch_stage, verify_committed
from tuneship.testing.processes import ProcessCluster
from tuneship.testing.s3server import S3ServerProcess, s3_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TUNESHIP = str(Path(sys.executable).parent / "tuneship")
STEPS, SAVE_EVERY = 24, 4
PAUSE_S = 30.0
SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: {base}}}
dataset: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}
train: {{max_steps: {steps}, save_steps: {save}, learning_rate: 0.003}}
export: {{quant_types: [q8_0]}}
serve: {{smoke_prompts: []}}
"""
FAST_RETRIES = {
    "TUNESHIP_RETRY_BACKOFF_S": "0.5",
    "TUNESHIP_UNREACHABLE_TIMEOUT_S": "240",
}


def write_spec(tmp_path: Path, name: str, base: Path, data: Path, lr: str = "0.003") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = SPEC.format(name=name, base=base, data=data, steps=STEPS, save=SAVE_EVERY)
    path.write_text(text.replace("0.003", lr))
    return path


def report(**numbers: object) -> None:
    print("FAULT", json.dumps(numbers, sort_keys=True), file=sys.stderr)


def events_until(
    client: PipelineClient, pid: str, found: Callable[[WatchEvent], bool], timeout_s: float = 300
) -> WatchEvent:
    """Follow the pipeline's events until one satisfies ``found``."""
    deadline = time.monotonic() + timeout_s
    for event in client.watch(pid):
        if found(event):
            return event
        assert time.monotonic() < deadline, f"no such event of {pid} within {timeout_s}s"
    raise AssertionError(f"{pid} ended before the event the test waits for")


def train_step(at_least: int) -> Callable[[WatchEvent], bool]:
    def found(event: WatchEvent) -> bool:
        return (
            event.kind == "progress" and event.stage == "train"
            and event.data.get("unit") == "steps" and int(event.data["step"]) >= at_least
        )  # fmt: skip

    return found


def resuming(event: WatchEvent) -> bool:
    return event.kind == "log" and event.text.startswith("resuming from the stored checkpoint")


def stage_event(stage: str) -> Callable[[WatchEvent], bool]:
    return lambda event: event.stage == stage


def stage_done(stage: str) -> Callable[[WatchEvent], bool]:
    return lambda event: (
        event.kind == "transition" and event.stage == stage
        and event.text.startswith(f"{stage} succeeded")
    )  # fmt: skip


def all_events(client: PipelineClient, pid: str) -> list[WatchEvent]:
    return list(client.watch(pid))


def staging_attempts(cluster: ProcessCluster, pid: str, stage: str) -> set[str]:
    """The attempts that uploaded files for ``stage``: one per run of the stage."""
    prefix = layout.stage_prefix(pid, stage) + "staging/"
    return {info.key[len(prefix) :].split("/")[0] for info in cluster.store.list(prefix)}


def verify_all(cluster: ProcessCluster, final: PipelineInfo) -> None:
    """Every committed output re-hashes to the sha256 its manifest records."""
    for stage in final.stages:
        manifest = verify_committed(cluster.store, stage.outputs[stage.name], deep=True)
        assert manifest.files, stage.name


def losses_of(cluster: ProcessCluster, final: PipelineInfo, tmp_path: Path) -> list[tuple]:
    dest = tmp_path / "trained"
    fetch_stage(cluster.store, final.stage("train").outputs["train"], dest)
    rows = [json.loads(line) for line in (dest / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_chatml: Path, sample_data: Path) -> list[tuple]:
    """Per-step losses of the same training, run straight through (`tuneship train`)."""
    tmp = tmp_path_factory.mktemp("straight")
    spec = write_spec(tmp, "straight", tiny_chatml, sample_data / "pirate")
    subprocess.run([TUNESHIP, "train", str(spec), "--out", str(tmp / "out")], check=True,
                   timeout=300, capture_output=True)  # fmt: skip
    rows = [json.loads(line) for line in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows]


@pytest.fixture(scope="module")
def moto(moto_server_bin: Path) -> Iterator[S3ServerProcess]:
    """This module's own S3 server: pausing it stalls no other test."""
    with s3_server(moto_server_bin) as server:
        yield server


@pytest.fixture(scope="module")
def shared(moto: S3ServerProcess, tmp_path_factory) -> Iterator[ProcessCluster]:
    root = tmp_path_factory.mktemp("cluster")
    started = ProcessCluster.start(root, moto, controller_env=FAST_RETRIES)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def cluster(shared: ProcessCluster, moto: S3ServerProcess) -> ProcessCluster:
    moto.resume()  # a test that failed mid-pause leaves it stopped
    shared.heal()  # ... or a component down
    # Each test trains for itself: an earlier test's identical stages are not reused.
    shared.store.delete_prefix("cache/")
    return shared


# -- what each fault must leave behind --------------------------------------------------


def check_ran_once(cluster: ProcessCluster, final: PipelineInfo, retried: set[str]) -> None:
    """Every stage committed exactly once, from one attempt (``retried`` stages: from
    their second, after a worker died): nothing finished ran twice."""
    assert final.phase == "succeeded", final.as_dict()
    events = all_events(cluster.client, final.id)
    for stage in final.stages:
        assert stage.attempts == (2 if stage.name in retried else 1), final.as_dict()
        assert len(staging_attempts(cluster, final.id, stage.name)) == 1, stage.name
        commits = [e for e in events if e.stage == stage.name and e.kind == "log"
                   and e.text.startswith("committed ")]  # fmt: skip
        assert len(commits) == 1, (stage.name, [e.text for e in commits])
    verify_all(cluster, final)


def check_resumed(
    cluster: ProcessCluster, final: PipelineInfo, tmp_path: Path, uninterrupted: list[tuple]
) -> tuple[int, int]:
    """The retried training restored the store's newest checkpoint, lost at most
    ``save_steps`` steps and ended with an uninterrupted run's losses; returns
    (the last step the killed trainer reported, the step restored)."""
    events = all_events(cluster.client, final.id)
    [turn] = [i for i, e in enumerate(events) if resuming(e)]
    first_run = [int(e.data["step"]) for e in events[:turn] if train_step(1)(e)]
    second_run = [int(e.data["step"]) for e in events[turn:] if train_step(1)(e)]
    restored = int(events[turn].text.rsplit(" ", 1)[1])
    assert second_run == list(range(restored + 1, STEPS + 1)), second_run
    assert 0 <= max(first_run) - restored <= SAVE_EVERY, (max(first_run), restored)
    got = losses_of(cluster, final, tmp_path)
    assert [step for step, _ in got] == list(range(1, STEPS + 1))
    for (step, want), (_, have) in zip(uninterrupted, got, strict=True):
        assert have == pytest.approx(want, rel=1e-5), f"step {step}"
    return max(first_run), restored


# -- the faults -----------------------------------------------------------------------


def kill_trainer(cluster: ProcessCluster, pid: str, at_step: int) -> float:
    """SIGKILL the trainer at ``at_step``, start a new one with empty scratch space;
    returns the seconds until the new one resumed the stage from the store."""
    events_until(cluster.client, pid, train_step(at_step))
    killed = time.monotonic()
    cluster.kill("trainer")
    cluster.restart("trainer", fresh_work_dir=True)
    events_until(cluster.client, pid, resuming)
    return time.monotonic() - killed


def kill_controller(cluster: ProcessCluster, pid: str, moment: Callable[[WatchEvent], bool]):
    """SIGKILL the controller at ``moment`` and start it again; returns the seconds
    until it answered again."""
    events_until(cluster.client, pid, moment)
    killed = time.monotonic()
    cluster.kill("controller")
    cluster.restart("controller")
    return time.monotonic() - killed


def pause_s3(
    cluster: ProcessCluster, pid: str, moment: Callable[[WatchEvent], bool]
) -> tuple[float, float]:
    """Stop the S3 server answering for ``PAUSE_S`` seconds from ``moment``; returns
    when it stopped and when it answered again (wall clock, as stage times are)."""
    events_until(cluster.client, pid, moment)
    cluster.s3.pause()
    stopped = time.time()
    time.sleep(PAUSE_S)
    cluster.s3.resume()
    return stopped, time.time()


def stalled_stage(
    final: PipelineInfo, candidates: set[str], pause: tuple[float, float]
) -> tuple[str, float]:
    """The stage the S3 pause held up: one of ``candidates`` that was running while
    S3 was stopped and finished only after it answered again; and for how long it
    waited. Fails when no such stage exists (the pause missed the stage, or the stage
    ended early: failed rather than waited)."""
    stopped, answered = pause
    held = [s for s in final.stages
            if s.name in candidates and s.started < answered < s.finished]  # fmt: skip
    assert held, f"no stage of {sorted(candidates)} spanned the S3 pause: {final.stages}"
    return held[0].name, answered - max(held[0].started, stopped)


def test_a_pipeline_survives_a_trainer_kill_an_s3_outage_and_a_controller_kill(
    cluster: ProcessCluster, tmp_path: Path, tiny_chatml: Path, sample_data: Path,
    uninterrupted: list[tuple],
) -> None:  # fmt: skip
    [pid] = cluster.submit([write_spec(tmp_path, "survivor", tiny_chatml, sample_data / "pirate")])
    trainer_back = kill_trainer(cluster, pid, 10)
    pause = pause_s3(cluster, pid, stage_done("train"))  # merge (then export) fetch inputs
    controller_back = kill_controller(cluster, pid, stage_event("export"))
    final = cluster.wait_for(pid, {"succeeded", "failed"}, 400)

    check_ran_once(cluster, final, retried={"train"})
    last, restored = check_resumed(cluster, final, tmp_path, uninterrupted)
    stage, stalled = stalled_stage(final, {"merge", "export"}, pause)
    report(fault="all-three", trainer_killed_after_step=last, restored_step=restored,
           steps_lost=last - restored, trainer_kill_to_resumed_s=round(trainer_back, 1),
           s3_stalled_stage=stage, s3_stalled_s=round(stalled, 1),
           controller_back_s=round(controller_back, 1),
           pipeline_s=round(final.updated - final.created, 1))  # fmt: skip


CONTROLLER_MOMENTS = {
    "early-in-training": train_step(2),
    "during-export": stage_event("export"),
    "just-after-train": stage_done("train"),
}


@pytest.mark.faults
@pytest.mark.parametrize("state", ["sqlite", "postgres"])
@pytest.mark.parametrize("moment", sorted(CONTROLLER_MOMENTS))
def test_controller_killed(
    cluster: ProcessCluster, moment: str, state: str, request: pytest.FixtureRequest,
    tmp_path: Path, tiny_chatml: Path, sample_data: Path,
) -> None:  # fmt: skip
    url = f"sqlite:///{tmp_path / 'state.db'}"
    if state == "postgres":
        url = request.getfixturevalue("postgres").create_database()
    cluster.restart("controller", env={"TUNESHIP_STATE_URL": url})
    data = sample_data / "pirate"
    specs = [write_spec(tmp_path, f"ck-{i}", tiny_chatml, data, lr=f"0.00{3 + i}")
             for i in range(2)]  # fmt: skip
    ids = cluster.submit(specs)
    back = kill_controller(cluster, ids[0], CONTROLLER_MOMENTS[moment])
    for pid in ids:
        check_ran_once(cluster, cluster.wait_for(pid, {"succeeded", "failed"}, 400), set())
    report(fault="controller-kill", moment=moment, state=state, controller_back_s=round(back, 1))


@pytest.mark.faults
@pytest.mark.parametrize("at_step", [5, 10, 21])
def test_trainer_killed(
    cluster: ProcessCluster, at_step: int, tmp_path: Path, tiny_chatml: Path, sample_data: Path,
    uninterrupted: list[tuple],
) -> None:  # fmt: skip
    [pid] = cluster.submit([write_spec(tmp_path, f"tk-{at_step}", tiny_chatml,
                                       sample_data / "pirate")])  # fmt: skip
    back = kill_trainer(cluster, pid, at_step)
    final = cluster.wait_for(pid, {"succeeded", "failed"}, 400)
    check_ran_once(cluster, final, retried={"train"})
    last, restored = check_resumed(cluster, final, tmp_path, uninterrupted)
    report(fault="trainer-kill", killed_after_step=last, restored_step=restored,
           steps_lost=last - restored, kill_to_resumed_s=round(back, 1))  # fmt: skip


S3_MOMENTS = {
    # The last training step: the final checkpoint and the adapter go up while it hangs.
    "upload": (train_step(STEPS), {"train"}),
    # Training committed: merge (then export) start by downloading their inputs.
    "download": (stage_done("train"), {"merge", "export"}),
}


@pytest.mark.faults
@pytest.mark.parametrize("moment", sorted(S3_MOMENTS))
def test_s3_unreachable_for_30s(
    cluster: ProcessCluster, moment: str, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    [pid] = cluster.submit([write_spec(tmp_path, f"s3-{moment}", tiny_chatml,
                                       sample_data / "pirate", lr="0.004")])  # fmt: skip
    when, stages = S3_MOMENTS[moment]
    paused = time.monotonic()
    pause = pause_s3(cluster, pid, when)
    final = cluster.wait_for(pid, {"succeeded", "failed"}, 400)
    check_ran_once(cluster, final, set())
    stage, stalled = stalled_stage(final, stages, pause)
    report(fault="s3-pause", moment=moment, stalled_stage=stage, stalled_s=round(stalled, 1),
           pause_to_done_s=round(time.monotonic() - paused, 1))  # fmt: skip
