"""The dashboard service's settings, read once from the environment (docs/settings.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from services.common import settings as env_
from services.common.settings import REPO_ROOT, ConfigError

# The chart library comes from npm (services/dashboard/web/package-lock.json pins it) and is
# served by the dashboard itself: the page needs no CDN.
CHART_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
DEFAULT_ASSETS = REPO_ROOT / "services" / "dashboard" / "web" / "node_modules" / "uplot" / "dist"


@dataclass(frozen=True)
class Settings:
    broker: env_.BrokerSettings
    contracts_dir: Path
    host: str
    port: int
    jaeger_ui_url: str
    state_path: Path
    push_s: float  # how often the page gets what changed: updates are batched, never per row
    assets_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        host, port = address(env, "DASHBOARD_ADDR", "127.0.0.1:8050")
        return cls(
            broker=env_.BrokerSettings.from_env(env),
            contracts_dir=env_.contracts_dir(env),
            host=host,
            port=port,
            jaeger_ui_url=http_url(env, "JAEGER_UI_URL", "http://localhost:16686"),
            state_path=env_.writable_file(env, "DASHBOARD_STATE_PATH", "logs/dashboard_state.json"),
            push_s=env_.number(env, "DASHBOARD_PUSH_S", 0.5, minimum=0.05),
            assets_dir=assets(env, "DASHBOARD_ASSETS_DIR", DEFAULT_ASSETS),  # last: needs npm
        )


def address(env: Mapping[str, str], name: str, default: str) -> tuple[str, int]:
    raw = env_.text(env, name, default)
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be host:port (e.g. 127.0.0.1:8050), got {raw!r}")
    return host, int(port)


def http_url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env_.text(env, name, default).rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL like {default}, got {raw!r}")
    return raw


def assets(env: Mapping[str, str], name: str, default: Path) -> Path:
    folder = env_.path(env, name, str(default))
    missing = [f for f in CHART_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"{name}: {', '.join(missing)} not in {folder}; run ./scripts/setup (it runs npm ci "
            f"in services/dashboard/web) or point {name} at uPlot's dist folder"
        )
    return folder
