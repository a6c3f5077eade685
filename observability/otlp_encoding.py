"""OTLP/HTTP trace encoding: `ExportTraceServiceRequest` (opentelemetry-proto trace/v1) written
directly as bytes, without a protobuf object per span, attribute and value.

It reads the SDK's own containers of a span (`_attributes`, `_events`, `_links`) rather than the
public properties, which copy them on every call; services/common/internals.py lists these names
and observability/otlp.py checks them before using this encoder. tests/test_otlp.py checks the
output decodes to exactly what the SDK's `encode_spans` builds, on generated spans.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

log = logging.getLogger("modelwatch.tracing")

_KIND = {  # field 6 with OTLP's value for the SDK's kind (OTLP counts UNSPECIFIED as 0)
    SpanKind.INTERNAL: b"\x30\x01", SpanKind.SERVER: b"\x30\x02", SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04", SpanKind.CONSUMER: b"\x30\x05",
}  # fmt: skip
_UNSET_STATUS = b"\x7a\x00"  # field 15, an empty Status
_VARINT = [bytes([n]) for n in range(128)]
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
# Span and link flags as the SDK sets them: "has is_remote" (0x100), plus "is remote" (0x200)
# when the parent (or linked) context came from another process; keyed by is_remote.
_FLAGS = {False: _FIXED32(0x100), True: _FIXED32(0x300)}


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """Serialized ExportTraceServiceRequest: spans grouped by resource, then by scope."""
    # Grouped as the SDK's encoder groups them: by equal resource, then equal scope (providers
    # each hold their own, and two may be equal). Resource hashes a JSON dump of its attributes,
    # so each pair of objects is looked up once a batch, not once a span.
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    lists: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        encoded = lists.get((id(resource), id(scope)))
        if encoded is None:
            scopes = groups.setdefault(resource, {})
            encoded = lists[id(resource), id(scope)] = scopes.setdefault(scope, [])
        encoded.append(_span(span))
    out = []
    for resource, scopes in groups.items():
        body = [_field(1, _attributes(1, resource.attributes))]  # Resource
        for scope, encoded in scopes.items():
            scope_spans = [_field(1, _scope(scope)), *(b"\x12" + _len(s) + s for s in encoded)]
            if scope is not None and scope.schema_url:
                scope_spans.append(_string(3, scope.schema_url))
            body.append(_field(2, b"".join(scope_spans)))
        if resource.schema_url:
            body.append(_string(3, resource.schema_url))
        out.append(_field(1, b"".join(body)))
    return b"".join(out)


def _span(span: ReadableSpan) -> bytes:
    ctx = span.context
    parent = span.parent
    out = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08",
           ctx.span_id.to_bytes(8, "big")]  # fmt: skip
    if ctx.trace_state:
        out.append(_string(3, ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())))
    if parent is not None:
        out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    name_kind = (span.name, span.kind)
    head = _HEADS.get(name_kind)
    if head is None:
        if len(_HEADS) > 1024:  # span names made per message would otherwise grow it forever
            _HEADS.clear()
        head = _HEADS[name_kind] = _string(5, span.name) + _KIND[span.kind]
    out += (head, b"\x39", _FIXED64(span.start_time or 0), b"\x41", _FIXED64(span.end_time or 0))
    # The public properties copy (attributes into a read-only proxy, events and links into
    # tuples, under a lock) on every call: read the SDK's own containers once instead.
    attributes = getattr(span, "_attributes", None)
    if attributes is None:
        attributes = span.attributes
    if attributes:
        out.append(_attributes(9, attributes))
    dropped = getattr(attributes, "dropped", 0)  # also when every attribute was dropped
    if dropped:
        out += (b"\x50", _varint(dropped))
    out += (_field(11, _event(event)) for event in _own(span, "events"))
    if span.dropped_events:
        out += (b"\x60", _varint(span.dropped_events))
    out += (_field(13, _link(link)) for link in _own(span, "links"))
    if span.dropped_links:
        out += (b"\x70", _varint(span.dropped_links))
    status = span.status
    out.append(_field(15, _status(status)) if status.status_code.value else _UNSET_STATUS)
    out += (b"\x85\x01", _FLAGS[parent is not None and parent.is_remote])  # field 16
    return b"".join(out)


def _own(span: ReadableSpan, name: str) -> Any:
    """The span's events or links as the SDK holds them (a BoundedList's deque), uncopied."""
    found = getattr(span, f"_{name}", None)
    return getattr(span, name) if found is None else getattr(found, "_dq", found)


# Field 5 (name) and 6 (kind) together, per name and kind: a service has a handful, and the cache
# is reset when full.
_HEADS: dict[tuple[str, SpanKind], bytes] = {}


def _event(event: Any) -> bytes:
    out = [b"\x09", _FIXED64(event.timestamp or 0), _string(2, event.name)]
    if event.attributes:
        out.append(_attributes(3, event.attributes))
    if event.dropped_attributes:
        out += (b"\x20", _varint(event.dropped_attributes))
    return b"".join(out)


def _link(link: Any) -> bytes:
    ctx = link.context
    out = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08",
           ctx.span_id.to_bytes(8, "big")]  # fmt: skip
    if link.attributes:
        out.append(_attributes(4, link.attributes))
    if link.dropped_attributes:
        out += (b"\x28", _varint(link.dropped_attributes))
    out += (b"\x35", _FLAGS[bool(ctx.is_remote)])
    return b"".join(out)


def _status(status: Any) -> bytes:
    out = []
    if status.description:
        out.append(_string(2, status.description))
    if status.status_code.value:
        out += (b"\x18", _VARINT[status.status_code.value])
    return b"".join(out)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    out = [_string(1, scope.name or ""), _string(2, scope.version or "")]
    if scope.attributes:
        out.append(_attributes(3, scope.attributes))
    return b"".join(out)


def _attributes(field: int, attributes: Mapping[str, Any]) -> bytes:
    """Each attribute as a repeated KeyValue field `field`."""
    tag = _tag(field, 2)
    # BoundedAttributes iterates through the Mapping ABC, slowly; its dict holds the same items.
    items = getattr(attributes, "_dict", attributes).items()
    out = []
    for key, value in items:
        try:
            pair = _PAIRS[key, value]
        except (KeyError, TypeError):  # TypeError: an unhashable value (a list)
            try:
                pair = _pair(key, value)
            except ValueError as error:  # what the SDK stores but protobuf cannot carry
                log.warning("attribute %r dropped, as the SDK's encoder drops it: %s", key, error)
                continue
        out += (tag, _len(pair), pair)
    return b"".join(out)


# Most attributes repeat (messaging.system=rabbitmq, queue names, the model version), so the
# encoding of a string-valued pair is kept; unique ones (message ids) pass through, and the cache is
# reset when full. Only strings: True == 1 == 1.0 would share a key but not an encoding.
_PAIRS: dict[tuple[str, Any], bytes] = {}


def _pair(key: str, value: Any) -> bytes:
    pair = _string(1, key) + _field(2, _any(value))
    if type(value) is str:
        if len(_PAIRS) > 4096:
            _PAIRS.clear()
        _PAIRS[key, value] = pair
    return pair


def _any(value: Any) -> bytes:
    """An AnyValue, with the SDK encoder's choice of field for each Python type."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(1, value.encode())  # an empty string is still a set value here
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:  # the SDK stores any int; protobuf refuses these
            raise ValueError(f"{value} does not fit in an int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64 as two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return b"\x3a" + _len(value) + value
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(
            _field(1, _string(1, str(k)) + _field(2, _any(v))) for k, v in value.items()
        )
        return _field(6, pairs)
    raise TypeError(f"cannot encode attribute value of type {type(value).__name__}")


def _string(field: int, text: str) -> bytes:
    if not text:
        return b""
    raw = text.encode()
    return _tag(field, 2) + _len(raw) + raw


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field, written even when empty (a set message or oneof member)."""
    return _tag(field, 2) + _len(payload) + payload


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len(payload: bytes) -> bytes:
    n = len(payload)
    return _VARINT[n] if n < 128 else _varint(n)


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINT[n]
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
