"""The export report: one row per GGUF, a recommendation, as JSON, Markdown and a chart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.atomic import atomic_write_text, staged_file

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"


@dataclass(frozen=True)
class QuantReport:
    """Measurements of one GGUF (the baseline has ``kld_mean`` 0)."""

    quant_type: str
    file: str
    size_bytes: int
    bits_per_weight: float
    perplexity: float
    kld_mean: float
    same_top_p: float
    """Percent (0-100) of eval tokens whose most likely next token is the baseline's."""
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    verified: bool
    baseline: bool = False


@dataclass(frozen=True)
class ExportReport:
    """Every GGUF of one export and the type recommended for serving."""

    model: str
    max_kld: float
    eval_tokens: int
    eval_context: int
    rows: list[QuantReport]
    recommended: str | None
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)


def recommend(rows: list[QuantReport], max_kld: float) -> tuple[str | None, str]:
    """The smallest quantized type whose mean KL divergence is within ``max_kld``."""
    within = [r for r in rows if not r.baseline and r.kld_mean <= max_kld]
    if not within:
        return None, f"no quantized type is within the budget (mean KLD ≤ {max_kld})"
    best = min(within, key=lambda r: r.size_bytes)
    return best.quant_type, (
        f"smallest file within the budget (mean KLD {best.kld_mean:.4f} ≤ {max_kld})"
    )


def write_report(report: ExportReport, out: Path) -> list[Path]:
    """Write report.json, report.md and report.png into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / REPORT_JSON, out / REPORT_MD, out / REPORT_PNG]
    atomic_write_text(paths[0], json.dumps(asdict(report), indent=2) + "\n")
    atomic_write_text(paths[1], markdown(report, paths[2].name))
    _chart(report, paths[2])
    return paths


def markdown(report: ExportReport, chart: str) -> str:
    """The report as a readable Markdown page with a table."""
    lines = [
        f"# Export report: {report.model}",
        "",
        f"Held-out conversations: {report.eval_tokens} tokens, context {report.eval_context}. "
        f"Quality budget: mean KL divergence ≤ {report.max_kld}.",
        "",
        "| type | size (MB) | bits/weight | perplexity | mean KLD | same top token | "
        "prompt tok/s | gen tok/s | verified |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in report.rows:
        name = f"{r.quant_type} (baseline)" if r.baseline else r.quant_type
        if r.quant_type == report.recommended:
            name = f"**{name}** ★"
        lines.append(
            f"| {name} | {r.size_bytes / 1e6:.2f} | {r.bits_per_weight:.2f} | {r.perplexity:.3f} "
            f"| {r.kld_mean:.5f} | {r.same_top_p:.1f}% | {r.prompt_tokens_per_s:.0f} "
            f"| {r.generation_tokens_per_s:.0f} | {'yes' if r.verified else 'no'} |"
        )
    verdict = report.recommended or "none"
    lines += ["", f"**Recommended: {verdict}** — {report.reason}.", "", f"![size vs KLD]({chart})"]
    return "\n".join(lines) + "\n"


def _chart(report: ExportReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if not r.baseline]
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    axis.scatter([r.size_bytes / 1e6 for r in rows], [r.kld_mean for r in rows])
    for r in rows:
        axis.annotate(r.quant_type, (r.size_bytes / 1e6, r.kld_mean),
                      textcoords="offset points", xytext=(4, 4))  # fmt: skip
    axis.axhline(report.max_kld, linestyle="--", color="gray", label=f"budget {report.max_kld}")
    # KLDs of usable types sit orders of magnitude below the budget: a log scale shows both.
    axis.set_yscale("symlog", linthresh=1e-6)
    axis.set_xlabel("file size (MB)")
    axis.set_ylabel("mean KL divergence vs baseline (log)")
    axis.set_title(f"{report.model}: size vs quality")
    axis.legend()
    figure.tight_layout()
    with staged_file(path) as partial:
        figure.savefig(partial, format="png")
    plt.close(figure)
