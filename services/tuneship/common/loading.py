"""One lock for loading models in a process.

transformers builds a model on the meta device and then materialises and ties its
weights; two threads doing that at once in one process (two trainings on one worker,
or a training and a merge in embedded mode) corrupt each other: tied weights come out
missing and the second load fails with "Cannot copy out of meta tensor". Loading is a
few seconds; training and merging themselves still run concurrently.
"""

from __future__ import annotations

import threading

MODEL_LOADING = threading.Lock()
