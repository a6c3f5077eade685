"""Our OTLP encoder writes exactly what the SDK's encoder builds, for every kind of span we make.

Spans come from the real SDK (a TracerProvider with an in-memory exporter); both encodings are
parsed with opentelemetry-proto and compared as messages.
"""

from __future__ import annotations

import re

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from observability.otlp import encode_request


def make_spans() -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "model", "deployment.environment": "test"}),
        span_limits=SpanLimits(max_attributes=8, max_events=2, max_links=2),
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    ours = provider.get_tracer("modelwatch")
    other = provider.get_tracer("opentelemetry.instrumentation.pika", "0.66b1",
                                schema_url="https://opentelemetry.io/schemas/1.11.0")  # fmt: skip
    remote = SpanContext(0xABC, 0x123, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "x=1")]))  # fmt: skip
    local = SpanContext(2**128 - 1, 2**64 - 1, is_remote=False)
    with (
        trace.use_span(NonRecordingSpan(remote)),
        other.start_as_current_span("process features", kind=SpanKind.CONSUMER, attributes={
            "messaging.system": "rabbitmq", "messaging.message.id": "624d0ec8-uuid",
            "messaging.rabbitmq.destination.routing_key": "",
        }),
    ):  # fmt: skip
        with ours.start_as_current_span("predict", attributes={"n": 0, "neg": -5,
                                                                   "big": 2**62}):  # fmt: skip
            pass
        with other.start_as_current_span("publish y_pred", kind=SpanKind.PRODUCER):
            pass
    with ours.start_as_current_span("record error", links=[Link(remote), Link(local, {"k": 1})],
                                    attributes={"f": 0.0, "g": -1.5e300, "ok": False,
                                                "yes": True, "ids": ("a", "", "ü"),
                                                "nums": (1, 2), "floats": (0.5,),
                                                "bools": (True, False)}) as span:  # fmt: skip
        span.add_event("retry", {"attempt": 2})
        span.add_event("bare")
        span.add_event("dropped because of the limit")
        span.set_status(Status(StatusCode.ERROR, "schema violation: ü"))
        for n in range(10):
            span.set_attribute(f"extra.{n}", n)  # over max_attributes: dropped and counted
    for kind in SpanKind:
        with ours.start_as_current_span(f"kind {kind.name}", kind=kind) as span:
            span.set_status(Status(StatusCode.OK))
    with ours.start_as_current_span("", links=[Link(local)] * 3):
        pass
    return list(memory.get_finished_spans())


def test_encoding_matches_the_sdk_encoder_exactly() -> None:
    spans = make_spans()
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    sdk = encode_spans(spans)
    assert ours == sdk
    assert len(ours.resource_spans[0].scope_spans) == 2
    assert sum(len(s.spans) for s in ours.resource_spans[0].scope_spans) == len(spans)


