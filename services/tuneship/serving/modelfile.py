"""Stop tokens for a GGUF, and the Ollama Modelfile a person can ``ollama create`` from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput
from tuneship.common.gguf_meta import GgufInfo, read_gguf
from tuneship.serving.gotemplate import derive_shape, to_go_template

DEFAULT_NUM_CTX = 4096
"""Context given to the server unless the spec says otherwise (capped by the model's)."""

DEFAULT_MODEL_CONTEXT = 2048
"""The model's context when its GGUF header gives none."""


def read_servable_gguf(gguf: Path) -> GgufInfo:
    """``read_gguf``, refusing a GGUF without an eos token (``InvalidInput``): a server
    could not tell where an answer ends."""
    info = read_gguf(gguf)
    if not info.eos_token:
        raise InvalidInput(
            "the GGUF has no eos token (tokenizer.ggml.eos_token_id)",
            where=str(gguf),
            hint="re-export the model; without an end token the server cannot stop",
        )
    return info


def stop_tokens(info: GgufInfo) -> list[str]:
    """EOS, EOT and the special tokens that end an assistant turn in the chat template.

    Servers stop at EOG tokens they recognise; sending them as explicit ``stop``
    strings also covers servers (or older Ollama) that render a different template.
    """
    stops = info.end_tokens()
    if info.chat_template:
        try:
            shape = derive_shape(
                info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token
            )
        except InvalidInput:
            shape = None  # a template that is not linear still has its EOS/EOT
        if shape is not None:
            suffix = shape.assistant_suffix
            stops += sorted((t for t in info.special_tokens if t in suffix), key=suffix.index)
    return list(dict.fromkeys(stops))


def default_parameters(info: GgufInfo, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``stop`` (GGUF end tokens plus any given) and ``num_ctx``, then ``overrides``."""
    overrides = dict(overrides or {})
    extra = overrides.pop("stop", [])
    stops = stop_tokens(info) + ([extra] if isinstance(extra, str) else list(extra))
    return {
        "num_ctx": min(info.context_length or DEFAULT_MODEL_CONTEXT, DEFAULT_NUM_CTX),
        **overrides,
        "stop": list(dict.fromkeys(stops)),
    }


def _quote(value: str) -> str:
    if '"' not in value and "\n" not in value:
        return f'"{value}"'
    if '"""' in value:
        raise InvalidInput(f'cannot quote {value!r} in a Modelfile (it contains """)')
    return f'"""{value}"""'


def modelfile(
    gguf: Path,
    *,
    template_mode: str = "go",
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    from_path: str | None = None,
) -> str:
    """The Modelfile for ``gguf``: FROM, TEMPLATE (``template_mode="go"``), PARAMETER
    lines, SYSTEM and LICENSE. With ``template_mode="jinja"`` no TEMPLATE is written and
    Ollama >= 0.30 renders the GGUF's own template. ``InvalidInput`` when the template
    cannot be translated (the error says why and what to do instead)."""
    info = read_servable_gguf(gguf)
    lines = [f"FROM {from_path or './' + gguf.name}", ""]
    if template_mode == "go":
        if not info.chat_template:
            raise InvalidInput(
                "the GGUF has no chat template (tokenizer.chat_template)",
                where=str(gguf),
                hint="re-export with a template (spec template.family or template.path)",
            )
        go = to_go_template(info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token)
        lines += [f"# {w}" for w in go.warnings]
        lines += [f'TEMPLATE """{go.text}"""', ""]
    for key, value in default_parameters(info, parameters).items():
        for item in value if isinstance(value, list) else [value]:
            text = _quote(item) if isinstance(item, str) else str(item)
            lines.append(f"PARAMETER {key} {text}")
    if system:
        lines += ["", f"SYSTEM {_quote(system)}"]
    if info.license:
        lines += ["", f'LICENSE """{info.license}"""']
    return "\n".join(lines) + "\n"
