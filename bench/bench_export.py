"""Export benchmarks on a generated model bigger than the test fixtures.

- conversion throughput: ``tuneship.converter.convert`` (HF safetensors → f16 GGUF,
  checks and template cleaning included) in MB of safetensors per second, next to a
  plain copy of the same safetensors files in the same run;
- converter memory: peak RSS of the conversion's process tree against the size of the
  largest tensor and of the whole model (lazy conversion keeps it near the former);
- N-type quantization: one ``quantize`` call for N types (parallel processes sharing
  the cores) against N sequential bare ``llama-quantize`` calls.

Writes ``bench/results/export.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from tuneship.common.events import NullSink
from tuneship.common.settings import Settings
from tuneship.common.toolchain import find_toolchain
from tuneship.converter import convert, quantize
from tuneship.converter.doctor import safetensors_shapes
from tuneship.quickstart.tiny_models import TinyShape, build_tiny_llama2

RESULTS = Path(__file__).parent / "results" / "export.json"
SHAPE = TinyShape(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=8)  # fmt: skip
TYPES = ["q4_k_m", "q5_k_m", "q6_k", "q8_0"]


def anon_rss(pid: int) -> int:
    """Private (anonymous) resident memory: RSS minus file pages such as mmapped weights."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples the summed RSS of this process's children (and theirs) every 20 ms.

    ``peak`` counts every resident page, including the file-backed pages of the
    memory-mapped safetensors (the kernel can drop those at any time); ``peak_anon``
    counts only the memory the converter allocated itself.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.02):
            total = anon = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                    anon += anon_rss(child.pid)
                except (psutil.Error, OSError):
                    continue
            self.peak = max(self.peak, total)
            self.peak_anon = max(self.peak_anon, anon)


def largest_tensor_bytes(model: Path) -> int:
    shapes = safetensors_shapes(model)
    elements = max(math.prod(s) for s in shapes.values())
    return elements * 4  # the generated model is float32


def interpreter_baseline() -> int:
    """Anonymous RSS of a Python that only imported torch and transformers (the floor)."""
    import sys

    probe = "import torch, transformers, os; print(open(f'/proc/{os.getpid()}/status').read())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def bench_conversion(model: Path, work: Path, toolchain: Any) -> dict[str, Any]:
    files = sorted(model.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    started = time.monotonic()
    for f in files:
        shutil.copyfile(f, work / f"copy-{f.name}")
    copy_s = time.monotonic() - started
    with PeakRss() as rss:
        started = time.monotonic()
        convert(model, work / "bench-f16.gguf", toolchain=toolchain, events=NullSink())
        convert_s = time.monotonic() - started
    for f in work.glob("copy-*"):
        f.unlink()
    largest = largest_tensor_bytes(model)
    return {
        "safetensors_mb": round(size / 1e6, 1),
        "convert_s": round(convert_s, 2),
        "convert_mb_per_s": round(size / 1e6 / convert_s, 1),
        "plain_copy_s": round(copy_s, 3),
        "plain_copy_mb_per_s": round(size / 1e6 / copy_s, 1),
        "converter_peak_rss_mb": round(rss.peak / 1e6, 1),
        "converter_peak_anon_rss_mb": round(rss.peak_anon / 1e6, 1),
        "interpreter_with_torch_transformers_anon_mb": round(interpreter_baseline() / 1e6, 1),
        "largest_tensor_mb": round(largest / 1e6, 1),
        "peak_rss_over_model_size": round(rss.peak / size, 3),
        "peak_anon_over_model_size": round(rss.peak_anon / size, 3),
        "gguf_mb": round((work / "bench-f16.gguf").stat().st_size / 1e6, 1),
    }


def bench_quantization(source: Path, work: Path, toolchain: Any) -> dict[str, Any]:
    binary = str(toolchain.binary("llama-quantize"))
    started = time.monotonic()
    for quant_type in TYPES:
        target = work / f"bare-{quant_type}.gguf"
        subprocess.run([binary, str(source), str(target), quant_type.upper()],
                       check=True, capture_output=True)  # fmt: skip
    sequential_s = time.monotonic() - started
    started = time.monotonic()
    quantize(source, work / "tuneship", TYPES, toolchain=toolchain, events=NullSink())
    tuneship_s = time.monotonic() - started
    return {
        "types": TYPES,
        "sequential_bare_llama_quantize_s": round(sequential_s, 2),
        "tuneship_quantize_s": round(tuneship_s, 2),
        "speedup": round(sequential_s / tuneship_s, 2),
    }


def main() -> None:
    toolchain = find_toolchain(Settings.from_env()).require_all()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        model = build_tiny_llama2(work / "model", seed=0, shape=SHAPE)
        conversion = bench_conversion(model, work, toolchain)
        quantization = bench_quantization(work / "bench-f16.gguf", work, toolchain)
    result = {
        "model": {"shape": SHAPE.__dict__, "dtype": "float32"},
        "conversion": conversion,
        "quantization": quantization,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
