"""Translate a "linear" Jinja chat template into an Ollama Go TEMPLATE.

A linear template renders every message as ``prefix(role) + content + suffix(role)``,
with a fixed preamble, an optional system block (which may be folded into the first
user turn, as Llama-2 and Gemma do) and a generation prompt. The pieces are found by
rendering the Jinja template with placeholder messages, never looked up by model
name; then the linear form is checked against the Jinja rendering of 1 to 6 turns,
with and without a system prompt, and a template whose output the form cannot
reproduce is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tuneship.common.chat import has_training_tags
from tuneship.common.errors import InvalidInput
from tuneship.serving.jinja_render import TemplateRaised, render_jinja

Message = dict[str, str]

_U1, _A1, _U2, _S = (
    "\u00abuser-1\u00bb",
    "\u00abassistant-1\u00bb",
    "\u00abuser-2\u00bb",
    "\u00absys\u00bb",
)
_WHERE = "tokenizer.chat_template"
_HINT = (
    "publish with serve.template_mode: jinja (Ollama >= 0.30 renders the GGUF's own template) "
    "or write the TEMPLATE by hand in a Modelfile"
)


@dataclass(frozen=True)
class TurnShape:
    """The literal text around each message in a linear template."""

    preamble: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    system_prefix: str | None
    """Text before the system content; None when the template has no system role."""
    system_to_user: str = ""
    """Text between the system content and the first user's content."""


@dataclass(frozen=True)
class GoTemplate:
    """An Ollama Go TEMPLATE equivalent to a Jinja chat template."""

    text: str
    shape: TurnShape
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def end_of_turn_tokens(self, special_tokens: frozenset[str]) -> list[str]:
        """The special tokens that close an assistant turn (they make good stop strings)."""
        suffix = self.shape.assistant_suffix
        return sorted((t for t in special_tokens if t and t in suffix), key=suffix.index)


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(
        f"cannot translate the chat template to an Ollama Go template: {message}",
        where=_WHERE,
        hint=_HINT,
    )


