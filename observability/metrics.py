"""Metrics set-up and the instruments the services record, configured by the standard variables.

`setup_metrics(default_name)` reads OTEL_METRICS_EXPORTER (otlp, console, none, or a list),
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL,
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_METRIC_EXPORT_INTERVAL
(ms; the SDK's default is 60 s),
with the same resource (OTEL_SERVICE_NAME, ...) as the traces. Temporality is cumulative, what
Prometheus' OTLP receiver takes.

Counts on the hot path are plain integers per attribute set (`Tally`), which observable counters
read when the reader collects: a dict increment per message instead of an SDK call (an SDK counter
`add` cost several microseconds, a cost the bench would see on every message). Histograms and
gauges are the SDK's synchronous instruments; docs/metrics.md lists every metric.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)

from observability import attributes as attr
from observability.tracing import grpc_missing, service_resource, shut_down
from services.common.settings import ConfigError

log = logging.getLogger("modelwatch.metrics")
_provider: MeterProvider | None = None
# Processing here takes tens of microseconds to milliseconds: the conventions' advised boundaries
# (5 ms and up) would put nearly every message in the first bucket.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
ERROR_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300)


def setup_metrics(default_name: str, env: Mapping[str, str] = os.environ) -> None:
    """Install the global meter provider for this process; a bad variable raises ConfigError."""
    global _provider
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    # Ours where unset: otlp once an endpoint for metrics is named (compose names Prometheus),
    # else none. Trace backends such as Jaeger take no metrics, so the standard default (otlp to
    # OTEL_EXPORTER_OTLP_ENDPOINT) would only fail every interval on a local run.
    default = "otlp" if env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip() else "none"
    names = [n.strip().lower() for n in env.get("OTEL_METRICS_EXPORTER", default).split(",")]
    unknown = set(names) - {"otlp", "prometheus", "console", "none", ""}
    if unknown:
        raise ConfigError(
            f"OTEL_METRICS_EXPORTER must be otlp, prometheus, console or none, got {unknown}"
        )
    interval = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if interval and (not interval.isdigit() or int(interval) == 0):
        raise ConfigError(
            f"OTEL_METRIC_EXPORT_INTERVAL must be a positive whole number of ms, got {interval!r}"
        )
    exporters: list[MetricExporter] = []
    if "console" in names:
        exporters.append(ConsoleMetricExporter())
    if "otlp" in names:
        exporters.append(_otlp(env))
    # The reader reads OTEL_METRIC_EXPORT_INTERVAL and OTEL_METRIC_EXPORT_TIMEOUT itself.
    readers: list[MetricReader] = [PeriodicExportingMetricReader(e) for e in exporters]
    if "prometheus" in names:
        readers.append(_prometheus(env))
    if not readers:
        return
    provider = MeterProvider(
        resource=service_resource(default_name), metric_readers=readers, shutdown_on_exit=False
    )
    metrics.set_meter_provider(provider)
    _provider = provider


def shutdown_metrics(timeout_s: float = 5.0) -> None:
    """Export the last values, but never wait more than `timeout_s` for a backend."""
    if _provider is not None:
        shut_down(_provider.shutdown, timeout_s)


def _prometheus(env: Mapping[str, str]) -> MetricReader:
    """A /metrics endpoint for Prometheus to scrape, on OTEL_EXPORTER_PROMETHEUS_HOST:PORT
    (default localhost:9464): the pull alternative to pushing OTLP (docs/metrics.md)."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ImportError:
        raise ConfigError(
            "OTEL_METRICS_EXPORTER=prometheus needs the Prometheus exporter, an optional extra: "
            "pip install 'modelwatch[prometheus]' (or use otlp)"
        ) from None
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or "localhost"
    raw = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "").strip() or "9464"
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"OTEL_EXPORTER_PROMETHEUS_PORT must be a TCP port, got {raw!r}")
    try:
        start_http_server(int(raw), addr=host)
    except OSError as exc:
        raise ConfigError(
            f"OTEL_EXPORTER_PROMETHEUS_HOST/PORT {host}:{raw}: {exc.strerror or exc}"
        ) from None
    return PrometheusMetricReader()


def _otlp(env: Mapping[str, str]) -> MetricExporter:
    protocol = (env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")).strip()  # fmt: skip
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcExporter,
            )
        except ImportError:
            raise grpc_missing() from None
        return GrpcExporter()
    raise ConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {protocol!r}"
    )


