"""Quantization into llama.cpp types, and the importance matrix some of them need."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tuneship.common.atomic import staged_file
from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.events import EventSink, Log, Progress
from tuneship.common.gguf_meta import read_gguf
from tuneship.common.spec.export import QUANT_TYPES
from tuneship.common.toolchain import Toolchain

STAGE = "quantize"


@dataclass(frozen=True)
class QuantOutput:
    """One quantized GGUF."""

    quant_type: str
    gguf: Path
    seconds: float
    imatrix: Path | None


def needs_imatrix(quant_type: str) -> bool:
    return QUANT_TYPES.get(quant_type.lower(), False)


def check_types(
    types: list[str], *, imatrix_policy: str, where: str = "export.quant_types"
) -> None:
    """Unknown types → ``InvalidInput``; types needing an imatrix under ``never`` → refused."""
    unknown = [t for t in types if t.lower() not in QUANT_TYPES]
    if unknown:
        raise InvalidInput(
            f"unknown quantization type(s): {', '.join(unknown)}",
            where=where,
            hint="use llama-quantize names, e.g. " + ", ".join(sorted(QUANT_TYPES)),
        )
    refused = [t for t in types if needs_imatrix(t)]
    if refused and imatrix_policy == "never":
        raise FailedPrecondition(
            f"{', '.join(refused)} need(s) an importance matrix, and export.imatrix is 'never'",
            where="export.imatrix",
            hint="set export.imatrix to 'auto' (computed from the training conversations) "
            "or drop these types",
        )


def quantize(
    source: Path,
    out_dir: Path,
    types: list[str],
    *,
    toolchain: Toolchain,
    events: EventSink,
    imatrix: Path | None = None,
    jobs: int | None = None,
    threads: int | None = None,
    name: str | None = None,
) -> list[QuantOutput]:
    """Quantize the f16/bf16/f32 GGUF ``source`` into each of ``types``.

    Writes ``out_dir/<name>-<type>.gguf`` (``name``: the source's stem by default).
    Several types run as parallel ``llama-quantize`` processes sharing the cores. A
    type that needs an importance matrix is refused (``FailedPrecondition``) without one.
    """
    types = [t.lower() for t in types]
    check_types(types, imatrix_policy="auto")
    missing = [t for t in types if needs_imatrix(t) and imatrix is None]
    if missing:
        raise FailedPrecondition(
            f"{', '.join(missing)} need(s) an importance matrix and none was given",
            where="export.quant_types",
            hint="pass --imatrix FILE or --data CONVERSATIONS to compute one (llama-imatrix)",
        )
    read_gguf(source)  # a file that is no GGUF is named as such, before out_dir exists
    cores = threads or os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(types)))
    per_job = max(1, cores // jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = toolchain.binary("llama-quantize")
    done: list[QuantOutput] = []

    def one(quant_type: str) -> QuantOutput:
        target = out_dir / f"{name or source.stem}-{quant_type}.gguf"
        use = imatrix if imatrix is not None and quant_type not in ("f16", "bf16", "f32") else None
        argv = [str(binary), *(["--imatrix", str(use)] if use else [])]
        started = time.monotonic()
        _run_atomic([*argv, str(source)], target, [quant_type.upper(), str(per_job)])
        return QuantOutput(quant_type, target, time.monotonic() - started, use)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for output in pool.map(one, types):
            done.append(output)
            message = f"{output.quant_type} in {output.seconds:.1f}s"
            events.emit(Progress(STAGE, len(done), len(types), unit="types", message=message))
    return done


def compute_imatrix(
    gguf: Path,
    text: Path,
    out: Path,
    *,
    toolchain: Toolchain,
    events: EventSink,
    context: int = 256,
    threads: int | None = None,
    chunks: int | None = None,
) -> Path:
    """Compute an importance matrix for ``gguf`` over ``text`` with ``llama-imatrix``."""
    events.emit(Log("imatrix", f"computing importance matrix over {text.name} (ctx {context})"))
    argv = [
        str(toolchain.binary("llama-imatrix")), "-m", str(gguf), "-f", str(text),
        "-c", str(context), "-b", str(context), "--parse-special", "--no-ppl",
        "-t", str(threads or os.cpu_count() or 1),
        *(["--chunks", str(chunks)] if chunks else []), "-o",
    ]  # fmt: skip
    _run_atomic(argv, out, [])
    return out


def _run_atomic(argv: list[str], target: Path, after: list[str]) -> None:
    """Run ``argv + [partial] + after``, then rename the partial file to ``target``."""
    with staged_file(target) as partial:
        done = subprocess.run(
            [*argv, str(partial), *after], capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or not partial.is_file():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise FailedPrecondition(
                f"{Path(argv[0]).name} failed for {target.name} (exit {done.returncode}):\n{tail}"
            )
