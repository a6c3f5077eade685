"""Every private name of a dependency that modelwatch touches, in one place, with its fallback.

Two measured speed-ups reach into dependencies (docs/benchmark.md has the figures): the joined
socket writes (services/common/broker/wire.py) and the OTLP encoder and transport
(observability/otlp.py). A minor release may rename any of these names, so:

- each distribution below is pinned in pyproject.toml to the minor of the version in `CHECKED`;
- the module that uses a name checks it when it loads (`present`) and, when it is not as
  expected, takes the public path instead and logs one line (`fall_back`);
- tests/test_internals.py fails when an installed version differs from `CHECKED`, so a version bump
  comes with a re-check of this list (run tests/test_internals.py, tests/test_otlp.py and
  tests/test_faults.py, then update `CHECKED`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger("modelwatch.internals")

CHECKED = {  # distribution -> the exact version every entry below was checked against
    "pika": "1.4.4",
    "opentelemetry-api": "1.45.1",
    "opentelemetry-sdk": "1.45.1",
    "opentelemetry-exporter-otlp-proto-http": "1.45.1",
    "opentelemetry-exporter-http-transport": "0.66b1",
}


@dataclass(frozen=True)
class Internal:
    distribution: str
    name: str
    used_by: str
    fallback: str


INTERNALS = (
    Internal("pika", "pika.adapters.utils.io_services_utils._AsyncTransportBase._produce",
             "broker/wire.py: one send() per loop iteration", "pika's own send loop"),
    Internal("pika", "_AsyncTransportBase._tx_buffers (set in __init__)",
             "broker/wire.py: the frames waiting to be sent", "pika's own send loop"),
    Internal("opentelemetry-sdk", "opentelemetry.sdk.trace.ReadableSpan._events, ._links",
             "observability/otlp_encoding.py: a span without copies", "the public properties"),
    Internal("opentelemetry-sdk", "opentelemetry.sdk.util.BoundedList._dq",
             "observability/otlp_encoding.py: events, links uncopied", "the public properties"),
    Internal("opentelemetry-sdk", "logger 'opentelemetry.sdk._shared_internal'",
             "observability/tracing.py: each 'queue full' warning once", "repeated warnings"),
    Internal("opentelemetry-api", "ReadableSpan._attributes, BoundedAttributes._dict",
             "observability/otlp_encoding.py: attributes, no Mapping ABC", "the public mapping"),
    Internal("opentelemetry-exporter-otlp-proto-http",
             "OTLPSpanExporter(_transport=), ._client, ._max_request_size, ._shutdown",
             "observability/otlp.py: our encoder and transport", "the SDK exporter unchanged"),
    Internal("opentelemetry-exporter-http-transport",
             "opentelemetry.exporter.http.transport._urllib3.Urllib3HTTPTransport(verify=, cert=)",
             "observability/otlp.py: urllib3 instead of requests", "the SDK's requests transport"),
)  # fmt: skip


def installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def unchecked() -> dict[str, tuple[str, str]]:
    """Distributions installed at another version than the list was checked against:
    name -> (checked, installed)."""
    found = {name: (version, installed(name)) for name, version in CHECKED.items()}
    return {name: pair for name, pair in found.items() if pair[0] != pair[1]}


def present(obj: object, *dotted: str) -> bool:
    """Whether every dotted attribute path exists on `obj`."""
    for path in dotted:
        target = obj
        for part in path.split("."):
            if not hasattr(target, part):
                return False
            target = getattr(target, part)
    return True


_said: set[str] = set()


def fall_back(what: str, why: str) -> None:
    """Say once per process that `what` takes the public path, and why."""
    if what not in _said:
        _said.add(what)
        log.warning("%s: %s; using the public path (see services/common/internals.py)", what, why)
