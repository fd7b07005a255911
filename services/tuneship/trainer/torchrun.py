"""``python -m tuneship.trainer.torchrun ARGS``: torchrun, tied to the worker that started it.

torchrun puts itself and its ranks out of reach of the worker's process group, so a
worker killed outright (SIGKILL, outside a container, where nothing ends its
children for it) would leave the training running unseen. This entry point first asks
Linux for SIGTERM when the worker's launching thread ends (torchrun then stops its
ranks), then runs torchrun's own ``main`` with the arguments unchanged. (Done here,
after exec, rather than in a ``preexec_fn``: the worker has other threads, and code
run between fork and exec in such a process can deadlock or crash.)
"""

from __future__ import annotations

import os
import signal
import sys

from tuneship.trainer import distributed


def main() -> None:
    distributed.die_with_parent(signal.SIGTERM)
    if os.getppid() != int(os.environ.get(distributed.LAUNCHER_PID_ENV, os.getppid())):
        sys.exit(1)  # the worker was gone before the request took effect
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:])


if __name__ == "__main__":
    main()