Key = tuple[tuple[str, Any], ...]


class Tally:
    """Cumulative counts per attribute set, observed by an observable counter at collection."""

    def __init__(self) -> None:
        self.counts: dict[Key, int] = {}

    def add(self, key: Key, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def set(self, key: Key, total: int) -> None:
        """A cumulative total the caller keeps itself."""
        self.counts[key] = total

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # list() copies under the GIL: the loop thread may add a key meanwhile.
        return [Observation(n, dict(key)) for key, n in list(self.counts.items())]


class Instruments:
    """Every metric modelwatch records; made once per process (`instruments()`)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.sent = self._counter(meter, "messaging.client.sent.messages", "{message}",
                                  "Messages the service published (attempts).")  # fmt: skip
        self.consumed = self._counter(meter, "messaging.client.consumed.messages", "{message}",
                                      "Messages delivered to the service's handlers.")  # fmt: skip
        self.dead_letters = self._counter(meter, "modelwatch.dead_letters", "{message}",
                                          "Inputs dead-lettered, by reason class.")  # fmt: skip
        self.rows = self._counter(meter, "modelwatch.rows.recorded", "{row}",
                                  "Rows the metric service made durable in its CSV.")  # fmt: skip
        self.orphans = self._counter(meter, "modelwatch.orphans", "{record}",
                                     "Halves that never met their partner.")  # fmt: skip
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s",
            description="Time to handle one delivered message (decode, validate, handle).",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )  # fmt: skip
        self.absolute_error = meter.create_histogram(
            "modelwatch.absolute_error",
            description="|y_true - y_pred| of each recorded row.",
            explicit_bucket_boundaries_advisory=list(ERROR_BUCKETS),
        )  # fmt: skip
        self.statistic = meter.create_gauge(
            "modelwatch.monitor.statistic",
            description="The last closed window's value of each statistic the monitor judges.",
        )  # fmt: skip
        self.threshold = meter.create_gauge(
            "modelwatch.monitor.threshold",
            description="The threshold each statistic is judged against (absent: reported only).",
        )  # fmt: skip
        self.alert_open = meter.create_gauge(
            "modelwatch.monitor.alert.open",
            description="1 while the monitor's alert on a statistic and feature is open, else 0.",
        )  # fmt: skip

    @staticmethod
    def _counter(meter: metrics.Meter, name: str, unit: str, description: str) -> Tally:
        tally = Tally()
        meter.create_observable_counter(name, [tally.observe], unit=unit, description=description)
        return tally


@functools.cache
def instruments() -> Instruments:
    """The instruments of the global meter provider: call after setup_metrics (the services'
    first message comes after it), so they belong to the real provider, not a proxy."""
    return Instruments(metrics.get_meter("modelwatch"))


@functools.cache
def messaging_key(operation: str, exchange: str, queue: str = "", error: str = "") -> Key:
    """The messaging attributes of a count, made once per combination (it is asked per message)."""
    key: list[tuple[str, Any]] = [
        (attr.MESSAGING_SYSTEM, "rabbitmq"),
        (attr.MESSAGING_OPERATION_NAME, operation),
        (attr.MESSAGING_DESTINATION_NAME, exchange),
    ]
    if queue:
        key.append((attr.MESSAGING_SUBSCRIPTION_NAME, queue))
    if error:
        key.append((attr.ERROR_TYPE, error))
    return tuple(key)


@functools.cache
def attributes_of(key: Key) -> dict[str, Any]:
    """`key` as the attributes dict an SDK instrument takes, made once per key."""
    return dict(key)


def reason_class(reason: str) -> str:
    """A dead letter's reason as a small fixed set, fit for a metric label."""
    for needle, name in _REASONS:
        if needle in reason:
            return name
    return "rejected"


_REASONS = (
    ("not valid JSON", "invalid_json"), ("not valid UTF-8", "invalid_json"),
    ("JSON allows", "invalid_json"), ("schema violation", "schema_violation"),
    ("unknown schema version", "unknown_version"), ("does not accept", "unaccepted_version"),
    ("missing schema header", "missing_schema"), ("output refused", "output_too_large"),
    ("handler failed", "handler_failed"),
)  # fmt: skip
