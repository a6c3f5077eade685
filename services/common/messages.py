"""What handlers receive and return, and how bodies are turned into JSON and back.

Handlers never see AMQP: they get a `Message` (already decoded and validated) and return `Outgoing`
values. Raising `Rejected` dead-letters the input with the given reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class Rejected(Exception):
    """The input cannot be processed as it is; it is dead-lettered with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ContractViolation(Exception):
    """A service produced output its own contract forbids: a bug, never the sender's fault."""


@dataclass(frozen=True, slots=True)
class Message:
    """A consumed message after decoding and validation."""

    type: str
    version: int
    payload: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False

    @property
    def id(self) -> str:
        return self.payload["id"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a handler wants published; the broker module validates it and sends it."""

    type: str
    payload: dict[str, Any]
    version: int | None = None  # None: the version the catalog says this service produces

    @property
    def id(self) -> str:
        return self.payload["id"]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def decode_body(body: bytes) -> Any:
    """Parse a body strictly: UTF-8 only, and no NaN/Infinity (JSON has neither)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise Rejected(f"body is not valid JSON: {exc}") from None


def encode_body(payload: Any) -> bytes:
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()


def utc_now() -> str:
    """The current time in the contracts' timestamp format."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)
