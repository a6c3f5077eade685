"""An OTLP/HTTP trace receiver: what the real exporters send, decoded and counted.

The tests keep every span to check the shape of traces; the benchmark only counts them
(`keep=False`), so that tracing costs what it costs without the receiver building objects.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

KINDS = {
    ProtoSpan.SPAN_KIND_INTERNAL: "INTERNAL",
    ProtoSpan.SPAN_KIND_PRODUCER: "PRODUCER",
    ProtoSpan.SPAN_KIND_CONSUMER: "CONSUMER",
    ProtoSpan.SPAN_KIND_SERVER: "SERVER",
    ProtoSpan.SPAN_KIND_CLIENT: "CLIENT",
    ProtoSpan.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
}


@dataclass
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)
    status_code: int = 0


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Point:
    """One metric data point as exported: a sum's or gauge's value, a histogram's count."""

    service: str
    name: str
    attributes: dict[str, Any]
    value: float
    histogram_sum: float = 0.0


class Receiver:
    """Listens on 127.0.0.1 at a free port; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT takes."""

    def __init__(self, keep: bool = True) -> None:
        self.spans: list[Span] = []
        self.points: list[Point] = []  # every metric data point of every export, in order
        self.metric_requests = 0
        self.requests = 0
        self.count = 0  # spans received, kept or not
        self._keep = keep
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as collectors do: no connection per batch

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/metrics":
                    receiver._add_metrics(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    receiver._add(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path in ("/v1/traces", "/v1/metrics") else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            self.metric_requests += 1
        if not self._keep:
            return
        found = []
        for rm in request.resource_metrics:
            service = next((_value(a.value) for a in rm.resource.attributes
                            if a.key == "service.name"), "")  # fmt: skip
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for p in getattr(metric, kind).data_points:
                        attrs = {a.key: _value(a.value) for a in p.attributes}
                        if kind == "histogram":
                            found.append(Point(service, metric.name, attrs, p.count, p.sum))
                        else:
                            value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                            found.append(Point(service, metric.name, attrs, value))
        with self._lock:
            self.points += found

    def latest(self, name: str, **attributes: Any) -> dict[str, float]:
        """The last exported value of metric `name` per service, among points with `attributes`."""
        with self._lock:
            points = list(self.points)
        return {
            p.service: p.value
            for p in points
            if p.name == name and all(p.attributes.get(k) == v for k, v in attributes.items())
        }

    def _add(self, request: ExportTraceServiceRequest) -> None:
        if not self._keep:
            count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with self._lock:
                self.requests += 1
                self.count += count
            return
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    found.append(Span(
                        service=resource.get("service.name", ""), name=s.name, kind=KINDS[s.kind],
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        resource=resource,
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        status_code=s.status.code,
                    ))  # fmt: skip
        with self._lock:
            self.requests += 1
            self.count += len(found)
            self.spans.extend(found)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
