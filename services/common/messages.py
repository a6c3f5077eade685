"""What handlers receive and return, and how bodies are turned into JSON and back.

Handlers never see AMQP: they get a `Message` (already decoded and validated) and return `Outgoing`
values. Raising `Rejected` dead-letters the input with the given reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson


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
        return message_id(self.payload)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a handler wants published; the broker module validates it and sends it."""

    type: str
    payload: dict[str, Any]
    version: int | None = None  # None: the version the catalog says this service produces

    @property
    def id(self) -> str:
        return message_id(self.payload)


def message_id(payload: dict[str, Any]) -> str:
    """The id a message travels under: its `id`, or `message_id` for a recorded row."""
    return payload["id"] if "id" in payload else payload["message_id"]


def trace_id_of(headers: dict) -> str:
    """The trace id in a W3C `traceparent` header (version-traceid-spanid-flags), or ''."""
    value = headers.get("traceparent")
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    parts = value.split("-") if isinstance(value, str) else []
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1].lower()
    return ""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def decode_body(body: bytes) -> Any:
    """Parse a body strictly: UTF-8 only, and no NaN/Infinity (JSON has neither).

    orjson parses (faster than the standard library, docs/benchmark.md, and as strict); when it
    refuses, the standard parser runs once more only to say why in words a person can act on.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise Rejected(f"body is not valid JSON: {exc}") from None
    raise Rejected("body is not valid JSON (e.g. an integer wider than 64 bits)")


def encode_body(payload: Any) -> bytes:
    """JSON bytes of an already validated payload (the schemas reject NaN, which orjson would
    write as null)."""
    return orjson.dumps(payload)


def utc_now() -> str:
    """The current time in the contracts' timestamp format."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    """YYYY-MM-DDTHH:MM:SS.ffffffZ; isoformat rather than strftime, which is slower per message."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)
