"""Hooks for opentelemetry-instrumentation-pika that bring its spans to the current conventions.

The instrumentation injects `traceparent`/`baggage` into the AMQP headers inside a PRODUCER span and
extracts them before a CONSUMER span — that part is kept as it is. But it names spans
`<exchange> send` / `<exchange> receive` and sets keys the conventions have since replaced
(`messaging.destination`, `messaging.operation`, `messaging.temp_destination` — always true,
which is wrong for our durable exchanges — and `net.peer.*`). These hooks rename the spans to
`publish <exchange>` / `process <exchange>`, set the current keys and drop the replaced ones. A hook
never raises: the instrumentation logs what it throws, and telemetry must not disturb delivery.
"""

from __future__ import annotations

import logging
from typing import Any

from observability import attributes as attr

log = logging.getLogger("modelwatch.tracing")

_REPLACED = {
    "messaging.destination": attr.MESSAGING_DESTINATION_NAME,
    "net.peer.name": attr.SERVER_ADDRESS,
    "net.peer.port": attr.SERVER_PORT,
}
_DROPPED = ("messaging.operation", "messaging.temp_destination")


def publish_hook(span: Any, _body: bytes, properties: Any) -> None:
    _convert(span, "publish", "send")
    # Only dead letters are published with a routing key, and it is the queue they came from.
    key = (properties.headers or {}).get("x-error-queue")
    if key and span.is_recording():
        span.set_attribute(attr.MESSAGING_ROUTING_KEY, key)


def consume_hook(span: Any, _body: bytes, properties: Any) -> None:
    _convert(span, "process", "process")
    schema = (properties.headers or {}).get("schema")
    if isinstance(schema, str) and span.is_recording():
        span.set_attribute(attr.SCHEMA_ID, schema)


def _convert(span: Any, operation: str, operation_type: str) -> None:
    if not span.is_recording():
        return
    attributes = getattr(span, "_attributes", None)
    if attributes is None:
        return
    try:
        destination = attributes.get("messaging.destination", "")
        for old, new in _REPLACED.items():
            if old in attributes:
                attributes[new] = attributes[old]
                del attributes[old]
        for old in _DROPPED:
            if old in attributes:
                del attributes[old]
        span.set_attribute(attr.MESSAGING_OPERATION_NAME, operation)
        span.set_attribute(attr.MESSAGING_OPERATION_TYPE, operation_type)
        span.update_name(f"{operation} {destination}")
    except Exception:
        log.debug("could not convert span attributes", exc_info=True)
