"""Pipelines side by side: a batch (by label) or chosen ids — their hyperparameters,
final losses and quality per quant type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tuneship.client import PipelineClient, PipelineInfo
from tuneship.common.errors import InvalidInput
from tuneship.console import views
from tuneship.console.pages import call, render
from tuneship.console.state import STATE_KEY

MAX_COMPARED = 20


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a name and each pipeline's value, as shown."""

    name: str
    values: list[str]

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


def flatten(section: Any, prefix: str) -> dict[str, str]:
    """``{"lora": {"r": 8}}`` under ``train`` → ``{"train.lora.r": "8"}``."""
    if not isinstance(section, dict):
        return {prefix: json.dumps(section) if not isinstance(section, str) else section}
    flat: dict[str, str] = {}
    for key, value in section.items():
        flat.update(flatten(value, f"{prefix}.{key}"))
    return flat


def hyperparameters(specs: list[dict[str, Any]]) -> list[Row]:
    """The ``train`` and ``export`` fields of each spec; the ones that differ first."""
    flats = [{**flatten(s.get("train", {}), "train"), **flatten(s.get("export", {}), "export")}
             for s in specs]  # fmt: skip
    names = sorted({name for flat in flats for name in flat})
    rows = [Row(name, [flat.get(name, "-") for flat in flats]) for name in names]
    return sorted(rows, key=lambda row: not row.differs)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def results(pipelines: list[PipelineInfo]) -> list[Row]:
    """Final and eval loss, then KLD and perplexity of each quant type (the recommended
    one marked)."""
    trains = [next((s.summary for s in p.stages if s.name == "train"), {}) for p in pipelines]
    rows = [Row("final loss", [_number(t.get("final_loss")) for t in trains]),
            Row("eval loss", [_number(t.get("eval_loss")) for t in trains])]  # fmt: skip
    reports = [views.quality_report(p) for p in pipelines]
    types = sorted({r.quant_type for found, _ in reports for r in found})
    for quant in types:
        cells = []
        for found, _ in reports:
            row = next((r for r in found if r.quant_type == quant), None)
            cells.append("-" if row is None else f"KLD {row.kld_mean:.4f}, ppl {row.perplexity:.3f}"
                         + (" (recommended)" if row.recommended else ""))  # fmt: skip
        rows.append(Row(quant, cells))
    rows.append(Row("recommended", [recommended or "-" for _, recommended in reports]))
    return rows


def _chosen(client: PipelineClient, ids: list[str], labels: dict[str, str]
            ) -> tuple[list[PipelineInfo], list[dict[str, Any]]]:  # fmt: skip
    if ids:
        pipelines = [client.get(i) for i in ids[:MAX_COMPARED]]
    else:
        pipelines, _ = client.list(page_size=MAX_COMPARED, labels=labels)
        pipelines.reverse()  # in the order they were submitted
    return pipelines, [json.loads(client.get_spec(p.id) or "{}") for p in pipelines]


async def compare_page(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    ids = [i for i in request.query.get("ids", "").replace(",", " ").split() if i]
    label_text = request.query.get("labels", "")
    try:
        labels = views.parse_labels(label_text)
    except InvalidInput as exc:
        labels, problem = {}, exc.message
    else:
        problem = "" if ids or labels else "Name a batch (labels) or pipeline ids to compare."
    pipelines: list[PipelineInfo] = []
    specs: list[dict[str, Any]] = []
    if not problem:
        pipelines, specs = await call(request, lambda c: _chosen(c, ids, labels))
    return render(state, request, "compare.html", pipelines=pipelines, problem=problem,
                  labels=label_text, ids=" ".join(ids), results=results(pipelines),
                  settings=hyperparameters(specs))  # fmt: skip


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/compare", compare_page)
