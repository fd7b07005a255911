"""Syntax check of Go ``text/template`` source, as strict as Go's parser on structure.

The Ollama test server uses it to answer 400 to a TEMPLATE that Ollama could not
parse: unclosed actions, unterminated strings or comments, an ``else`` or ``end``
without a block, a block without ``end``, an empty action or an ``if``/``range``/
``with`` without a pipeline. Function names are not checked (Ollama parses with
``SkipFuncCheck``).
"""

from __future__ import annotations

_BLOCKS = {"if", "range", "with", "block", "define"}
_NEEDS_PIPELINE = {"if", "range", "with"}


def _action_end(source: str, start: int) -> int:
    """Index of the ``}}`` closing the action whose body starts at ``start``."""
    i = start
    while i < len(source):
        if source.startswith("}}", i):
            return i
        ch = source[i]
        if ch in "\"'`":
            close = source.find(ch, i + 1) if ch == "`" else _quoted_end(source, i, ch)
            if close < 0:
                raise ValueError(f"unterminated quoted string at offset {i}")
            i = close + 1
            continue
        if source.startswith("/*", i):
            close = source.find("*/", i + 2)
            if close < 0:
                raise ValueError(f"unclosed comment at offset {i}")
            i = close + 2
            continue
        i += 1
    raise ValueError(f"unclosed action at offset {start - 2}")


def _quoted_end(source: str, start: int, quote: str) -> int:
    i = start + 1
    while i < len(source) and source[i] != "\n":
        if source[i] == "\\":
            i += 2
            continue
        if source[i] == quote:
            return i
        i += 1
    return -1


def check_go_template(source: str) -> None:
    """Raise ``ValueError`` (with Go's wording where it has one) if ``source`` won't parse."""
    stack: list[str] = []
    i = 0
    while True:
        open_at = source.find("{{", i)
        if open_at < 0:
            break
        body_start = open_at + 2
        close = _action_end(source, body_start)
        body = source[body_start:close].strip()
        body = body[1:] if body.startswith("-") else body
        body = body[:-1] if body.endswith("-") else body
        _check_action(body.strip(), stack, open_at)
        i = close + 2
    if stack:
        raise ValueError(f"unexpected EOF: {{{{{stack[-1]}}}}} has no {{{{end}}}}")


def _check_action(body: str, stack: list[str], at: int) -> None:
    if body.startswith("/*"):
        if not body.endswith("*/"):
            raise ValueError(f"comment ends before closing delimiter at offset {at}")
        return
    if not body:
        raise ValueError(f"missing value for command at offset {at}")
    word, _, rest = body.partition(" ")
    if word in _BLOCKS:
        if word in _NEEDS_PIPELINE and not rest.strip():
            raise ValueError(f"missing value for {word} at offset {at}")
        stack.append(word)
    elif word == "else":
        if not stack or stack[-1] not in _NEEDS_PIPELINE:
            raise ValueError(f"unexpected {{{{else}}}} at offset {at}")
        follow = rest.split()[:1]
        if follow and follow[0] in ("if", "with") and len(rest.split()) < 2:
            raise ValueError(f"missing value for else {follow[0]} at offset {at}")
    elif word == "end":
        if rest.strip():
            raise ValueError(f"unexpected {rest.strip()!r} in end at offset {at}")
        if not stack:
            raise ValueError(f"unexpected {{{{end}}}} at offset {at}")
        stack.pop()
