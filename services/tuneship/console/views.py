"""What the pages show, worked out from the controller's answers (no HTTP here)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tuneship.client import ArtifactInfo, PipelineClient, PipelineInfo, StageInfo, WatchEvent
from tuneship.common.errors import InvalidInput, TuneshipError
from tuneship.common.spec import PipelineSpec, SpecError, parse_spec
from tuneship.common.units import human_size

PHASES = ("pending", "running", "succeeded", "failed", "cancelled")
ENDED = ("succeeded", "failed", "cancelled")
BATCH_LABEL = "batch"
"""The label that groups pipelines on the list page (``metadata.labels.batch``)."""
SPEC_SOURCE = "spec"
_WHERE_LINE = re.compile(rf"^{SPEC_SOURCE}:(\d+)(?::\s*(.*))?$")


def refused(exc: TuneshipError) -> bool:
    """Whether the controller refused the token (rather than the request)."""
    return exc.where in ("UNAUTHENTICATED", "PERMISSION_DENIED")


def parse_labels(text: str) -> dict[str, str]:
    """``"batch=b1, team=nlp"`` → ``{"batch": "b1", "team": "nlp"}``.

    Raises ``InvalidInput`` for a part without ``=`` or with an empty key."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{part!r} is not key=value", where="labels",
                               hint="e.g. batch=lr-sweep, several separated by commas")  # fmt: skip
        labels[key.strip()] = value.strip()
    return labels


def matches(info: PipelineInfo, query: str) -> bool:
    """Whether a search (any part of the name or id, any case) finds ``info``."""
    needle = query.strip().lower()
    return not needle or needle in info.name.lower() or needle in info.id.lower()


@dataclass(frozen=True)
class Group:
    """Pipelines of one batch (``label`` "" for those without one)."""

    label: str
    pipelines: list[PipelineInfo]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for info in self.pipelines:
            found[info.phase] = found.get(info.phase, 0) + 1
        return found


def by_batch(pipelines: Iterable[PipelineInfo]) -> list[Group]:
    """Groups by the ``batch`` label, in the order each batch first appears; the
    pipelines without one come last."""
    groups: dict[str, list[PipelineInfo]] = {}
    for info in pipelines:
        groups.setdefault(info.labels.get(BATCH_LABEL, ""), []).append(info)
    ordered = sorted(groups.items(), key=lambda item: item[0] == "")
    return [Group(label, items) for label, items in ordered]


def current_stage(info: PipelineInfo) -> str:
    """The first stage that has not succeeded, as people read it, or "-"."""
    for stage in info.stages:
        if stage.phase != "succeeded":
            return f"{stage.name} ({stage.shown_phase})"
    return "-"


def duration(stage: StageInfo, now: float | None = None) -> str:
    """How long a stage ran (so far, when it still runs): ``"4.2 s"``, ``"3 min 5 s"``."""
    if not stage.started:
        return "-"
    end = stage.finished or (now if now is not None else time.time())
    return human_seconds(max(end - stage.started, 0.0))


def human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) if stamp else "-"


@dataclass(frozen=True)
class QualityRow:
    quant_type: str
    size_mb: float
    bits_per_weight: float
    perplexity: float
    kld_mean: float
    same_top_p: float
    tokens_per_s: float
    verified: bool
    baseline: bool
    recommended: bool


def quality_report(info: PipelineInfo) -> tuple[list[QualityRow], str]:
    """The export's quality rows and its recommended type, from the export stage's
    summary (``report``: its rows as JSON); ([], "") before the export succeeded."""
    export = next((s for s in info.stages if s.name == "export"), None)
    if export is None or not export.summary:
        return [], ""
    recommended = str(export.summary.get("recommended") or "")
    try:
        rows = json.loads(str(export.summary.get("report") or "[]"))
    except ValueError:
        rows = []
    return [
        QualityRow(
            str(r.get("quant_type", "?")), float(r.get("size_bytes", 0)) / 1e6,
            float(r.get("bits_per_weight", 0)), float(r.get("perplexity", 0)),
            float(r.get("kld_mean", 0)), float(r.get("same_top_p", 0)),
            float(r.get("generation_tokens_per_s", 0)), bool(r.get("verified")),
            bool(r.get("baseline")), r.get("quant_type") == recommended,
        )
        for r in rows if isinstance(r, dict)
    ], recommended  # fmt: skip


def held_out_loss(info: PipelineInfo) -> float | None:
    """The eval loss the training measured on the held-out split after its last step
    (its summary's ``eval_loss``); None without an eval split or before it is known."""
    train = next((s for s in info.stages if s.name == "train"), None)
    value = train.summary.get("eval_loss") if train is not None else None
    return float(value) if isinstance(value, int | float) else None


