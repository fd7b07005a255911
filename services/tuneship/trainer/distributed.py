"""More than one training process: torchrun runs them, tuneship only launches and listens.

With ``train.devices`` above 1 (or ``auto`` on a machine with several GPUs) the stage
starts ``torchrun --standalone --nproc-per-node N`` on this machine; with
``train.nodes`` above 1, each node's worker starts torchrun with the rendezvous the
cluster's engine (JobSet, Kubeflow Trainer) put in the ``PET_*`` variables, which are
torchrun's own. tuneship writes no rendezvous or collective code: transformers' Trainer
runs DDP (or FSDP) inside the ranks.

Every rank runs the same ``train()``; the launching process talks to them through a
*launch directory* beside the output:

- ``request.json``: the spec, base model, data files and output, written before launch;
- ``events.jsonl``: global rank 0's stage events, one JSON record per line, relayed by
  the launcher to its own sink as they arrive (no other rank emits);
- ``stop``: created by the launcher when its worker is stopping; the ranks agree on it
  at the end of a step (one all-reduce), save a checkpoint there and end together;
- ``error-<rank>.json``: a rank's tuneship error (class, message, where, hint), raised
  again by the launcher, so a bad dataset refused by rank 0 reads the same as in a
  single-process run;
- ``result.json``: rank 0's training manifest after it committed the output.

A rank that dies (killed, out of memory, a crashed NCCL) makes torchrun stop the others
(it watches its workers; ``--max-restarts 0``): the launcher raises ``Unavailable`` and
the controller's retry resumes from the last checkpoint. A rank that hangs in a
collective is ended by ``train.ddp_timeout``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuneship.common import errors
from tuneship.common.codec import event_from_record, event_to_record
from tuneship.common.errors import FailedPrecondition, TuneshipError, Unavailable
from tuneship.common.events import Event, EventSink, Log
from tuneship.common.spec import PipelineSpec, TrainSpec

STAGE = "train"
LAUNCH_ENV = "TUNESHIP_TRAIN_LAUNCH"
"""Set for the ranks: the launch directory (its presence marks a rank process)."""
LAUNCHER_PID_ENV = "TUNESHIP_TRAIN_LAUNCHER_PID"
"""Set for torchrun: the worker it must not outlive (``tuneship.trainer.torchrun``)."""
RENDEZVOUS_ENV = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
"""torchrun's own variables for a multi-node run (Kubeflow Trainer's torch runtime sets
them; the ``k8s-job`` provider sets them on a JobSet's pods)."""
_POLL_S = 0.2
_GRACE_S = 30.0
_ERRORS: dict[str, type[TuneshipError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, TuneshipError)
}


def processes_per_node(train: TrainSpec) -> int:
    """Training processes on this node: ``devices``, or every CUDA device for ``auto``."""
    if train.devices == "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    return int(train.devices)


def in_rank() -> bool:
    """True inside a rank that ``launch`` started."""
    return LAUNCH_ENV in os.environ


def needs_launch(train: TrainSpec) -> bool:
    """True when this call must start torchrun instead of training in-process."""
    return not in_rank() and (processes_per_node(train) > 1 or train.nodes > 1)


def world_size() -> int:
    """Ranks in this training (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_rank() -> bool:
    """Global rank 0: the one that relays events, writes metrics and commits outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def agree(flag: bool) -> bool:
    """True on every rank when it is True on any (one all-reduce; outside torchrun, as is)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def total_over_ranks(count: int) -> int:
    """The sum of ``count`` over the ranks (one all-reduce; outside torchrun, as is)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return count
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(value)
    return int(value.item())


def barrier() -> None:
    """Wait for every rank (no-op outside torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rendezvous(train: TrainSpec) -> list[str]:
    """torchrun's arguments for where the ranks meet: ``--standalone`` on one node; the
    engine's ``PET_*`` rendezvous across nodes."""
    if train.nodes == 1:
        return ["--standalone"]
    missing = [name for name in RENDEZVOUS_ENV if not os.environ.get(name)]
    if missing:
        raise FailedPrecondition(
            f"train.nodes is {train.nodes}, but this worker was not started as one node of "
            f"a multi-node training ({', '.join(missing)} not set)",
            where="train.nodes",
            hint="multi-node training runs on the k8s-job provider (a JobSet or a Kubeflow "
            "TrainJob); on one machine use train.nodes: 1 and train.devices",
        )
    nnodes = os.environ["PET_NNODES"]
    if nnodes != str(train.nodes):
        raise FailedPrecondition(
            f"train.nodes is {train.nodes} but the cluster started {nnodes} nodes",
            where="train.nodes",
            hint="the JobSet/TrainJob is made from the spec; resubmit so they agree",
        )
    return [
        f"--nnodes={nnodes}",
        f"--node-rank={os.environ['PET_NODE_RANK']}",
        f"--master-addr={os.environ['PET_MASTER_ADDR']}",
        f"--master-port={os.environ['PET_MASTER_PORT']}",
    ]


def node_rank() -> int:
    """This node's rank in a multi-node training (0 on one node)."""
    return int(os.environ.get("PET_NODE_RANK", "0") or "0")