def sdk_provider(
    memory: InMemorySpanExporter,
    resource: Resource | None = None,
    limits: SpanLimits | None = None,
    sampler: Sampler | None = None,
) -> TracerProvider:
    # No atexit hook: Hypothesis makes hundreds of providers, and each would stay registered.
    provider = TracerProvider(
        sampler=sampler,
        resource=resource or Resource({}),
        span_limits=limits or SpanLimits(),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider


def assert_encodes_as_the_sdk_does(spans: list[ReadableSpan]) -> None:
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    sdk = encode_spans(spans)
    # A message holding a NaN never equals another (NaN != NaN); the bytes must still match, and
    # they also tell -0.0 from 0.0 and one NaN payload from another, which == does not.
    assert ours == sdk or re.search(r"double_value: -?nan$", str(sdk), re.MULTILINE)
    assert ours.SerializeToString(deterministic=True) == sdk.SerializeToString(deterministic=True)


# Mismatches found by comparing with the SDK on generated spans, kept as plain examples.
def test_a_span_that_dropped_all_its_attributes_still_counts_them() -> None:
    memory = InMemorySpanExporter()
    tracer = sdk_provider(memory, limits=SpanLimits(max_span_attributes=0)).get_tracer("t")
    with tracer.start_as_current_span("s", attributes={"a": 1}) as span:
        span.set_attribute("b", 2)
    spans = memory.get_finished_spans()
    assert_encodes_as_the_sdk_does(spans)
    (encoded,) = encode_spans(spans).resource_spans[0].scope_spans[0].spans
    assert encoded.dropped_attributes_count == 2


@pytest.mark.parametrize("dropped", [
    {"int64 max + 1": 2**63}, {"int64 min - 1": -(2**63) - 1}, {"nested": (1, {"k": 2**64})},
    {"surrogate value": "\ud800"}, {"surrogate \udfff key": "v"},
])  # fmt: skip
def test_an_attribute_protobuf_cannot_carry_is_dropped_as_the_sdk_drops_it(dropped) -> None:
    memory = InMemorySpanExporter()
    with sdk_provider(memory).get_tracer("t").start_as_current_span("s") as span:
        span.set_attributes({"before": -(2**63), **dropped, "after": 2**63 - 1})
        span.add_event("e", dropped)
        span.add_link(SpanContext(1, 1, is_remote=False), dropped)
    spans = memory.get_finished_spans()
    assert_encodes_as_the_sdk_does(spans)
    encoded = encode_spans(spans).resource_spans[0].scope_spans[0].spans[0]
    assert [a.key for a in encoded.attributes] == ["before", "after"]
    assert not encoded.events[0].attributes and not encoded.links[0].attributes


def test_equal_resources_and_scopes_of_two_providers_share_one_group() -> None:
    memory = InMemorySpanExporter()
    one, two = (
        sdk_provider(memory, Resource({"service.name": "model"})).get_tracer("modelwatch", "1")
        for _ in range(2)
    )
    for n, tracer in enumerate([one, two, one]):
        with tracer.start_as_current_span(f"span {n}"):
            pass
    spans = memory.get_finished_spans()
    assert spans[0].resource is not spans[1].resource
    assert_encodes_as_the_sdk_does(spans)
    (resource,) = encode_spans(spans).resource_spans
    (scope,) = resource.scope_spans
    assert [s.name for s in scope.spans] == ["span 0", "span 1", "span 2"]


def test_an_empty_batch_encodes_as_an_empty_request() -> None:
    assert encode_request([]) == b""
    assert ExportTraceServiceRequest.FromString(b"") == encode_spans([])


@pytest.mark.parametrize("value", [object(), {1, 2}])
def test_a_value_the_sdk_cannot_encode_is_an_error_not_garbage(value) -> None:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span._attributes._dict["bad"] = value  # what set_attribute would refuse
    with pytest.raises(TypeError):
        encode_request(memory.get_finished_spans())


def test_the_exporter_delivers_every_span_to_a_real_receiver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    from observability.otlp import OTLPSpanExporter
    from tools.otlp_sink import Receiver

    receiver = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    exporter = OTLPSpanExporter()
    spans = make_spans()
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
        receiver.close()
    assert receiver.requests == 2
    got = sorted((s.name, s.span_id) for s in receiver.snapshot())
    sent = sorted((s.name, f"{s.context.span_id:016x}") for s in spans)
    assert got == sorted(sent * 2)


def test_the_transport_takes_the_sdks_tls_settings_and_leaves_proxies_to_requests() -> None:
    from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

    from observability.otlp import _transport

    plain = _transport({})
    assert isinstance(plain, Urllib3HTTPTransport)
    assert plain._pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
    tls = _transport({
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/generic/ca.pem",
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "/traces/ca.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/client.pem",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/client.key",
    })  # fmt: skip
    assert isinstance(tls, Urllib3HTTPTransport)
    kw = tls._pool.connection_pool_kw
    assert (kw["ca_certs"], kw["cert_file"], kw["key_file"]) == (
        "/traces/ca.pem", "/client.pem", "/client.key",
    )  # fmt: skip
    assert _transport({"OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER": "mine"}) is None
    assert _transport({"HTTPS_PROXY": "http://proxy:3128"}) is None
