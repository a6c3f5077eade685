"""The services' OpenTelemetry metrics, sent by the real OTLP exporter to a receiver the test runs,
on the real pipeline: every count matches what happened, names and attributes follow the messaging
conventions, and the monitor's gauges hold what its window reports said.

Prometheus itself, with the compose configuration, is tests/test_metrics_prometheus.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from services.common.contracts import Contracts
from tests.conftest import Amqp, Services, read_csv, wait_until
from tests.test_pipeline import headers_for, spy_on
from tools.otlp_sink import Receiver

pytestmark = pytest.mark.broker

ROWS = 300


def metered(receiver: Receiver) -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{receiver.endpoint}/v1/metrics",
            "OTEL_METRIC_EXPORT_INTERVAL": "300"}  # fmt: skip


def last(receiver: Receiver, name: str) -> dict[tuple, float]:
    """The last exported value of `name` per (service, attributes)."""
    found: dict[tuple, float] = {}
    for p in list(receiver.points):
        if p.name == name:
            found[(p.service, tuple(sorted(p.attributes.items())))] = p.value
    return found


def total(receiver: Receiver, name: str, service: str, **match: str) -> float:
    return sum(
        v for (s, attrs), v in last(receiver, name).items()
        if s == service and all(dict(attrs).get(k) == m for k, m in match.items())
    )  # fmt: skip


def test_every_count_matches_the_run_and_the_gauges_hold_the_window_reports(
    services: Services, service_env: dict, amqp: Amqp, receiver: Receiver, contracts: Contracts
) -> None:
    spy = spy_on(amqp, "window_report")
    env = metered(receiver)
    for name in ("model", "metric"):
        services.start(name, **env)
    services.start("monitor", MONITOR_WINDOW_ROWS="100", MONITOR_MIN_ROWS="50", **env)
    wait_until(
        lambda: all("connected" in services.output(n) for n in ("model", "metric", "monitor")),
        60,
        "consumers",
    )
    amqp.publish("features", b"{not json", headers_for(contracts, "features"), "not-json")
    services.start("features", FEATURES_COUNT=str(ROWS), FEATURES_SEED="3", **env)
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    wait_until(lambda: len(read_csv(csv_path)) >= ROWS, 60, f"{ROWS} rows")

    def settled() -> bool:
        return (
            total(receiver, "modelwatch.rows.recorded", "metric") == ROWS
            and total(
                receiver,
                "messaging.client.consumed.messages",
                "monitor",
                **{"messaging.destination.subscription.name": "monitor.metric_record"},
            )
            == ROWS
        )

    wait_until(settled, 30, "the counts of all rows exported")  # fmt: skip

    consumed = "messaging.client.consumed.messages"
    queue = "messaging.destination.subscription.name"
    ok = {"messaging.system": "rabbitmq", "messaging.operation.name": "process"}
    assert total(receiver, consumed, "model", **ok, **{queue: "model.features"}) == ROWS + 1
    assert total(receiver, consumed, "model", **{queue: "model.features",
                                                  "error.type": "Rejected"}) == 1  # fmt: skip
    assert total(receiver, consumed, "metric", **{queue: "metric.y_true"}) == ROWS
    assert total(receiver, consumed, "metric", **{queue: "metric.y_pred"}) == ROWS
    assert total(receiver, consumed, "monitor", **{queue: "monitor.features"}) == ROWS + 1
    sent = "messaging.client.sent.messages"
    publish = {"messaging.operation.name": "publish"}
    for service, exchange in (("features", "features"), ("features", "y_true"),
                              ("model", "y_pred"), ("metric", "metric_record")):  # fmt: skip
        assert (
            total(receiver, sent, service, **publish, **{"messaging.destination.name": exchange})
            >= ROWS
        ), (service, exchange)
    dead = last(receiver, "modelwatch.dead_letters")
    reason = {"modelwatch.dead_letter.reason_class": "invalid_json"}
    assert {s: dict(a) for (s, a) in dead} == {  # both consumers of features refused it
        "model": {queue: "model.features", **reason},
        "monitor": {queue: "monitor.features", **reason},
    }
    assert list(dead.values()) == [1, 1]
    # Histograms: one process duration per delivery, one absolute error per recorded row.
    durations = total(receiver, "messaging.process.duration", "metric", **{queue: "metric.y_true"})
    assert durations == ROWS
    assert total(receiver, "modelwatch.absolute_error", "metric") == ROWS

    # The gauges carry the last window report's statistics, value for value.
    reports = [json.loads(body) for _, body in amqp.drain(spy)]
    latest: dict[tuple, float] = {}
    for report in reports:
        for s in report["statistics"]:
            latest[s["statistic"], s["feature"], report["stream"]] = s["value"]
    assert len(latest) > 30, "features and predictions windows were reported"
    gauges = defaultdict(dict)
    for (service, attrs), value in last(receiver, "modelwatch.monitor.statistic").items():
        a = dict(attrs)
        gauges[a["statistic"], a["feature"], a["stream"]] = value
        assert service == "monitor"
    assert gauges == pytest.approx(latest)
