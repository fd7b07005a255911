"""The serving stage: publish a GGUF as ``name:version``, smoke-test it, move ``latest``.

``publish`` reads the GGUF's end tokens and chat template, picks how the server will
render prompts (the GGUF's Jinja on Ollama >= 0.30 and on llama-server, a generated Go
TEMPLATE otherwise), publishes under a version tag, asks each smoke prompt and only
then points ``name:latest`` at the new version. A failed smoke test removes the new
version and leaves the previous ``latest`` where it was.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition, InvalidInput, Unavailable
from tuneship.common.events import EventSink, Log, Metrics, Progress
from tuneship.common.gguf_meta import GgufInfo
from tuneship.common.hashing import sha256_file
from tuneship.common.spec import PipelineSpec, ServeSpec
from tuneship.serving.backend import BackendHealth, ServingBackend, full_name
from tuneship.serving.gotemplate import to_go_template
from tuneship.serving.modelfile import default_parameters, read_servable_gguf

STAGE = "serve"


@dataclass(frozen=True)
class SmokeAnswer:
    """One smoke prompt's answer and whether it ended by itself in time."""

    prompt: str
    text: str
    done_reason: str | None
    tokens: int | None
    first_piece_s: float | None
    """Seconds from the question to the first piece of the answer."""
    since_publish_s: float | None
    """Seconds from the start of publishing to the first piece of this answer."""
    seconds: float
    passed: bool
    problem: str = ""


@dataclass(frozen=True)
class PublishResult:
    """What was published where, and the smoke test that let it become ``latest``."""

    name: str
    version: str
    model: str
    latest: str | None
    backend: str
    backend_version: str
    template_mode: str
    stop: list[str]
    parameters: dict[str, Any]
    smoke: list[SmokeAnswer] = field(default_factory=list)
    publish_to_first_token_s: float | None = None
    seconds: float = 0.0

    @property
    def smoke_passed(self) -> bool:
        return all(answer.passed for answer in self.smoke)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "smoke_passed": self.smoke_passed}


class SmokeTestFailed(FailedPrecondition):
    """The published model did not answer the smoke prompts properly; ``result`` has them."""

    def __init__(self, result: PublishResult) -> None:
        self.result = result
        bad = [a for a in result.smoke if not a.passed]
        lines = "\n".join(f"  {a.prompt!r}: {a.problem}" for a in bad)
        kept = f"; {result.name}:latest was left as it was" if result.latest is None else ""
        super().__init__(
            f"smoke test failed for {result.model} ({len(bad)} of {len(result.smoke)} "
            f"prompts){kept}:\n{lines}",
            where="serve.smoke_prompts",
            hint="an answer that runs to the token limit usually means a missing end-of-turn "
            "token in training or a template mismatch; `tuneship chat` the version to see",
        )


def publish(
    spec: PipelineSpec,
    gguf: Path,
    backend: ServingBackend,
    events: EventSink,
    *,
    version: str | None = None,
) -> PublishResult:
    """Publish ``gguf`` as the pipeline's model (``serve.name`` or ``metadata.name``)."""
    name = spec.serve.name or spec.metadata.name
    return publish_model(spec.serve, name, gguf, backend, events, version=version)


def publish_model(
    serve: ServeSpec,
    name: str,
    gguf: Path,
    backend: ServingBackend,
    events: EventSink,
    *,
    version: str | None = None,
) -> PublishResult:
    """Publish, smoke-test and tag ``latest``. Raises ``SmokeTestFailed`` (the new
    version is removed, ``latest`` untouched), ``InvalidInput`` for a template that
    cannot be served as asked, ``Unavailable`` when the backend is down."""
    start = time.monotonic()
    info = read_servable_gguf(gguf)
    health = _healthy(backend)
    mode = _template_mode(serve, backend.kind, health)
    template = _go_template(info, serve, events) if mode == "go" else None
    parameters = default_parameters(info, serve.parameters)
    version = version or (serve.tag if serve.tag != "latest" else sha256_file(gguf)[:12])
    model = full_name(name, version)
    events.emit(Log(STAGE, f"publishing {gguf.name} as {model} on {backend.kind} ({mode})"))
    backend.publish(
        gguf, name, version, template=template, system=serve.system, parameters=parameters
    )
    smoke = _smoke_test(serve, model, backend, events, start)
    result = PublishResult(
        name=name, version=version, model=model, latest=None, backend=backend.kind,
        backend_version=health.version, template_mode=mode, stop=parameters["stop"],
        parameters=parameters, smoke=smoke,
        publish_to_first_token_s=smoke[0].since_publish_s if smoke else None,
        seconds=time.monotonic() - start,
    )  # fmt: skip
    return _finish(result, backend, events)


