"""Our OTLP encoder writes exactly what the SDK's encoder builds, for every kind of span we make
and for batches Hypothesis generates.

Spans come from the real SDK (a TracerProvider with an in-memory exporter); both encodings are
parsed with opentelemetry-proto and compared as messages.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
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


# Mismatches the property test below found, kept as plain examples.
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


# Generated batches. Values cover every type the SDK stores: the scalars (ints up to the int64
# bounds, -0.0, infinities, NaN, empty and non-ASCII strings), homogeneous tuples of each
# (empty ones too), and what its extended attributes also take: None, bytes, mappings, mixed and
# nested sequences. Some it stores but its encoder drops, logging why: ints past int64 and lone
# surrogates, which UTF-8 cannot carry.
TEXT = st.text(max_size=8) | st.sampled_from(["", "ü", "模型", "👩‍🔬", "\x00"])
SURROGATE = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
INT64_EDGES = [0, -1, 2**63 - 1, 2**63 - 2, -(2**63), -(2**63) + 1]
SCALARS = [
    TEXT,
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1) | st.sampled_from(INT64_EDGES),
    st.floats() | st.sampled_from([-0.0, math.inf, -math.inf, math.nan]),
    st.binary(max_size=6),
]
SCALAR = st.one_of(st.none(), *SCALARS)
VALUES = st.one_of(
    SCALAR,
    *(st.lists(s, max_size=4).map(tuple) for s in SCALARS),
    st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, (1, -(2**100))]),
    SURROGATE,
)  # fmt: skip
ATTRIBUTES = st.dictionaries(TEXT | SURROGATE, VALUES, max_size=3)  # "" is dropped, and counted
MAYBE_ATTRIBUTES = st.none() | ATTRIBUTES
TIMES = st.integers(0, 2**64 - 1)
SMALL_LIMIT = st.none() | st.integers(0, 3)  # None: the SDK's default (128, or no limit)
TRACE_STATES = st.dictionaries(  # W3C: keys from a-z0-9_-*/ and @, values printable but "," "="
    st.sampled_from(["vendor", "rojo", "t61rcwzd@dt", "a0_-*/b"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=",="),
            min_size=1, max_size=5),
    max_size=2,
).map(lambda pairs: TraceState(list(pairs.items())))  # fmt: skip
CONTEXTS = st.builds(  # trace or span id 0 makes an invalid context: a root span, or no link
    SpanContext,
    trace_id=st.integers(0, 2**128 - 1),
    span_id=st.integers(0, 2**64 - 1),
    is_remote=st.booleans(),
    trace_flags=st.integers(0, 255).map(TraceFlags),
    trace_state=TRACE_STATES,
)
SCHEMA_URLS = st.sampled_from([None, "", "https://opentelemetry.io/schemas/1.21.0"])
PROVIDERS = st.fixed_dictionaries({
    "resource": ATTRIBUTES,
    "schema_url": SCHEMA_URLS,
    # The first provider's resource object, or an equal one: the SDK's encoder groups by equality.
    "first_resource": st.sampled_from([None, "same", "equal"]),
    "limits": st.builds(
        SpanLimits, max_span_attributes=SMALL_LIMIT, max_event_attributes=SMALL_LIMIT,
        max_link_attributes=SMALL_LIMIT, max_events=SMALL_LIMIT, max_links=SMALL_LIMIT,
        max_attribute_length=SMALL_LIMIT, max_span_attribute_length=SMALL_LIMIT,
    ),
    "always_on": st.booleans(),  # else parent-based: an unsampled remote parent drops the span
})  # fmt: skip
TRACERS = st.fixed_dictionaries({
    "provider": st.integers(0, 2),
    "first_scope": st.booleans(),  # the first tracer's scope, from this tracer's provider
    "name": st.sampled_from(["modelwatch", "opentelemetry.instrumentation.pika", ""]) | TEXT,
    "version": st.sampled_from([None, "", "0.66b1"]),
    "schema_url": SCHEMA_URLS,
    "attributes": st.sampled_from([None, {"scope.kind": "pika"}]) | ATTRIBUTES,
})  # fmt: skip
SPANS = st.fixed_dictionaries({
    "tracer": st.integers(0, 3),
    "name": TEXT,
    "kind": st.sampled_from(SpanKind),
    "parent": st.none() | CONTEXTS | st.integers(0, 7),  # an int: an earlier span, local
    "attributes": MAYBE_ATTRIBUTES,
    "set_later": ATTRIBUTES,
    "links": st.lists(st.builds(Link, CONTEXTS, MAYBE_ATTRIBUTES), max_size=2),
    "links_later": st.lists(st.tuples(CONTEXTS, MAYBE_ATTRIBUTES), max_size=1),
    "events": st.lists(st.tuples(TEXT, MAYBE_ATTRIBUTES, st.none() | TIMES), max_size=2),
    "exception": st.booleans(),
    "status": st.none() | st.builds(Status, st.sampled_from(StatusCode), st.none() | TEXT),
    "start": st.none() | TIMES,
    "end": st.none() | TIMES,
})  # fmt: skip
BATCHES = st.fixed_dictionaries({
    "providers": st.lists(PROVIDERS, min_size=2, max_size=3),
    "tracers": st.lists(TRACERS, min_size=2, max_size=4),
    "spans": st.lists(SPANS, min_size=1, max_size=4),
})  # fmt: skip


def run_batch(plan: dict) -> list[ReadableSpan]:
    """Makes the planned spans with the real SDK and returns what its exporter would be given."""
    memory = InMemorySpanExporter()
    providers: list[TracerProvider] = []
    for p in plan["providers"]:
        resource = Resource(p["resource"], p["schema_url"])
        if providers and p["first_resource"]:
            first = providers[0].resource
            same = p["first_resource"] == "same"
            resource = first if same else Resource(first.attributes, first.schema_url)
        sampler = ALWAYS_ON if p["always_on"] else None
        providers.append(sdk_provider(memory, resource, p["limits"], sampler))
    tracers = []
    for t in plan["tracers"]:
        scope = plan["tracers"][0] if t["first_scope"] else t
        provider = providers[t["provider"] % len(providers)]
        tracers.append(provider.get_tracer(scope["name"], scope["version"], scope["schema_url"],
                                           scope["attributes"]))  # fmt: skip
    made: list[trace.Span] = []
    for s in plan["spans"]:
        made.append(run_span(tracers[s["tracer"] % len(tracers)], s, made))
    return list(memory.get_finished_spans())


def run_span(tracer: trace.Tracer, s: dict, made: list[trace.Span]) -> trace.Span:
    """Starts, fills and ends one planned span; it may be the parent of a later one."""
    parent = s["parent"]
    if isinstance(parent, int):
        parent = made[parent % len(made)] if made else None
    elif parent is not None:
        parent = NonRecordingSpan(parent)  # as extracted from a message when is_remote
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(s["name"], context, s["kind"], s["attributes"], s["links"],
                             s["start"])  # fmt: skip
    span.set_attributes(s["set_later"])
    for link_context, attributes in s["links_later"]:
        span.add_link(link_context, attributes)
    for name, attributes, timestamp in s["events"]:
        span.add_event(name, attributes, timestamp)
    if s["exception"]:
        span.record_exception(ValueError("schema violation: ü"))
    if s["status"] is not None:
        span.set_status(s["status"])
    span.end(s["end"])
    return span


@settings(
    max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
@given(BATCHES)
def test_encoding_matches_the_sdk_encoder_on_generated_spans(plan: dict) -> None:
    assert_encodes_as_the_sdk_does(run_batch(plan))


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
