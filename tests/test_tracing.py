"""Traces as the real OTLP exporter sends them, received by a real OTLP/HTTP endpoint."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import pytest

from observability import attributes
from observability.attributes import CUSTOM
from tests.conftest import Amqp, Services, one, read_csv, traced, wait_until
from tools.otlp_sink import Receiver, Span

pytestmark = pytest.mark.broker

OLD_KEYS = {"messaging.destination", "messaging.operation", "messaging.temp_destination",
            "net.peer.name", "net.peer.port"}  # fmt: skip
MESSAGE_ID = "messaging.message.id"


def run_pipeline(services: Services, env: dict[str, str], n: int, csv_path: Path) -> None:
    services.start("metric", **env)
    services.start("model", **env)
    services.start("features", FEATURES_COUNT=str(n), FEATURES_INTERVAL_S="0.01", **env)
    wait_until(lambda: len(read_csv(csv_path)) >= n, 60, f"{n} rows")
    for name in ("features", "model", "metric"):
        assert services.stop(name) == 0, services.output(name)


def test_each_emission_is_one_trace_through_features_model_metric_and_the_monitor_links_it(
    services: Services, service_env: dict, receiver: Receiver
) -> None:
    n = 20
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    env = traced(receiver)
    services.start("monitor", **env)

    def monitored() -> int:
        return sum(len(s.links) for s in receiver.snapshot()
                   if s.name == "process metric_record" and s.service == "monitor")  # fmt: skip

    run_pipeline(services, env, n, csv_path)
    wait_until(lambda: monitored() >= n, 30, "the monitor to process every recorded row")
    assert services.stop("monitor") == 0, services.output("monitor")
    rows = read_csv(csv_path)
    by_trace: dict[str, list[Span]] = defaultdict(list)
    monitor: list[Span] = []
    for span in receiver.snapshot():
        (monitor if span.service == "monitor" else by_trace[span.trace_id]).append(span)
    linked_from = {link: s for s in monitor for link in s.links}

    for row in rows:
        id_, spans = row["message_id"], by_trace[row["trace_id"]]
        assert {s.service for s in spans} == {"features", "model", "metric"}, id_
        emit = one(spans, name="emit", service="features")
        assert emit.parent_id == "" and emit.kind == "INTERNAL"
        pub_features = one(spans, name="publish features", kind="PRODUCER")
        pub_y_true = one(spans, name="publish y_true", kind="PRODUCER")
        assert pub_features.parent_id == pub_y_true.parent_id == emit.span_id
        proc_features = one(spans, name="process features", kind="CONSUMER", service="model")
        assert proc_features.parent_id == pub_features.span_id
        predict = one(spans, name="predict", service="model")
        pub_y_pred = one(spans, name="publish y_pred", kind="PRODUCER", service="model")
        assert predict.parent_id == pub_y_pred.parent_id == proc_features.span_id
        assert predict.attributes["modelwatch.model.version"] == row["model_version"]
        proc_y_true = one(spans, name="process y_true", kind="CONSUMER", service="metric")
        proc_y_pred = one(spans, name="process y_pred", kind="CONSUMER", service="metric")
        assert proc_y_true.parent_id == pub_y_true.span_id
        assert proc_y_pred.parent_id == pub_y_pred.span_id
        record = one(spans, name="record error", service="metric")
        assert record.parent_id in (proc_y_true.span_id, proc_y_pred.span_id)
        assert set(record.links) == {(row["trace_id"], proc_y_true.span_id),
                                     (row["trace_id"], proc_y_pred.span_id)}  # fmt: skip
        assert record.attributes["modelwatch.absolute_error"] == pytest.approx(
            float(row["absolute_error"]))  # fmt: skip
        # The durable row goes out as metric_record under its record span. The monitor, which
        # aggregates, takes the features and the row in batches: a process span per batch, in
        # a trace of its own, linked to each message's publish.
        pub_record = one(spans, name="publish metric_record", kind="PRODUCER", service="metric")
        assert pub_record.parent_id == record.span_id
        watch_features = linked_from[row["trace_id"], pub_features.span_id]
        watch_record = linked_from[row["trace_id"], pub_record.span_id]
        for watch, exchange in ((watch_features, "features"), (watch_record, "metric_record")):
            assert (watch.name, watch.kind) == (f"process {exchange}", "CONSUMER")
            assert watch.trace_id != row["trace_id"] and watch.parent_id == ""
            assert watch.attributes["messaging.batch.message_count"] == len(watch.links)
            assert watch.attributes["messaging.destination.name"] == exchange
            assert MESSAGE_ID not in watch.attributes
        for span in spans:
            assert span.attributes.get(MESSAGE_ID) == id_, (span.name, span.attributes)
            assert not OLD_KEYS & set(span.attributes), span.name
            if span.kind in ("PRODUCER", "CONSUMER"):
                assert span.attributes["messaging.system"] == "rabbitmq"
                assert span.attributes["messaging.destination.name"] == span.name.split()[1]
                assert span.attributes["messaging.operation.name"] == span.name.split()[0]
    assert len({r["trace_id"] for r in rows}) == n


def test_resource_comes_from_the_environment_and_defaults_to_the_service_name(
    services: Services, service_env: dict, receiver: Receiver
) -> None:
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    env = traced(receiver, OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test")
    services.start("metric", **env)
    services.start("model", **env, OTEL_SERVICE_NAME="model-canary")
    services.start("features", FEATURES_COUNT="3", FEATURES_INTERVAL_S="0", **env)
    wait_until(lambda: len(read_csv(csv_path)) >= 3, 60, "3 rows")
    for name in ("features", "model", "metric"):
        services.stop(name)
    spans = receiver.snapshot()
    assert {s.service for s in spans} == {"features", "model-canary", "metric"}
    assert {s.resource["deployment.environment.name"] for s in spans} == {"test"}


def test_flush_batches_link_every_message_they_acknowledge(
    services: Services, service_env: dict, receiver: Receiver
) -> None:
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    run_pipeline(services, traced(receiver), 30, csv_path)
    spans = receiver.snapshot()
    flushes = [s for s in spans if s.name == "flush results"]
    assert flushes and all(s.parent_id == "" for s in flushes)
    linked = {link for s in flushes for link in s.links}
    processed = {(s.trace_id, s.span_id) for s in spans if s.name.startswith("process y_")}
    assert processed <= linked
    assert sum(s.attributes["modelwatch.batch.rows"] for s in flushes) == len(processed)


def test_a_dead_backend_changes_nothing_but_one_warning(
    services: Services, service_env: dict, receiver: Receiver
) -> None:
    n = 200
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    closed = receiver.endpoint
    receiver.close()  # nothing listens on that port any more
    started = time.monotonic()
    run_pipeline(services, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT":
                            closed, "OTEL_BSP_SCHEDULE_DELAY": "100"}, n, csv_path)  # fmt: skip
    assert len({r["message_id"] for r in read_csv(csv_path)}) == n
    assert time.monotonic() - started < 45
    for name in ("features", "model", "metric"):
        assert services.output(name).count("spans are dropped") == 1, services.output(name)


def test_console_exporter_prints_spans_for_a_run_without_jaeger(
    services: Services, service_env: dict
) -> None:
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    run_pipeline(services, env, 2, csv_path)
    assert '"name": "process features"' in services.output("model")
    assert '"name": "record error"' in services.output("metric")


def test_log_lines_written_while_handling_a_message_carry_its_trace(
    services: Services, service_env: dict, receiver: Receiver, amqp: Amqp
) -> None:
    services.start("model", **traced(receiver))
    wait_until(lambda: "connected" in services.output("model"), 30, "model to connect")
    amqp.publish("features", b"{broken", {"schema": "x"}, message_id="broken-1")
    line = wait_until(
        lambda: next((ln for ln in services.output("model").splitlines()
                      if "dead-lettering broken-1" in ln), None), 30, "the dead-letter log line",
    )  # fmt: skip
    found = re.search(r"trace_id=([0-9a-f]{32}) span_id=([0-9a-f]{16})", line)
    assert found, line
    services.stop("model")
    span = one(receiver.snapshot(), trace_id=found[1], span_id=found[2])
    assert span.name == "process features"
    assert span.status_code == 2  # ERROR
    assert "unknown schema version" in span.attributes["modelwatch.dead_letter.reason"]


def test_every_custom_attribute_a_run_emits_is_described_and_every_described_one_emitted(
    services: Services, service_env: dict, receiver: Receiver, amqp: Amqp
) -> None:
    # A run that takes every path with a span attribute of its own: rows recorded, a flush, and
    # a dead letter.
    env, csv_path = traced(receiver), Path(service_env["METRIC_LOG_PATH"])
    services.start("model", **env)
    wait_until(lambda: "connected" in services.output("model"), 30, "model to connect")
    amqp.publish("features", b"{broken", {"schema": "x"}, message_id="broken-1")
    services.start("metric", **env)
    services.start("features", FEATURES_COUNT="5", FEATURES_INTERVAL_S="0.01", **env)
    wait_until(lambda: len(read_csv(csv_path)) >= 5, 60, "5 rows")
    for name in ("features", "model", "metric"):
        assert services.stop(name) == 0, services.output(name)
    emitted = {key for span in receiver.snapshot() for key in span.attributes}
    assert {k for k in emitted if k.startswith("modelwatch.")} == set(CUSTOM)
    assert all(CUSTOM.values())
    # Every other key is one of the OpenTelemetry names defined in observability/attributes.py.
    defined = {v for k, v in vars(attributes).items() if k.isupper() and isinstance(v, str)}
    assert emitted <= defined, emitted - defined


def test_sigterm_exports_every_span_still_waiting_in_the_batch(
    services: Services, service_env: dict, receiver: Receiver
) -> None:
    # A batch that never fills and a schedule that never fires: only the shutdown flush on
    # SIGTERM can deliver these spans.
    held = traced(receiver, OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_BSP_MAX_QUEUE_SIZE="100000",
                  OTEL_BSP_MAX_EXPORT_BATCH_SIZE="100000")  # fmt: skip
    n = 30
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    services.start("metric", **held)
    services.start("model", **held)
    services.start("features", FEATURES_COUNT=str(n), FEATURES_INTERVAL_S="0.01", **held)
    wait_until(lambda: len(read_csv(csv_path)) >= n, 60, f"{n} rows")
    assert services.procs["features"].wait(30) == 0  # a finite run flushes on its way out too
    time.sleep(0.5)
    assert not [s for s in receiver.snapshot() if s.service in ("model", "metric")]
    for name in ("model", "metric"):
        assert services.stop(name) == 0, services.output(name)
    ids = {row["message_id"] for row in read_csv(csv_path)}
    spans = receiver.snapshot()
    for service, name in (("model", "process features"), ("model", "predict"),
                          ("metric", "process y_pred"), ("metric", "record error")):  # fmt: skip
        got = {s.attributes.get(MESSAGE_ID) for s in spans
               if (s.service, s.name) == (service, name)}  # fmt: skip
        assert got == ids, (service, name)
    assert {s.attributes.get(MESSAGE_ID) for s in spans if s.name == "emit"} == ids
