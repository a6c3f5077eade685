"""Reading docker-compose.yml the way Compose does, for tests on a machine without Docker.

Supports what our file uses: YAML merge keys, and `${VAR}`, `${VAR:-default}`, `${VAR:?error}`
interpolation from a .env-style file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, how, arg = match.groups()
        if env.get(name):
            return env[name]
        if how == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return _VARIABLE.sub(replace, value)


def load(compose_file: Path, env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load(compose_file.read_text())
    return interpolate(raw, env)
