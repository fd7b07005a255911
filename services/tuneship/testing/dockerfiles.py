"""A small Dockerfile reader for tests: stages, their instructions and the image each
``FROM`` names, with the global ``ARG`` defaults substituted.

It reads the subset of the syntax tuneship's Dockerfiles use (line continuations,
comments, global and stage ``ARG``s, exec-form ``ENTRYPOINT``/``CMD``), enough to check
what users rely on without a Docker engine::

    parsed = read_dockerfile(Path("Dockerfile.convert"))
    final = parsed.final
    assert final.user() == "65532:65532"
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword (upper case), its text after the keyword, its line."""

    keyword: str
    text: str
    line: int

    def flags(self) -> dict[str, str]:
        """``--from=builder``-style flags at the start of a COPY/ADD/RUN."""
        found = {}
        for word in self.text.split():
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            found[name] = value
        return found

    def words(self) -> list[str]:
        """The arguments after any flags, split as a shell would (JSON arrays decoded)."""
        text = self.text.strip()
        if text.startswith("["):
            return [str(w) for w in json.loads(text)]
        words = shlex.split(text)
        while words and words[0].startswith("--"):
            words.pop(0)
        return words


@dataclass
class Stage:
    """One build stage: the image it starts from (variables substituted), its name."""

    image: str
    name: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def runs(self) -> list[str]:
        """The text of every RUN, continuation lines joined."""
        return [i.text for i in self.all("RUN")]

    def user(self) -> str | None:
        """The last USER of the stage (the one the container runs as), or None."""
        users = self.all("USER")
        return users[-1].text.strip() if users else None

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, later ones winning (``KEY=value`` forms)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.text):
                key, sep, value = word.partition("=")
                if sep:
                    values[key] = value
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for word in shlex.split(instruction.text):
                key, sep, value = word.partition("=")
                if sep:
                    values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str] | None:
        """The JSON array of the last ENTRYPOINT/CMD, or None when absent."""
        found = self.all(keyword)
        if not found:
            return None
        return [str(w) for w in json.loads(found[-1].text)]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: the global ARG defaults and the stages in order."""

    path: Path
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text) with continuations joined, comments dropped."""
    joined: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        joined.append((start, " ".join(pending)))
    return joined


def substitute(text: str, values: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced by ``values`` (unknown names left as they are)."""
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def read_dockerfile(path: Path) -> Dockerfile:
    """Parse ``path``; ValueError when an instruction comes before the first FROM."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(substitute(words[0], args), name, line))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}:{line}: {keyword} before the first FROM")
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, line))
    return Dockerfile(path, args, stages)
