"""Tracing set-up: one function, configured only by the standard OpenTelemetry variables.

`setup_tracing(default_name)` reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (the service's own
name is only the fallback, so the environment always wins), OTEL_TRACES_EXPORTER (otlp, console,
none, or a comma-separated list), OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf or grpc),
OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318, where Jaeger listens),
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_* and OTEL_SDK_DISABLED. Spans leave through
a BatchSpanProcessor, so a slow or dead backend never slows the pipeline: spans are dropped and
that is reported once, not once per batch.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from services.common.internals import fall_back
from services.common.settings import ConfigError

log = logging.getLogger("modelwatch.tracing")

SAMPLERS = {
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
}  # fmt: skip
_provider: TracerProvider | None = None
# Our defaults where the variables are unset: export small batches often. The SDK's (512 spans
# every 5 s) made the export thread hold the GIL long enough to raise p99 latency markedly (figures
# in docs/benchmark.md); the queue is larger so a burst at full speed drops nothing.
_BSP = {
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
}
_BSP_DEFAULTS = {
    "OTEL_BSP_SCHEDULE_DELAY": 100,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512,
    "OTEL_BSP_MAX_QUEUE_SIZE": 16384,
    "OTEL_BSP_EXPORT_TIMEOUT": 30000,
}


class ExportHealth:
    """Whether span export is failing right now; shared by the exporters of this process."""

    failing = False


def setup_tracing(default_name: str, env: Mapping[str, str] = os.environ) -> None:
    """Install the global tracer provider for this process; a bad variable raises ConfigError."""
    global _provider
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    exporters = _exporters(env)
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    provider = TracerProvider(resource=service_resource(default_name), shutdown_on_exit=False)
    batching = {key: _bsp(env, variable) for variable, key in _BSP.items()}
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(_Reporting(exporter), **batching))
    trace.set_tracer_provider(provider)
    _provider = provider
    # The exporters log every failed attempt; _ExportTrouble turns that into one warning.
    exporter_logs = logging.getLogger("opentelemetry.exporter")
    exporter_logs.addHandler(_ExportTrouble())
    exporter_logs.propagate = False
    # A private logger name of the SDK (services/common/internals.py): if it moves, the SDK's
    # "queue full, dropping spans" warnings come as often as it writes them.
    if importlib.util.find_spec("opentelemetry.sdk._shared_internal") is None:
        fall_back(
            "one warning per dropped-span message", "opentelemetry.sdk._shared_internal moved"
        )
    logging.getLogger("opentelemetry.sdk._shared_internal").addFilter(_Once())


def service_resource(default_name: str) -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the service's own name only as fallback."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_name}))
    return resource


def _bsp(env: Mapping[str, str], variable: str) -> int:
    raw = env.get(variable, "").strip()
    if not raw:
        return _BSP_DEFAULTS[variable]
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"{variable} must be a positive whole number, got {raw!r}")
    return int(raw)


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Export what is buffered, but never wait more than `timeout_s` for a backend to answer."""
    if _provider is not None and not shut_down(_provider.shutdown, timeout_s):
        log.warning("trace backend did not take the last spans within %g s; dropped", timeout_s)


def shut_down(shutdown: Callable[[], object], timeout_s: float) -> bool:
    """Run a provider's `shutdown` (its last export) for at most `timeout_s`, 0.5 s while exports
    are failing; False if it had not finished by then."""
    if ExportHealth.failing:
        timeout_s = min(timeout_s, 0.5)  # a backend that is down will not take them now either
    worker = threading.Thread(target=shutdown, daemon=True, name="otel-shutdown")
    worker.start()
    worker.join(timeout_s)
    return not worker.is_alive()


def grpc_missing() -> ConfigError:
    return ConfigError(
        "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter, an optional extra: "
        "pip install 'modelwatch[grpc]' (or use http/protobuf)"
    )


@functools.cache
def tracer(name: str = "modelwatch") -> trace.Tracer:
    """A tracer of the global provider (a proxy until setup_tracing runs), made once per name:
    get_tracer builds a new object each call, a cost the metric service felt on every message
    (docs/benchmark.md)."""
    return trace.get_tracer(name)


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    unknown = set(names) - {"otlp", "console", "none", ""}
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {unknown}")
    exporters: list[SpanExporter] = []
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    if "otlp" in names:
        exporters.append(_otlp(env))
    return exporters


def _otlp(env: Mapping[str, str]) -> SpanExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() == "http/protobuf":
        from observability.otlp import OTLPSpanExporter  # the SDK's, with a faster encoder

        return OTLPSpanExporter()
    if protocol.strip() == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise grpc_missing() from None
        return GrpcExporter()
    raise ConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {protocol!r}"
    )


class _ExportTrouble(logging.Handler):
    """Receives the exporters' own log records: the first failure becomes our one warning."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING and not ExportHealth.failing:
            ExportHealth.failing = True
            log.warning(
                "trace export is failing (%s); spans are dropped until it works again "
                "(rows are recorded as usual)",
                record.getMessage()[:300],
            )


class _Reporting(SpanExporter):
    """Reports a failed export once, and once that exports work again."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - an exporter bug must not reach the pipeline
            logging.getLogger("opentelemetry.exporter").error("export raised %r", exc)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE and not ExportHealth.failing:
            logging.getLogger("opentelemetry.exporter").warning("%s failed", type(self._inner))
        elif result is SpanExportResult.SUCCESS and ExportHealth.failing:
            ExportHealth.failing = False
            log.warning("trace export works again")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _Once(logging.Filter):
    """Lets each distinct message template through once (e.g. 'Queue full, dropping spans')."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[object] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self._seen:
            return False
        self._seen.add(record.msg)
        return True


class TraceContextFilter(logging.Filter):
    """Adds `trace` to every log record: ' trace_id=… span_id=…' inside a span, else ''."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.trace = (
            f" trace_id={context.trace_id:032x} span_id={context.span_id:016x}"
            if context.is_valid
            else ""
        )
        return True
