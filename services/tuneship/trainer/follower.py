"""A node other than node 0 of a multi-node training: its share of the same training.

Only node 0's pod receives the ``StageRequest`` (over gRPC, from the controller); the
controller puts the same job into every pod's ``TUNESHIP_STAGE_JOB``, and a pod whose
``PET_NODE_RANK`` is above 0 runs ``follow_job`` instead of a stage server: it fetches
the base model and the dataset from the store as ``run_train`` does, restores the
store's newest checkpoint (every node resumes from the same step), and runs this
node's torchrun ranks (``distributed.follow``), which meet node 0's through the
engine's rendezvous variables. Node 0's rank 0 relays the events, saves the
checkpoints and commits the output; a follower only trains, and logs what it does.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable

from tuneship.common.errors import EXIT_FAILED, EXIT_OK, TuneshipError, exit_code_of
from tuneship.common.events import Event, Log
from tuneship.common.jobs import StageJob
from tuneship.common.stagework import StageContext, parse_job_spec
from tuneship.trainer import distributed
from tuneship.trainer.servicer import STAGE, restore_checkpoint

log = logging.getLogger("tuneship.trainer.follower")


class LogSink:
    """The follower's events go to its log (``kubectl logs``): node 0 reports for all."""

    def emit(self, event: Event) -> None:
        if isinstance(event, Log):
            log.log(logging.getLevelName(event.level.upper()), "%s", event.message)


def follow_job(ctx: StageContext, job: StageJob, stop: Callable[[], bool]) -> None:
    """Run this node's share of the training ``job``; returns when it ends, raises
    tuneship errors (``Unavailable`` when a rank or a peer node died, or when ``stop``
    asked every rank to save a checkpoint and end)."""
    spec = parse_job_spec(job)
    sink = LogSink()
    workdir = ctx.workdir(job, STAGE)
    try:
        base, _ = ctx.fetch(job, "base", workdir / "base", sink)
        files = ctx.fetch_dataset(job, workdir, sink)
        restore_checkpoint(ctx.store, job.pipeline, workdir / "out.partial", sink)
        sink.emit(Log(STAGE, f"following node 0 of task {job.task_id}"))
        distributed.follow(spec, base, workdir / "out", sink, data=files, stop=stop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_follower(
    ctx: StageContext,
    job: StageJob,
    stop: threading.Event,
    follow: Callable[[StageContext, StageJob, Callable[[], bool]], None] = follow_job,
) -> int:
    """``follow_job`` until it ends; the process exit code, as ``serve --once``'s.

    On SIGTERM (``stop``: the JobSet deleted, the pod preempted or evicted) the ranks
    of every node save a checkpoint at the end of their step and end together, as on
    node 0; as there, the wait has no limit of its own: the kubelet's SIGKILL at the end
    of the pod's termination grace period is the limit."""
    try:
        follow(ctx, job, stop.is_set)
    except TuneshipError as error:
        log.error("%s", error)
        return EXIT_FAILED if stop.is_set() else exit_code_of(error)
    except Exception:  # a bug: say so, and let the attempt be retried
        log.exception("the follower failed")
        return EXIT_FAILED
    return EXIT_FAILED if stop.is_set() else EXIT_OK