def _split(text: str, marker: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise _refuse(f"a message's content does not appear exactly once in {text!r}")
    before, after = text.split(marker)
    return before, after


def _drop_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise _refuse(f"{what} differs between turns ({text!r} does not start with {prefix!r})")
    return text[len(prefix) :]


def derive_shape(jinja: str, *, bos_token: str = "", eos_token: str = "") -> TurnShape:
    """Find the per-role prefixes and suffixes by rendering placeholder messages."""

    def render(messages: list[Message], generation: bool) -> str:
        try:
            return render_jinja(
                jinja, messages, add_generation_prompt=generation,
                bos_token=bos_token, eos_token=eos_token,
            )  # fmt: skip
        except TemplateRaised as exc:
            raise _refuse(f"it refuses a plain user/assistant conversation: {exc}") from exc

    user1, asst1, user2 = _user(_U1), _assistant(_A1), _user(_U2)
    one = render([user1], False)
    before_user, user_suffix = _split(one, _U1)
    generation = _drop_prefix(render([user1], True), one, "the text before the generation prompt")
    _, assistant_suffix = _split(render([user1, asst1], False), _A1)
    head, rest = _split(render([user1, asst1, user2], False), _U1)
    if head != before_user:
        raise _refuse("the first user turn renders differently once more turns follow")
    rest = _drop_prefix(rest, user_suffix, "the user suffix")
    assistant_prefix, rest = _split(rest, _A1)
    rest = _drop_prefix(rest, assistant_suffix, "the assistant suffix")
    user_prefix, tail = _split(rest, _U2)
    if tail != user_suffix or not before_user.endswith(user_prefix):
        raise _refuse("the user turns do not share one prefix and suffix")
    preamble = before_user[: len(before_user) - len(user_prefix)]
    system_prefix, system_to_user = _system_pieces(
        jinja, preamble, user_suffix, bos_token, eos_token
    )
    return TurnShape(
        preamble, user_prefix, user_suffix, assistant_prefix, assistant_suffix, generation,
        system_prefix, system_to_user,
    )  # fmt: skip


def _system_pieces(
    jinja: str, preamble: str, user_suffix: str, bos: str, eos: str
) -> tuple[str | None, str]:
    try:
        text = render_jinja(
            jinja, [_system(_S), _user(_U1)], add_generation_prompt=False,
            bos_token=bos, eos_token=eos,
        )  # fmt: skip
    except TemplateRaised:
        return None, ""  # the template has no system role (Gemma 1 style)
    if _S not in text:
        return None, ""
    body = _drop_prefix(text, preamble, "the preamble")
    system_prefix, rest = _split(body, _S)
    system_to_user, tail = _split(rest, _U1)
    if tail != user_suffix:
        raise _refuse("the first user turn ends differently when a system prompt is present")
    return system_prefix, system_to_user


def render_linear(shape: TurnShape, messages: list[Message]) -> str:
    """What the translated Go template renders for ``messages`` (the same rules in Python)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out, first, generate = [shape.preamble], True, True
    for message in messages:
        if message["role"] == "user":
            if first and system and shape.system_prefix is not None:
                out.append(shape.system_prefix + system + shape.system_to_user)
            else:
                out.append(shape.user_prefix)
            out.append(message["content"] + shape.user_suffix)
            first, generate = False, True
        elif message["role"] == "assistant":
            out.append(shape.assistant_prefix + message["content"] + shape.assistant_suffix)
            generate = False
    if generate:
        out.append(shape.generation_prompt)
    return "".join(out)


def _go_text(text: str) -> str:
    """Literal text for a Go template; text holding ``{{`` goes in a string action."""
    return f"{{{{ {json.dumps(text, ensure_ascii=False)} }}}}" if "{{" in text else text


def go_template_text(shape: TurnShape) -> str:
    """The Go TEMPLATE for ``shape`` (Ollama's ``.System``/``.Messages`` conventions).

    No ``{{-``/``-}}`` trim markers: the whitespace around each message is part of the
    template's contract and must come through byte for byte.
    """
    t = _go_text
    if shape.system_prefix is not None:
        opening = (
            f"{{{{ if and $first $.System }}}}{t(shape.system_prefix)}{{{{ $.System }}}}"
            f"{t(shape.system_to_user)}{{{{ else }}}}{t(shape.user_prefix)}{{{{ end }}}}"
        )
    else:
        opening = t(shape.user_prefix)
    return (
        "{{ $first := true }}{{ $generate := true }}"
        f"{t(shape.preamble)}"
        '{{ range .Messages }}{{ if eq .Role "user" }}'
        f"{opening}{{{{ $first = false }}}}{{{{ .Content }}}}{t(shape.user_suffix)}"
        "{{ $generate = true }}"
        '{{ else if eq .Role "assistant" }}'
        f"{t(shape.assistant_prefix)}{{{{ .Content }}}}{t(shape.assistant_suffix)}"
        "{{ $generate = false }}{{ end }}{{ end }}"
        f"{{{{ if $generate }}}}{t(shape.generation_prompt)}{{{{ end }}}}"
    )


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def _system(text: str) -> Message:
    return {"role": "system", "content": text}


def sample_conversations(max_turns: int = 6) -> list[tuple[list[Message], bool]]:
    """Conversations of 1..max_turns turns, with and without a system prompt, ending on a
    user message (with the generation prompt) or on an assistant answer (without)."""
    cases: list[tuple[list[Message], bool]] = []
    for turns in range(1, max_turns + 1):
        for with_system in (False, True):
            messages = [_system(f"You are helper number {turns}.")] if with_system else []
            for i in range(turns):
                messages.append(_user(f"Question {i + 1}: what is {i} plus {turns}?"))
                messages.append(_assistant(f"Answer {i + 1}: it is {i + turns}."))
            cases.append((messages[:-1], True))
            cases.append((messages, False))
    return cases


def _first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _verify(jinja: str, shape: TurnShape, bos: str, eos: str) -> None:
    for messages, generation in sample_conversations():
        has_system = messages[0]["role"] == "system"
        if has_system and shape.system_prefix is None:
            continue
        try:
            expected = render_jinja(
                jinja, messages, add_generation_prompt=generation, bos_token=bos, eos_token=eos
            )
        except TemplateRaised as exc:
            raise _refuse(f"it refuses a {len(messages)}-message conversation: {exc}") from exc
        got = render_linear(shape, messages)
        if got != expected:
            at = _first_difference(got, expected)
            raise _refuse(
                f"for {len(messages)} messages (system: {has_system}) the output depends on "
                f"content or position; at character {at} Jinja renders "
                f"{expected[at : at + 40]!r} but a per-role form gives {got[at : at + 40]!r}"
            )


def to_go_template(jinja: str, *, bos_token: str = "", eos_token: str = "") -> GoTemplate:
    """Translate ``jinja`` to an Ollama Go template, or raise ``InvalidInput`` saying why not.

    ``bos_token``/``eos_token`` are the texts the Jinja template sees (from the GGUF).
    """
    if has_training_tags(jinja):
        raise _refuse("it still has {% generation %} training markers; export strips them")
    shape = derive_shape(jinja, bos_token=bos_token, eos_token=eos_token)
    _verify(jinja, shape, bos_token, eos_token)
    warnings: list[str] = []
    padded = render_jinja(
        jinja, [_user(f"\t{_U1}\t")], add_generation_prompt=False,
        bos_token=bos_token, eos_token=eos_token,
    )  # fmt: skip
    if f"\t{_U1}\t" not in padded:
        warnings.append(
            "the Jinja template trims message content and Go templates cannot: the two agree "
            "for content without leading or trailing whitespace"
        )
    if shape.system_prefix is None:
        warnings.append("the template has no system role: system prompts are dropped")
    text = go_template_text(shape)
    if '"""' in text:
        raise _refuse('it contains """, which a Modelfile TEMPLATE cannot quote')
    return GoTemplate(text, shape, tuple(warnings))
