"""A real pretrained model (Gemma 3 270M, from PyPI packages) through the cluster path:
the chart's workloads on the fake Kubernetes API, training in a Job pod, merge, export
and publish on the pools, and the answer through the controller. Slow: minutes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tuneship.common.settings import Settings
from tuneship.testing.kubecluster import deploy_chart, write_spec
from tuneship.testing.realmodels import real_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_a_real_gemma_model_runs_through_job_pods_and_pools(
    settings: Settings, sample_data: Path, tmp_path: Path
) -> None:
    base = real_model("gemma3-270m", settings.cache_dir / "real-models")
    spec = write_spec(
        tmp_path / "gemma-k8s.yaml", base, sample_data / "pirate",
        template={"family": "gemma"},
        train={"max_steps": 12, "learning_rate": 0.001, "save_steps": 6},
        export={"quant_types": ["q8_0"], "imatrix": "never", "eval_tokens": 1024},
    )  # fmt: skip
    cluster = deploy_chart(tmp_path / "cluster")
    try:
        client = cluster.start_controller()
        started = time.monotonic()
        pid = client.submit(spec).id
        info = client.get(pid)
        deadline = time.monotonic() + 1500
        while info.phase not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, info
            time.sleep(1)
            info = client.get(pid)
        assert info.phase == "succeeded", (info, cluster.controller_log()[-3000:])
        print(f"\nGemma 3 270M through Job pods and pools: {time.monotonic() - started:.0f}s")
        assert [s.attempts for s in info.stages] == [1, 1, 1, 1]
        assert info.stage("export").summary["recommended"] == "q8_0"
        pieces = client.chat_pieces(pid, [{"role": "user", "content": "Where is the treasure?"}])
        assert "".join(text for text, _ in pieces).strip()
    finally:
        cluster.stop()
