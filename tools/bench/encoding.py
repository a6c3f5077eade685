"""OTLP encoding cost per span: the SDK's encoder and ours, on the same spans, in the same run."""

from __future__ import annotations

import statistics
import timeit

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import attributes as attr
from observability.messaging import processing, publishing
from observability.otlp import encode_request


def model_spans(rows: int = 128) -> list:
    """What the model service exports for `rows` rows: process, predict and publish spans."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "model"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # The messaging spans come from the global provider, as in the services; this process
    # (the benchmark) traces nothing else.
    trace.set_tracer_provider(provider)
    tracer = provider.get_tracer("modelwatch")
    server = ("rabbitmq", 5672)
    for n in range(rows):
        id_ = f"00000000-0000-4000-8000-{n:012d}"
        with processing("features", id_, {}, server):
            with tracer.start_as_current_span("predict", attributes={
                attr.MESSAGING_MESSAGE_ID: id_, attr.MODEL_VERSION: "linreg-d34977323be1",
            }):  # fmt: skip
                pass
            with publishing("y_pred", "", id_, {}, server):
                pass
    return list(memory.get_finished_spans())


def us_per_span() -> dict[str, float]:
    """Median µs a span to encode one batch of the model's spans, per encoder."""
    spans = model_spans()

    def cost(encode) -> float:
        return statistics.median(timeit.repeat(encode, number=20, repeat=5)) / 20 / len(spans) * 1e6

    return {
        "sdk": cost(lambda: encode_spans(spans).SerializePartialToString()),
        "modelwatch": cost(lambda: encode_request(spans)),
    }