def _finish(result: PublishResult, backend: ServingBackend, events: EventSink) -> PublishResult:
    events.emit(Metrics(STAGE, _metrics(result)))
    if not result.smoke_passed:
        backend.delete(result.model)
        events.emit(Log(STAGE, f"smoke test failed; removed {result.model}", level="error"))
        raise SmokeTestFailed(result)
    latest = full_name(result.name, "latest")
    if result.model != latest:
        backend.copy(result.model, latest)
    events.emit(Log(STAGE, f"{latest} now points at {result.model}"))
    return PublishResult(**{**result.__dict__, "latest": latest})


def _metrics(result: PublishResult) -> dict[str, float]:
    values = {"smoke_passed": float(result.smoke_passed), "publish_s": result.seconds}
    if result.publish_to_first_token_s is not None:
        values["publish_to_first_token_s"] = result.publish_to_first_token_s
    return values


def _healthy(backend: ServingBackend) -> BackendHealth:
    health = backend.health()
    if not health.ok:
        error = FailedPrecondition if health.version else Unavailable
        raise error(f"{backend.kind} backend is not usable: {health.detail}")
    return health


def _template_mode(serve: ServeSpec, kind: str, health: BackendHealth) -> str:
    if serve.template_mode == "go" and kind == "llama-server":
        raise InvalidInput(
            "llama-server renders the GGUF's Jinja template; a Go template applies to Ollama",
            where="serve.template_mode",
            hint="use template_mode: auto or jinja with the llama-server backend",
        )
    if serve.template_mode == "jinja" and not health.renders_jinja:
        raise InvalidInput(
            f"{kind} {health.version} does not render the GGUF's Jinja template "
            "(it would fall back to {{ .Prompt }})",
            where="serve.template_mode",
            hint="use template_mode: auto or go, or upgrade Ollama to 0.30 or later",
        )
    if serve.template_mode == "auto":
        return "jinja" if health.renders_jinja else "go"
    return serve.template_mode


def _go_template(info: GgufInfo, serve: ServeSpec, events: EventSink) -> str:
    if not info.chat_template:
        raise InvalidInput(
            "the GGUF has no chat template to translate (tokenizer.chat_template)",
            where=str(info.path),
            hint="re-export with template.family or template.path set in the spec",
        )
    go = to_go_template(info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token)
    for warning in go.warnings:
        events.emit(Log(STAGE, f"Go template: {warning}", level="warning"))
    if serve.system and go.shape.system_prefix is None:
        raise InvalidInput(
            "the chat template has no system role, so serve.system would be dropped",
            where="serve.system",
            hint="remove serve.system, or use a template family with a system role",
        )
    return go.text


def _smoke_test(
    serve: ServeSpec, model: str, backend: ServingBackend, events: EventSink, start: float
) -> list[SmokeAnswer]:
    answers = []
    for index, prompt in enumerate(serve.smoke_prompts):
        asked = time.monotonic()
        stream = backend.chat(
            model, [{"role": "user", "content": prompt}],
            num_predict=serve.smoke_max_tokens, temperature=0.0, seed=0,
        )  # fmt: skip
        text = stream.text()
        problem = ""
        if not text.strip():
            problem = "empty answer"
        elif stream.done_reason != "stop":
            problem = (
                f"did not stop by itself within {serve.smoke_max_tokens} tokens "
                f"(done_reason {stream.done_reason!r})"
            )
        first = stream.first_piece_s
        since_publish = None if first is None else asked - start + first
        answers.append(
            SmokeAnswer(
                prompt,
                text,
                stream.done_reason,
                stream.tokens,
                first,
                since_publish,
                time.monotonic() - asked,
                not problem,
                problem,
            )
        )
        events.emit(Progress(STAGE, index + 1, len(serve.smoke_prompts), unit="prompts"))
    return answers
