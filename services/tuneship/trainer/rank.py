"""One torchrun rank of a training that ``distributed.launch`` started.

``python -m tuneship.trainer.rank``: reads the launch directory's ``request.json`` and
runs the same ``train()`` as a single-process run; transformers' Trainer sees torchrun's
environment and trains data-parallel. See ``distributed`` for the launch directory.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from tuneship.common.events import EventSink, NullSink
from tuneship.common.spec import PipelineSpec
from tuneship.trainer import distributed
from tuneship.trainer.run import train


def main() -> int:
    # torchrun starts each rank in a session of its own: a torchrun killed outright
    # would leave it training, unseen. (Checked after: torchrun may already be gone.)
    distributed.die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    where = Path(os.environ[distributed.LAUNCH_ENV])
    try:
        request = json.loads((where / "request.json").read_text(encoding="utf-8"))
        spec = PipelineSpec.model_validate(request["spec"])
        main_rank = distributed.is_main_rank()
        events: EventSink = (
            distributed.FileSink(where / "events.jsonl") if main_rank else NullSink()
        )
        result = train(
            spec,
            Path(request["base"]),
            Path(request["out"]),
            events,
            resume=True,
            data={name: Path(path) for name, path in request["data"].items()},
            stop=lambda: (where / "stop").exists(),
            run_name=request.get("run_name"),
        )
        if main_rank:
            staging = where / ".result.json"
            staging.write_text(json.dumps(result.manifest), encoding="utf-8")
            staging.replace(where / "result.json")
        return 0
    except BaseException as error:  # every failure is reported; torchrun sees the exit code
        distributed.report_error(error)
        raise


if __name__ == "__main__":
    sys.exit(main())
