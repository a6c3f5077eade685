"""PRODUCER and CONSUMER spans for AMQP messages, with their context carried in the headers.

On publish, `publishing()` opens `publish <exchange>` (PRODUCER) and injects its context into the
message headers with the configured propagators (W3C `traceparent`/`tracestate` and `baggage` by
default); on delivery, `processing()` extracts it and opens `process <exchange>` (CONSUMER) as its
child, so one emission is one trace across services. A consumer that aggregates (the monitor) takes
its deliveries in batches under one `process <exchange>` span linked to each message's context
(`processing_batch()`). Every attribute follows the current
OpenTelemetry messaging conventions and is given when the span starts.

Why not opentelemetry-instrumentation-pika's wrappers (used before): they name spans and set keys
by older conventions, which hooks had to rewrite through the span's private attribute store after
the fact; they never wrap the async Channel's consumers, which needed a private decorator; and
wrapper plus rewrite cost more CPU per message than spans made directly (docs/benchmark.md).
An upstream producer may still use that instrumentation: its `traceparent` header is extracted
here like any other (docs/tracing.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)

from observability import attributes as attr
from observability.tracing import tracer

SCOPE = "modelwatch.messaging"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """AMQP header values may arrive as bytes; propagators want strings."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


@contextlib.contextmanager
def publishing(
    exchange: str, routing_key: str, message_id: str, headers: dict[str, Any], server: tuple,
    parent: SpanContext | None = None,
) -> Iterator[Span]:  # fmt: skip
    """A PRODUCER span around one publish; its context is written into `headers`. Its parent is
    the current span, or `parent` when given (a message published later than its cause)."""
    attributes = _common(exchange, message_id, server, "publish", "send")
    if routing_key:  # a dead letter's (its queue) or a partitioned type's (its shard key)
        attributes[attr.MESSAGING_ROUTING_KEY] = routing_key
    # Not made current: nothing happens inside it but the publish, and attaching a context to
    # the task and detaching it again was a sizeable share of the span's cost (docs/benchmark.md).
    span = tracer(SCOPE).start_span(
        f"publish {exchange}", kind=SpanKind.PRODUCER, attributes=attributes,
        context=trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None,
    )  # fmt: skip
    try:
        propagate.inject(headers, context=trace.set_span_in_context(span))
        yield span
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()


@contextlib.contextmanager
def processing(
    exchange: str, message_id: str, headers: Mapping[str, Any], server: tuple
) -> Iterator[Span]:
    """A CONSUMER span around handling one delivery, child of the context in its `headers`."""
    attributes = _common(exchange, message_id, server, "process", "process")
    schema = headers.get("schema")
    if isinstance(schema, str):
        attributes[attr.SCHEMA_ID] = schema
    parent = propagate.extract(headers, getter=_GETTER) if headers else context.Context()
    with tracer(SCOPE).start_as_current_span(
        f"process {exchange}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def processing_batch(
    exchange: str, headers: Sequence[Mapping[str, Any]], server: tuple
) -> Iterator[Span]:
    """One CONSUMER span around handling a batch of deliveries, linked to each one's context:
    the messaging conventions' batch processing, for a consumer that aggregates what it reads."""
    attributes = _common(exchange, "", server, "process", "process")
    attributes[attr.MESSAGING_BATCH_MESSAGE_COUNT] = len(headers)
    links = []
    for carrier in headers:
        if carrier:
            linked = trace.get_current_span(propagate.extract(carrier, getter=_GETTER))
            if (span_context := linked.get_span_context()).is_valid:
                links.append(Link(span_context))
    with tracer(SCOPE).start_as_current_span(
        f"process {exchange}", context=context.Context(), kind=SpanKind.CONSUMER,
        attributes=attributes, links=links,
    ) as span:  # fmt: skip
        yield span


def _common(exchange: str, message_id: str, server: tuple, name: str, type_: str) -> dict:
    found = {
        attr.MESSAGING_SYSTEM: "rabbitmq",
        attr.MESSAGING_DESTINATION_NAME: exchange,
        attr.MESSAGING_OPERATION_NAME: name,
        attr.MESSAGING_OPERATION_TYPE: type_,
        attr.SERVER_ADDRESS: server[0],
        attr.SERVER_PORT: server[1],
    }
    if message_id:
        found[attr.MESSAGING_MESSAGE_ID] = message_id
    return found
