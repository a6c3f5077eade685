"""An upstream producer traced by opentelemetry-instrumentation-pika, consumed by our services.

The producer is written as a team outside this repository would write it: a BlockingConnection
whose channel `PikaInstrumentor.instrument_channel` wraps, and a TracerProvider of its own that
exports over OTLP/HTTP. Only the instrumentation's publish side meets our code: it injects W3C
`traceparent` into the AMQP headers, and our services extract it (observability/messaging.py).
Its consumer side is not used here, so it is not tested.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.pika import PikaInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.common.contracts import Contracts
from services.common.messages import utc_now
from tests.conftest import Amqp, Services, one, read_csv, traced, wait_until
from tests.session_broker import Broker
from tools.otlp_sink import Receiver, Span

pytestmark = pytest.mark.broker

UPSTREAM = "upstream-producer"
# One row's trace: each span's service, kind and parent. The upstream team wraps a row's two
# publishes in a span of its own, as our features service does with `emit`; the instrumentation
# names its PRODUCER spans `<exchange> send`. `record error` hangs under whichever half came last.
SHAPE = {
    "emit row": (UPSTREAM, "INTERNAL", None),
    "features send": (UPSTREAM, "PRODUCER", "emit row"),
    "y_true send": (UPSTREAM, "PRODUCER", "emit row"),
    "process features": ("model", "CONSUMER", "features send"),
    "predict": ("model", "INTERNAL", "process features"),
    "publish y_pred": ("model", "PRODUCER", "process features"),
    "process y_true": ("metric", "CONSUMER", "y_true send"),
    "process y_pred": ("metric", "CONSUMER", "publish y_pred"),
    "record error": ("metric", "INTERNAL", ("process y_true", "process y_pred")),
    "publish metric_record": ("metric", "PRODUCER", "record error"),
}


@pytest.fixture
def upstream(receiver: Receiver) -> Iterator[TracerProvider]:
    """The upstream team's tracing: its own provider, exporting to the same receiver."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: UPSTREAM}))
    exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def publish_rows(amqp: Amqp, provider: TracerProvider, contracts: Contracts, n: int) -> list[str]:
    """Publish `n` rows (features v1 and y_true, one id each) through an instrumented channel."""
    # instrument_channel wraps this channel only; instrument() would patch pika's classes for
    # every later test in this process.
    PikaInstrumentor().instrument_channel(amqp.channel, tracer_provider=provider)
    tracer = provider.get_tracer("upstream.producer")
    examples = {t: contracts.root / t / "v1" / "examples" / "valid" for t in ("features", "y_true")}
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for id_ in ids:
        with tracer.start_as_current_span("emit row"):
            for type_, folder in examples.items():
                payload = json.loads(next(folder.glob("*.json")).read_text())
                payload.update(id=id_, emitted_at=utc_now())
                headers = {"schema": contracts.schema_ids[type_, 1]}
                amqp.publish(type_, json.dumps(payload).encode(), headers, message_id=id_)
    provider.force_flush()
    return ids


def test_a_pika_instrumented_producer_and_our_services_make_one_trace_per_row(
    services: Services,
    service_env: dict,
    receiver: Receiver,
    upstream: TracerProvider,
    amqp: Amqp,
    contracts: Contracts,
    broker: Broker,
) -> None:
    n = 5
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    for name in ("metric", "model"):  # they declare the exchanges the producer publishes to
        services.start(name, **traced(receiver))
        wait_until(lambda name=name: "connected" in services.output(name), 30, f"{name} up")
    ids = publish_rows(amqp, upstream, contracts, n)
    wait_until(lambda: len(read_csv(csv_path)) >= n, 60, f"{n} rows")
    for name in ("model", "metric"):
        assert services.stop(name) == 0, services.output(name)  # exports what is left

    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in receiver.snapshot():
        by_trace[span.trace_id].append(span)
    rows = {row["message_id"]: row for row in read_csv(csv_path)}
    assert sorted(rows) == sorted(ids)
    for id_, row in rows.items():
        spans = by_trace[row["trace_id"]]
        named = {name: one(spans, name=name) for name in SHAPE}
        assert len(spans) == len(SHAPE), sorted(s.name for s in spans)
        for name, (service, kind, parent) in SHAPE.items():
            span = named[name]
            assert (span.service, span.kind) == (service, kind), name
            parents = parent if isinstance(parent, tuple) else (parent,)
            assert span.parent_id in {named[p].span_id if p else "" for p in parents}, name
        for exchange in ("features", "y_true"):
            assert named[f"{exchange} send"].attributes == {
                "messaging.system": "rabbitmq",
                "messaging.destination": exchange,
                "messaging.temp_destination": True,
                "messaging.message.id": id_,
                "net.peer.name": broker.host,
                "net.peer.port": broker.port,
            }