def loss_points(events: Iterable[WatchEvent]) -> dict[str, list[tuple[float, float]]]:
    """``{"loss": [(step, value), ...], "eval_loss": [...]}`` from the training's
    metrics events (an event without a step counts as the next one)."""
    curves: dict[str, list[tuple[float, float]]] = {"loss": [], "eval_loss": []}
    for event in events:
        if event.kind != "metrics" or event.stage != "train":
            continue
        for name, points in curves.items():
            if name in event.data:
                step = event.step if event.step else (points[-1][0] + 1 if points else 1)
                points.append((float(step), float(event.data[name])))
    return curves


@dataclass(frozen=True)
class SpecLine:
    number: int
    text: str
    problems: list[str]


@dataclass(frozen=True)
class SpecCheck:
    """A pasted spec checked as the controller's Submit checks it."""

    spec: PipelineSpec | None
    lines: list[SpecLine]
    general: list[str]
    """Problems without a line (an empty spec, a problem of the whole file)."""

    @property
    def ok(self) -> bool:
        return self.spec is not None


def check_spec(text: str) -> SpecCheck:
    """Parse and validate ``text`` (``parse_spec``, as Submit does); each problem is put
    on the line it names."""
    problems: list[tuple[str, str]] = []
    spec = None
    try:
        spec = parse_spec(text, source=SPEC_SOURCE)
    except SpecError as exc:
        problems = list(exc.problems)
    except TuneshipError as exc:
        problems = [(exc.where or SPEC_SOURCE, exc.message)]
    return spec_lines(text, problems, spec)


def spec_lines(
    text: str, problems: list[tuple[str, str]], spec: PipelineSpec | None = None
) -> SpecCheck:
    """``text``'s lines, each with the problems (``"spec:LINE: field"``, message) that
    name it; problems that name no line of it are ``general``."""
    numbered = text.splitlines() or [""]
    found: dict[int, list[str]] = {}
    general: list[str] = []
    for where, message in problems:
        match = _WHERE_LINE.match(where)
        line = int(match.group(1)) if match else 0
        field = (match.group(2) or "") if match else where
        shown = f"{field}: {message}" if field and field != SPEC_SOURCE else message
        if 1 <= line <= len(numbered):
            found.setdefault(line, []).append(shown)
        else:
            general.append(shown)
    lines = [SpecLine(i, t, found.get(i, [])) for i, t in enumerate(numbered, start=1)]
    return SpecCheck(spec, lines, general)


_CONTROLLER_PROBLEM = re.compile(rf"^\s+({SPEC_SOURCE}:\d+: [^:]+): (.*)$")


def controller_problems(message: str) -> list[tuple[str, str]]:
    """The (where, message) problems in the text of the controller's ``SpecError``
    (its lines ``  spec:LINE: field: message``); [] when it names none."""
    found = []
    for line in message.splitlines():
        match = _CONTROLLER_PROBLEM.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def event_record(event: WatchEvent) -> dict[str, Any]:
    """What the live view gets of one event (server-sent, as JSON)."""
    return {"seq": event.seq, "phase": event.phase, "stage": event.stage, "kind": event.kind,
            "text": event.text, "step": event.step}  # fmt: skip


@dataclass(frozen=True)
class FileRow:
    """One committed file as the pipeline page lists it."""

    name: str
    size: str
    sha256: str
    url: str


@dataclass(frozen=True)
class FileGroup:
    """The files of one stage, with their total size."""

    stage: str
    rows: list[FileRow]
    total: str


@dataclass(frozen=True)
class Listing:
    """The files by stage, or why there are none to show (``reason``)."""

    groups: list[FileGroup]
    total: str
    reason: str = ""
    hint: str = ""

    @property
    def count(self) -> int:
        return sum(len(g.rows) for g in self.groups)


def file_url(pipeline_id: str, found: ArtifactInfo) -> str:
    parts = (pipeline_id, found.stage, found.output, found.path)
    return "/pipelines/{}/files/{}/{}/{}".format(*(quote(p, safe="/") for p in parts))


def file_listing(client: PipelineClient, pipeline_id: str) -> Listing:
    """What the page shows of the pipeline's files; a controller that cannot list them
    (no store of its own) is a reason, not an error page."""
    try:
        files = client.artifacts(pipeline_id)
    except TuneshipError as exc:
        if refused(exc):
            raise
        return Listing([], "", f"The controller cannot list them: {exc.message}", exc.hint or "")
    stages: dict[str, list[ArtifactInfo]] = {}
    for found in files:
        stages.setdefault(found.stage, []).append(found)
    groups = [
        FileGroup(stage, [FileRow(f.name, human_size(f.size), f.sha256, file_url(pipeline_id, f))
                          for f in found], human_size(sum(f.size for f in found)))
        for stage, found in stages.items()
    ]  # fmt: skip
    return Listing(groups, human_size(sum(f.size for f in files)))
