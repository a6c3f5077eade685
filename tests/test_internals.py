"""The private names of dependencies we use: checked versions, pins, and the public fallbacks.

services/common/internals.py lists every private name of pika and the OpenTelemetry SDK and
exporter that the code touches. These tests fail when a dependency moves to a version the list was
not checked against, when its pin in pyproject.toml would admit another minor, and they prove the
fallbacks: with the internals gone, pika keeps its own send loop and the exporter is the SDK's,
which still delivers every span to a real receiver.
"""

from __future__ import annotations

import logging
import tomllib

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from packaging.requirements import Requirement
from packaging.version import Version

from observability import otlp
from services.common import internals
from services.common.broker import wire
from tests.conftest import REPO, wait_until
from tools.otlp_sink import Receiver


def test_installed_versions_are_the_ones_the_internals_were_checked_against() -> None:
    assert internals.unchecked() == {}, (
        "a dependency with private names in services/common/internals.py changed version: "
        "re-check the list (tests/test_internals.py, test_otlp.py, test_faults.py), then update "
        "CHECKED and the pin in pyproject.toml"
    )


def test_each_checked_distribution_is_pinned_to_that_minor() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    for name, checked in internals.CHECKED.items():
        version = Version(checked)
        assert name in pins, f"{name} is not a declared dependency"
        assert pins[name].contains(checked, prereleases=True), f"{name} pin excludes {checked}"
        next_minor = f"{version.major}.{version.minor + 1}.0"
        assert not pins[name].contains(next_minor, prereleases=True), f"{name} admits {next_minor}"
    assert {i.distribution for i in internals.INTERNALS} == set(internals.CHECKED)


def test_every_internal_is_where_the_code_expects_it() -> None:
    assert wire.usable() == ""
    assert otlp._sdk_differs() == ""
    assert otlp.OTLPSpanExporter()._fast


def test_without_the_internals_pika_keeps_its_own_send_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Transport:  # what a pika release without _tx_buffers would look like
        def __init__(self) -> None:
            self._buffers: list[bytes] = []

        def _produce(self) -> None:
            pass

    monkeypatch.setattr(wire, "_Transport", Transport)
    monkeypatch.setattr(internals, "_said", set())
    with caplog.at_level(logging.WARNING, "modelwatch.internals"):
        assert not wire.join_sends()
    assert Transport._produce is not wire._produce_joined
    assert "joined socket writes: _AsyncTransportBase no longer keeps _tx_buffers" in caplog.text
    assert len(caplog.records) == 1


def test_without_the_internals_the_exporter_is_the_sdks_and_delivers_every_span(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setattr(otlp, "_sdk_differs", lambda: "SDK spans no longer keep _events._dq")
    monkeypatch.setattr(internals, "_said", set())
    monkeypatch.setattr(otlp, "encode_request", lambda spans: pytest.fail("not the SDK's path"))
    try:
        with caplog.at_level(logging.WARNING, "modelwatch.internals"):
            exporter = otlp.OTLPSpanExporter()
        assert not exporter._fast
        assert "fast OTLP encoding: SDK spans no longer keep _events._dq" in caplog.text
        provider = TracerProvider(resource=Resource.create({"service.name": "fallback"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        for n in range(5):
            with provider.get_tracer("t").start_as_current_span(f"span {n}", attributes={"n": n}):
                pass
        spans = wait_until(lambda: len(receiver.snapshot()) == 5 and receiver.snapshot(), 10,
                           "five spans at the receiver")  # fmt: skip
        assert sorted(s.name for s in spans) == [f"span {n}" for n in range(5)]
        assert {s.service for s in spans} == {"fallback"}
        provider.shutdown()
    finally:
        receiver.close()
