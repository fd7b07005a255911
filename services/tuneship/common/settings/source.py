"""Reading ``TuneshipEnv`` from an environment mapping, once, at the entry point.

- Each field is read from its variable; an empty value counts as unset (except where
  empty means something, such as ``TUNESHIP_METRICS_PORT``).
- A secret may instead come from ``<VAR>_FILE`` (how Kubernetes mounts Secrets): the
  file's text less one trailing newline. Setting both is an error.
- A bad value is one ``InvalidInput`` naming the variable, what it got (never a
  secret's value) and what is accepted: no pydantic traceback reaches a user.
- A ``TUNESHIP_*`` variable that no field knows is warned about, with close matches.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from tuneship.common.errors import InvalidInput
from tuneship.common.settings.model import (
    OTHER_VARIABLES,
    PREFIX,
    TuneshipEnv,
    field_extra,
    is_secret,
    variable,
)

log = logging.getLogger("tuneship.settings")

DEFAULT = "default"


@dataclass(frozen=True)
class LoadedEnv:
    """A process's settings and where each came from."""

    values: TuneshipEnv
    origins: dict[str, str] = field(default_factory=dict)
    """Field name -> ``env TUNESHIP_X`` or ``file /path (TUNESHIP_X_FILE)``; a field
    left out has its default."""
    unknown: tuple[str, ...] = ()
    """``TUNESHIP_*`` variables no setting knows (typos, most likely)."""

    def origin(self, name: str) -> str:
        return self.origins.get(name, DEFAULT)

    def warn_unknown(self) -> None:
        """Warn (logger ``tuneship.settings``, once per name) about ``unknown``."""
        for name in self.unknown:
            _warn_unknown(name)

    def secrets(self) -> list[str]:
        """The secret values that are set (for the log redactor); a list of tokens
        gives each token too, so that one token alone in a log line is masked."""
        found = []
        for name in TuneshipEnv.model_fields:
            value = getattr(self.values, name)
            if is_secret(name) and value is not None and value.get_secret_value():
                text = value.get_secret_value()
                found.append(text)
                found.extend(p.strip() for ln in text.splitlines() for p in ln.split(","))
        return [s for s in found if s]


class EnvironmentSource(PydanticBaseSettingsSource):
    """The settings source over one environment mapping (``_FILE`` secrets included);
    ``origins`` records where each value it returned came from."""

    def __init__(self, settings_cls: type[TuneshipEnv], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env
        self.origins: dict[str, str] = {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = variable(field_name)
        raw = self.env.get(name)
        path = self.env.get(f"{name}_FILE") if is_secret(field_name) else None
        if path:
            if raw:
                raise InvalidInput(
                    f"both {name} and {name}_FILE are set", where=name,
                    hint=f"set one: {name}_FILE (a mounted Secret) or {name}",
                )  # fmt: skip
            secret = read_secret_file(Path(path), f"{name}_FILE")
            return secret, f"file {path} ({name}_FILE)", False
        if raw is None or (raw.strip() == "" and not field_extra(field_name).get("keep_empty")):
            return None, DEFAULT, False
        return raw, f"env {name}", False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for field_name, field_info in self.settings_cls.model_fields.items():
            value, origin, _ = self.get_field_value(field_info, field_name)
            if origin != DEFAULT:
                data[field_name] = value
                self.origins[field_name] = origin
        return data


def read_secret_file(path: Path, where: str) -> str:
    """A secret's file as ``<VAR>_FILE`` gives it: its text less one trailing newline.
    Raises ``InvalidInput`` naming ``where`` when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidInput(f"cannot read {path}: {reason}", where=where,
                           hint="mount the Secret there or point the variable at the file"
                           ) from exc  # fmt: skip
    return text.removesuffix("\n").removesuffix("\r")


def load_env(env: Mapping[str, str], *, warn: bool = True) -> LoadedEnv:
    """The settings in ``env`` (the process environment, read by the entry point).

    Raises ``InvalidInput`` naming the first bad variable (the others on their own
    lines). With ``warn``, warns about unknown ``TUNESHIP_*`` names (an entry point
    that sets up logging first passes False and calls ``warn_unknown`` after)."""
    source = EnvironmentSource(TuneshipEnv, env)
    data = source()
    try:
        values = TuneshipEnv(**data)
    except ValidationError as exc:
        raise _invalid(exc, data, source.origins) from None
    loaded = LoadedEnv(values, source.origins, unknown_variables(env))
    if warn:
        loaded.warn_unknown()
    return loaded


def _invalid(exc: ValidationError, data: dict[str, Any], origins: dict[str, str]) -> InvalidInput:
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        if name not in TuneshipEnv.model_fields:
            problems.append(("environment", error["msg"]))
            continue
        where = variable(name) + ("_FILE" if origins.get(name, "").startswith("file") else "")
        cause = (error.get("ctx") or {}).get("error")
        detail = str(cause) if cause is not None else error["msg"]
        if is_secret(name):  # the parsers quote what they got; a secret is not repeated
            detail = detail.replace(repr(data.get(name)), "(the secret value)")
        problems.append((where, detail))
    (where, detail), others = problems[0], problems[1:]
    more = "".join(f"\n  {w}: {d}" for w, d in others)
    return InvalidInput(
        detail + more,
        where=where,
        hint="the settings reference in docs/services.md says what each variable accepts",
    )


def known_variables() -> set[str]:
    names = {variable(n) for n in TuneshipEnv.model_fields}
    names |= {f"{variable(n)}_FILE" for n in TuneshipEnv.model_fields if is_secret(n)}
    return names | set(OTHER_VARIABLES)


def unknown_variables(env: Mapping[str, str]) -> tuple[str, ...]:
    """``TUNESHIP_*`` names in ``env`` that no setting reads."""
    known = known_variables()
    return tuple(sorted(n for n in env if n.startswith(PREFIX) and n not in known))


def close_matches(name: str) -> list[str]:
    """Known variables that ``name`` may have been meant to be."""
    return difflib.get_close_matches(name, sorted(known_variables()), n=2, cutoff=0.85)


@functools.cache
def _warn_unknown(name: str) -> None:
    """Once per process and name: several readers of one environment warn once."""
    matches = close_matches(name)
    meant = f"; did you mean {' or '.join(matches)}?" if matches else ""
    log.warning("%s is not a tuneship setting and is ignored%s", name, meant)