def launch(
    spec: PipelineSpec,
    base: Path,
    out: Path,
    events: EventSink,
    *,
    data: Mapping[str, Path] | None,
    stop: Callable[[], bool] | None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Run the training as torchrun ranks; returns rank 0's manifest (an empty dict on
    a node other than node 0, whose ranks commit nothing). Raises what a rank raised,
    or ``Unavailable`` when a rank died."""
    nproc = processes_per_node(spec.train)
    command = [
        sys.executable, "-m", "tuneship.trainer.torchrun", *rendezvous(spec.train),
        f"--nproc-per-node={nproc}", "--max-restarts=0",
        "-m", "tuneship.trainer.rank",
    ]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix=f".{out.name}.launch-", dir=out.parent))
    try:
        request = {
            "spec": spec.model_dump(mode="json"),
            "base": str(base),
            "out": str(out),
            "data": {name: str(path) for name, path in (data or {}).items()},
            "run_name": run_name,
        }
        (where / "request.json").write_text(json.dumps(request), encoding="utf-8")
        (where / "events.jsonl").touch()
        nodes = f" on node {node_rank()} of {spec.train.nodes}" if spec.train.nodes > 1 else ""
        events.emit(
            Log(STAGE, f"starting {nproc} training processes{nodes} ({spec.train.strategy})")
        )
        rc = _run(command, where, events, stop, nproc)
        if rc == 0:
            result = where / "result.json"
            return dict(json.loads(result.read_text(encoding="utf-8"))) if result.exists() else {}
        raise _rank_failure(where, rc, nproc)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _run(
    command: list[str],
    where: Path,
    events: EventSink,
    stop: Callable[[], bool] | None,
    nproc: int,
) -> int:
    """torchrun until it ends, relaying rank 0's events; stops it when ``events`` raises
    (a cancelled task). torchrun dies with this thread (``tuneship.trainer.torchrun``)
    and starts its ranks in sessions of their own: it stops them on SIGTERM, and a rank
    dies with torchrun (``rank.main``)."""
    env = {**os.environ, LAUNCH_ENV: str(where), LAUNCHER_PID_ENV: str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // nproc, 1)))
    with (where / "torchrun.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    relay = _Relay(where / "events.jsonl", events)
    try:
        while process.poll() is None:
            relay.pump()
            if stop is not None and not (where / "stop").exists() and stop():
                (where / "stop").touch()
            time.sleep(_POLL_S)
        relay.pump()
        return int(process.returncode)
    finally:
        if process.poll() is None:
            _end(process)


def die_with_parent(sig: signal.Signals) -> None:
    """This process gets ``sig`` when the thread that started it ends (Linux's
    ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig))


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun's whole group (it stops its ranks), SIGKILL after a grace."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class _Relay:
    """Follows ``events.jsonl`` and emits each complete line's event."""

    def __init__(self, path: Path, events: EventSink) -> None:
        self.path, self.events, self.offset = path, events, 0

    def pump(self) -> None:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            record = json.loads(line)
            event = event_from_record(STAGE, record["kind"], record["payload"])
            if event is not None:
                self.events.emit(event)


class FileSink:
    """Rank 0's sink: one JSON record per event, appended and flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: Event) -> None:
        kind, payload = event_to_record(event)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "payload": payload}) + "\n")


def _rank_failure(where: Path, rc: int, nproc: int) -> Exception:
    """Why the ranks ended: a tuneship error a rank raised (the lowest rank's: a bad
    dataset is refused by all of them alike); else, when a rank left no report (killed,
    out of memory), the death, which a retry can get past (the others' errors are its
    echo: a broken collective); else the ranks' internal error."""
    reports = {
        int(path.stem.split("-")[1]): json.loads(path.read_text(encoding="utf-8"))
        for path in where.glob("error-*.json")
    }
    for _, report in sorted(reports.items()):
        cls = _ERRORS.get(report["type"])
        if cls is not None:
            return cls(report["message"], where=report.get("where"), hint=report.get("hint"))
    first = reports[min(reports)]["message"] if reports else ""
    if len(reports) < nproc:
        tail = _tail(where / "torchrun.log")
        return Unavailable(
            f"a training process died (torchrun exited {rc})"
            + (f"; rank {min(reports)} then failed with: {first}" if reports else "")
            + (f":\n{tail}" if tail else ""),
            hint="the controller retries; the next attempt resumes from the last checkpoint",
        )
    return RuntimeError(f"the training processes failed: {first}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def report_error(error: BaseException) -> None:
    """In a rank: leave ``error`` where the launcher reads it."""
    where = Path(os.environ[LAUNCH_ENV])
    rank = int(os.environ.get("RANK", "0"))
    if isinstance(error, TuneshipError):
        report = {
            "type": type(error).__name__,
            "message": error.message,
            "where": error.where,
            "hint": error.hint,
        }
    else:
        report = {"type": "internal", "message": f"{type(error).__name__}: {error}"}
    staging = where / f".error-{rank}.json"
    staging.write_text(json.dumps(report), encoding="utf-8")
    staging.replace(where / f"error-{rank}.json")


def follow(
    spec: PipelineSpec,
    base: Path,
    out: Path,
    events: EventSink,
    *,
    data: Mapping[str, Path] | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Run this node's ranks of a multi-node training (a node other than node 0: its
    ranks train, node 0's rank 0 commits). Returns when the training ends; raises what a
    rank raised, or ``Unavailable`` when one died. ``stop`` returning True (this pod is
    going away): every rank of every node saves a checkpoint at the end of the step and
    ends, as on node 0."""
    if node_rank() == 0:
        raise FailedPrecondition(
            "follow() runs the ranks of a node other than node 0; node 0 runs train()",
            where="PET_NODE_RANK",
        )
    launch(spec, base, out, events, data=data, stop=stop)
