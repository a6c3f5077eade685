"""The monitor on the real broker: drift you cause is alerted, no drift is not, bad rows are
dead-lettered, a restart forgets nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pika.exceptions
import pytest

from observability.attributes import DEAD_LETTER_REASON
from services.common.contracts import Contracts
from tests.conftest import REPO, Amqp, Services, read_csv, traced, wait_until
from tests.test_pipeline import headers_for, spy_on
from tools.otlp_sink import Receiver

pytestmark = pytest.mark.broker

WINDOWS = {"MONITOR_WINDOW_ROWS": "500", "MONITOR_MIN_ROWS": "300", "MONITOR_WINDOW_S": "600"}


def start_pipeline(services: Services, rows: int, **features: str) -> None:
    for name in ("model", "metric"):
        services.start(name)
    services.start("monitor", **WINDOWS)
    services.start("features", FEATURES_COUNT=str(rows), FEATURES_SEED="7", **features)


def messages(amqp: Amqp, queue: str, into: list[dict]) -> list[dict]:
    into += [json.loads(body) for _, body in amqp.drain(queue)]
    return into


def queue_exists(amqp: Amqp, name: str) -> bool:
    channel = amqp.connection.channel()  # a 404 closes the channel it is asked on
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    channel.close()
    return True


def test_drift_you_cause_fires_its_alert_within_two_windows_and_a_restart_keeps_it(
    services: Services, amqp: Amqp, service_env: dict
) -> None:
    spy = spy_on(amqp, "alert", "window_report")
    start_pipeline(services, 2500, FEATURES_DRIFT="bmi:+2@1000")
    seen: list[dict] = []

    def fired(alert: str) -> dict | None:
        messages(amqp, spy, seen)
        return next((m for m in seen if m.get("alert", "").startswith(alert)
                     and m["state"] == "firing"), None)  # fmt: skip

    wait_until(lambda: fired("psi/bmi/") and fired("mae/-/"), 120, "drift and error alerts")
    drift = fired("psi/bmi/")
    assert drift["window"]["stream"] == "features" and drift["window"]["index"] in (2, 3)
    before = [m for m in seen if "window" in m and m.get("alert") and m["window"]["index"] < 2
              and m["window"]["stream"] == "features"]  # fmt: skip
    assert before == [], "no alert before the shift"
    drifted = {m["alert"].split("/")[1] for m in seen if m.get("state") == "firing"
               and m["window"]["stream"] == "features"}  # fmt: skip
    assert drifted <= {"bmi", "-"}, f"only bmi drifted, alerts name {drifted}"
    # From the alert to the rows and their traces: its examples are rows of the CSV.
    rows = {r["message_id"]: r for r in read_csv(Path(service_env["METRIC_LOG_PATH"]))}
    error = fired("mae/-/")
    for example in error["examples"]:
        wait_until(lambda e=example: e["message_id"] in rows or rows.update(
            {r["message_id"]: r for r in read_csv(Path(service_env["METRIC_LOG_PATH"]))}),
            30, "the example row")  # fmt: skip
        row = rows[example["message_id"]]
        assert float(row["absolute_error"]) == pytest.approx(example["value"])
        assert row["trace_id"] == example["trace_id"]

    # SIGKILL and restart: the open alerts are remembered, the window numbers go on.
    wait_until(lambda: services.procs["features"].poll() is not None, 120, "features to finish")
    services.stop("monitor", signal.SIGKILL)
    last = max(m["window"]["index"] for m in seen if m.get("stream") == "features")
    services.start("monitor", **WINDOWS)
    services.start("features", FEATURES_COUNT="1000", FEATURES_SEED="8",
                   FEATURES_DRIFT="bmi:+2@0")  # fmt: skip

    def window_after_restart() -> bool:
        found = messages(amqp, spy, seen)
        return any(m.get("stream") == "features" and m["window"]["index"] > last for m in found)

    wait_until(window_after_restart, 120, "a window after restart")
    after = [m for m in seen if m.get("state") == "firing" and m["alert"] == drift["alert"]]
    assert len(after) == 1, "an open alert does not fire again after a restart"

    listed = subprocess.run(
        [sys.executable, "-m", "services.cli", "alerts"], env=service_env, cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert drift["alert"] in listed.stdout and drift["examples"][0]["message_id"] in listed.stdout


def test_no_drift_no_alert_over_5000_rows(services: Services, amqp: Amqp) -> None:
    spy = spy_on(amqp, "alert", "window_report")
    start_pipeline(services, 5000)
    seen: list[dict] = []
    wait_until(
        lambda: sum(m.get("stream") == "predictions" for m in messages(amqp, spy, seen)) >= 10,
        180, "ten predictions windows",
    )  # fmt: skip
    assert sum(m.get("stream") == "features" for m in seen) == 10
    assert [m for m in seen if "alert" in m] == []


def test_bad_metric_records_are_dead_lettered_with_a_reason(
    services: Services, amqp: Amqp, contracts: Contracts, receiver: Receiver
) -> None:
    """Also: the monitor handles deliveries under batch spans, but a message it refuses gets a
    process span of its own in the message's trace, with the reason, and its dead letter stays
    in that trace."""
    services.start("monitor", **WINDOWS, **traced(receiver))
    good = json.loads((REPO / "contracts/metric_record/v1/examples/valid/row.json").read_text())
    wait_until(lambda: queue_exists(amqp, "monitor.metric_record.dlq"), 30, "the monitor's queues")
    cases = {
        "schema": {**good, "absolute_error": -1.0},
        "arithmetic": {**good, "absolute_error": 1.0},
    }
    parents = {}
    for name, payload in cases.items():
        payload["message_id"] = str(uuid.uuid4())
        parents[name] = (uuid.uuid4().hex, uuid.uuid4().hex[:16])
        headers = {**headers_for(contracts, "metric_record"),
                   "traceparent": f"00-{parents[name][0]}-{parents[name][1]}-01"}  # fmt: skip
        amqp.publish("metric_record", json.dumps(payload).encode(), headers, message_id=name)
    wait_until(lambda: amqp.count("monitor.metric_record.dlq") == 2, 30, "two dead letters")
    letters = {p.message_id: p.headers for p, _ in amqp.drain("monitor.metric_record.dlq")}
    assert "schema violation: metric_record v1 at absolute_error" in letters["schema"][
        "x-error-reason"]  # fmt: skip
    assert "is not |y_true - y_pred|" in letters["arithmetic"]["x-error-reason"]
    assert services.procs["monitor"].poll() is None, "bad input is never fatal"

    def refused(name: str) -> list:
        return [s for s in receiver.snapshot() if s.trace_id == parents[name][0]
                and s.name == "process metric_record" and s.service == "monitor"]  # fmt: skip

    for name in cases:
        wait_until(lambda name=name: refused(name), 30, f"the span of the refused {name} row")
        span = refused(name)[0]
        assert span.parent_id == parents[name][1] and span.kind == "CONSUMER"
        assert span.attributes["messaging.message.id"] == name
        assert span.attributes[DEAD_LETTER_REASON] == letters[name]["x-error-reason"]
        assert letters[name]["traceparent"].split("-")[1] == parents[name][0]


def test_every_recorded_row_is_published_once_as_metric_record(
    services: Services, amqp: Amqp, service_env: dict
) -> None:
    spy = spy_on(amqp, "metric_record")
    for name in ("model", "metric"):
        services.start(name)
    services.start("features", FEATURES_COUNT="300")
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    wait_until(lambda: len(read_csv(csv_path)) >= 300, 60, "300 rows")
    assert services.stop("metric") == 0, services.output("metric")  # a clean stop drains
    sent = [(props, json.loads(body)) for props, body in amqp.drain(spy)]
    rows = {r["message_id"]: r for r in read_csv(csv_path)}
    assert sorted(p["message_id"] for _, p in sent) == sorted(rows)
    for props, payload in sent:
        row = rows[payload["message_id"]]
        assert props.message_id == payload["message_id"]
        assert {k: str(v) for k, v in payload.items()} == row
        assert props.headers["schema"].endswith("/metric_record/v1/schema.json")
