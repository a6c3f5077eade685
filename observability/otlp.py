"""The OTLP/HTTP span exporter with a faster encoder: the same protobuf, written directly.

The SDK's encoder builds a protobuf object for every span, attribute and value, and hashes the
resource (a JSON dump) once per span; with nine spans a row that was the largest single cost of
tracing (docs/benchmark.md). otlp_encoding.py writes the wire format of `ExportTraceServiceRequest`
(opentelemetry-proto trace/v1) with plain byte strings instead; tests/test_otlp.py checks that it
decodes to exactly what the SDK's `encode_spans` builds. Retries and failure logging stay the SDK
exporter's own. The HTTP transport is the SDK's urllib3 one rather than its default, requests,
which costs less CPU a POST (docs/benchmark.md), for the same TLS settings
(OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY). A credential-provider
session (OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER) is a requests session, and
only requests reads HTTP(S)_PROXY: with either set, the SDK's requests transport is kept.

Both read private names of the SDK and exporter (services/common/internals.py lists them). The
exporter checks them when it is made; if any is not as checked, it is the SDK's exporter unchanged
(its encoder, its transport) and one warning says so.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as _SdkExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from observability.otlp_encoding import encode_request
from services.common.internals import fall_back, present

try:  # private modules of opentelemetry-exporter-http-transport
    from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
except ImportError:  # pragma: no cover - the pinned version has it
    Urllib3HTTPTransport = None

log = logging.getLogger("modelwatch.tracing")


class OTLPSpanExporter(_SdkExporter):
    """`OTLPSpanExporter` (http/protobuf) that encodes with `encode_request` and sends with
    urllib3, or the SDK's exporter unchanged when its internals are not as checked."""

    def __init__(self) -> None:
        why = _sdk_differs()
        transport = None if why else _transport(os.environ)
        if transport is None:
            super().__init__()
        else:
            super().__init__(_transport=transport)
        if not why and not present(self, "_client", "_max_request_size", "_shutdown"):
            why = "OTLPSpanExporter no longer has _client, _max_request_size or _shutdown"
        if why:
            fall_back("fast OTLP encoding", why)
        self._fast = not why

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self._fast or self._shutdown:
            return super().export(spans)  # the SDK's path, or let the SDK say why not
        try:
            data = encode_request(spans)
        except Exception:  # an encoding gap must never cost the spans
            log.exception("fast OTLP encoding failed; using the SDK's encoder for this batch")
            return super().export(spans)
        if len(data) > self._max_request_size:
            return super().export(spans)  # the SDK drops it and says so
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


def _sdk_differs() -> str:
    """What is not as checked among the private names the encoder and exporter read, or ""."""
    if "_transport" not in inspect.signature(_SdkExporter.__init__).parameters:
        return "OTLPSpanExporter no longer takes _transport="
    span = TracerProvider().get_tracer(__name__).start_span("check")
    if not present(span, "_attributes._dict", "_events._dq", "_links._dq"):
        return "SDK spans no longer keep _attributes._dict, _events._dq and _links._dq"
    return ""


def _transport(env: Mapping[str, str]) -> Any:
    """The urllib3 transport with the TLS settings the SDK would read; None leaves the SDK's."""
    keep_requests = (  # a credential provider's session, or proxies only requests reads
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
        "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
    )  # fmt: skip
    if any(env.get(name) for name in keep_requests) or Urllib3HTTPTransport is None:
        return None

    def setting(name: str) -> str | None:
        return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")

    verify: bool | str = setting("CERTIFICATE") or True
    cert_file, key_file = setting("CLIENT_CERTIFICATE"), setting("CLIENT_KEY")
    cert = (cert_file, key_file) if cert_file and key_file else cert_file
    return Urllib3HTTPTransport(verify=verify, cert=cert)
