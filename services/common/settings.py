"""Reading settings from the environment.

Every setting is an environment variable, parsed once at start-up into a frozen object. A bad value
raises `ConfigError` naming the variable, so a misconfiguration stops the service before it touches
the broker. docs/settings.md lists every variable these helpers read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


def text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value


def number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum:g}, got {raw!r}")
    return value


def integer(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def path(env: Mapping[str, str], name: str, default: str) -> Path:
    """A file path; relative paths are taken from the current directory, like any CLI tool."""
    return Path(text(env, name, default)).expanduser().absolute()


def writable_file(env: Mapping[str, str], name: str, default: str) -> Path:
    """A file the service will create or append to; its folder is created if needed."""
    target = path(env, name, default)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot create folder {target.parent}: {exc.strerror}") from None
    if not os.access(target.parent, os.W_OK):
        raise ConfigError(f"{name}: folder {target.parent} is not writable")
    return target


def split_urls(value: str) -> list[str]:
    """A RABBITMQ_URL value's node URLs: the comma-separated parts, blanks dropped."""
    return [url.strip() for url in value.split(",") if url.strip()]


def amqp_urls(env: Mapping[str, str], name: str = "RABBITMQ_URL") -> tuple[str, ...]:
    """The broker's node URLs: one, or a cluster's nodes separated by commas, each a whole URL
    (a comma inside one, as in a password, is written %2C).

    They must name one user and vhost: a service that moves to another node must find the same
    queues with the same rights there, so a list that differs is a mistake worth stopping for."""
    urls = tuple(split_urls(text(env, name, "amqp://guest:guest@localhost:5672/%2F")))
    if not urls:
        raise ConfigError(f"{name} is empty: give amqp://user:password@host:5672/vhost")
    for index, url in enumerate(urls, 1):
        # A part is never echoed from a list: it may hold the head or tail of a password that
        # had a comma in it.
        shown = f"part {index} of {len(urls)}" if len(urls) > 1 else repr(_redacted(url))
        hint = " (write a comma inside a password as %2C)" if len(urls) > 1 else ""
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigError(
                f"{name}: each comma-separated part must be a whole amqp:// URL (write a comma "
                "inside a password as %2C)"
            )
        try:
            parts_ = urlsplit(url)
            parts_.port  # noqa: B018 - urlsplit raises on a non-numeric port only when asked
        except ValueError:
            raise ConfigError(f"{name} has an invalid host or port: {shown}{hint}") from None
        if not parts_.hostname:
            raise ConfigError(
                f"{name} must look like amqp://user:password@host:5672/vhost (several separated "
                f"by commas), got {shown}"
            )
    if len({(urlsplit(u).username, _vhost(u)) for u in urls}) > 1:
        raise ConfigError(f"{name}: every node's URL must name the same user and vhost")
    return urls


def _vhost(url: str) -> str:
    """The vhost a URL names, as pika reads it: none or an empty path is the default, `/`."""
    return unquote(urlsplit(url).path[1:]) or "/"


def _redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "(unreadable URL)"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # RabbitMQ 4.x's max_message_size default


# More shards than metric processes anyone runs only adds queues; 64 keeps each within 1/4 of even.
MAX_SHARDS = 64


@dataclass(frozen=True)
class BrokerSettings:
    """How a service talks to RabbitMQ: shared by every service that uses the broker."""

    urls: tuple[str, ...]  # one node, or a cluster's nodes: a service connects to one at a time
    topology: str  # "declare": create what is missing; "verify": only check it exists
    prefetch: int
    # The broker closes the channel of a publisher that sends a bigger body; knowing the limit,
    # the publisher refuses such a message itself and says why (RabbitMQ 4.x default: 16 MiB).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Shard queues per partitioned consumer (the metric's join): part of the topology, so every
    # service that declares or verifies it must be given the same number.
    shards: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BrokerSettings:
        return cls(
            urls=amqp_urls(env),
            topology=choice(env, "RABBITMQ_TOPOLOGY", "declare", ("declare", "verify")),
            prefetch=integer(env, "PREFETCH", 256, minimum=1),
            max_message_size=integer(
                env, "RABBITMQ_MAX_MESSAGE_SIZE", DEFAULT_MAX_MESSAGE_SIZE, minimum=1
            ),
            shards=metric_shards(env),
        )


def metric_shards(env: Mapping[str, str]) -> int:
    """METRIC_SHARDS: shard queues per partitioned consumer (also the definitions' number)."""
    shards = integer(env, "METRIC_SHARDS", 1, minimum=1)
    if shards > MAX_SHARDS:
        raise ConfigError(f"METRIC_SHARDS must be <= {MAX_SHARDS}, got {shards}")
    return shards


def contracts_dir(env: Mapping[str, str]) -> Path:
    found = path(env, "CONTRACTS_DIR", str(REPO_ROOT / "contracts"))
    if not (found / "catalog.json").is_file():
        raise ConfigError(f"CONTRACTS_DIR: no catalog.json in {found}")
    return found


def environ() -> Mapping[str, str]:
    return os.environ
