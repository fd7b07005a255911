"""The settings as people read them: ``tuneship serve X --print-config`` and the
reference table in docs/services.md (generated here, so it cannot drift)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from tuneship.common.settings.model import EVERY, TuneshipEnv, field_extra, is_secret, variable
from tuneship.common.settings.source import LoadedEnv, close_matches
from tuneship.common.settings.values import Accepts

MASK = "********"


def shown(name: str, value: Any) -> str:
    """A value as ``--print-config`` prints it: secrets masked (a URL keeps all but its
    password), ``stage=value`` maps in their variable's form."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if name == "state_url":
            return mask_url_password(secret)
        return MASK if secret else ""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def mask_url_password(url: str) -> str:
    """``scheme://user:***@host/db`` for ``scheme://user:secret@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def used_by(name: str) -> list[str]:
    return list(field_extra(name)["used_by"])


def config_lines(loaded: LoadedEnv, component: str) -> list[str]:
    """``VAR=value  # origin`` for every setting ``component`` reads, in model order."""
    rows = []
    for name in TuneshipEnv.model_fields:
        if component not in used_by(name):
            continue
        value = shown(name, getattr(loaded.values, name))
        origin = loaded.origin(name)
        if origin == "default" and field_extra(name).get("shown_default"):
            origin = f"default: {field_extra(name)['shown_default'].replace('`', '')}"
        rows.append((f"{variable(name)}={value}", origin))
    width = max(len(left) for left, _ in rows)
    lines = [f"{left:<{width}}  # {origin}" for left, origin in rows]
    for name in loaded.unknown:
        matches = close_matches(name)
        meant = f" (did you mean {' or '.join(matches)}?)" if matches else ""
        lines.append(f"# {name}: not a tuneship setting, ignored{meant}")
    return lines


def accepts(name: str) -> str:
    """What a variable accepts, for the reference."""
    info = TuneshipEnv.model_fields[name]
    for item in info.metadata:
        if isinstance(item, Accepts):
            return item.text
    if is_secret(name):
        return f"secret; or `{variable(name)}_FILE`"
    text = str(info.annotation)
    return "path" if "Path" in text else "text"


def reference_table() -> str:
    """The markdown table of every setting (docs/services.md, "Settings reference")."""
    lines = ["| variable | accepts | default | read by | meaning |", "|---|---|---|---|---|"]
    for name, info in TuneshipEnv.model_fields.items():
        extra = field_extra(name)
        default = extra.get("shown_default") or (
            f"`{shown(name, info.default)}`" if shown(name, info.default) != "" else "(none)"
        )
        readers = used_by(name)
        who = "every process" if set(readers) == set(EVERY) else ", ".join(readers)
        lines.append(
            f"| `{variable(name)}` | {accepts(name)} | {default} | {who} | {info.description} |"
        )
    return "\n".join(lines) + "\n"
