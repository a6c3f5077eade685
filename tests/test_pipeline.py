"""The real services on the real RabbitMQ: rows, dead letters, orphans, restarts, reconnects."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.common.broker import DeadLetters
from services.common.contracts import Contracts
from services.common.messages import Outgoing
from services.model.artifact import load
from tests.conftest import REPO, Amqp, Services, model_broker_in_thread, read_csv, wait_until
from tests.session_broker import Broker

pytestmark = pytest.mark.broker


def spy_on(amqp: Amqp, *exchanges: str) -> str:
    """A second subscriber to these message types, beside the services' own queues."""
    queue = amqp.channel.queue_declare("", exclusive=True).method.queue
    for exchange in exchanges:
        amqp.channel.exchange_declare(exchange, "fanout", durable=True)
        amqp.channel.queue_bind(queue, exchange)
    return queue


def headers_for(contracts: Contracts, type_: str, version: int = 1) -> dict:
    return {"schema": contracts.schema_ids[type_, version]}


def rows_by_id(path: Path) -> dict[str, dict[str, str]]:
    rows = read_csv(path)
    by_id = {r["message_id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id has two rows"
    return by_id


def catalog_accepting_v1_only(folder: Path) -> Path:
    """A copy of contracts/ whose model accepts only features v1: v2 rows are dead-lettered."""
    old = folder / "contracts"
    shutil.copytree(REPO / "contracts", old)
    catalog = json.loads((old / "catalog.json").read_text())
    catalog["types"]["features"]["consumers"][0]["accepts"] = [1]
    (old / "catalog.json").write_text(json.dumps(catalog))
    return old


def wait_rows(path: Path, count: int, timeout: float = 60) -> dict[str, dict[str, str]]:
    wait_until(lambda: len(read_csv(path)) >= count, timeout, f"{count} rows in {path.name}")
    return rows_by_id(path)


def test_up_records_one_correct_row_per_id(
    service_env: dict, tmp_path: Path, amqp: Amqp, model_path: Path
) -> None:
    n = 300
    spy = spy_on(amqp, "features", "y_true")
    env = {**service_env, "FEATURES_COUNT": str(n), "FEATURES_INTERVAL_S": "0.001"}
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        rows = wait_rows(Path(env["METRIC_LOG_PATH"]), n)
        png = Path(env["PLOT_PATH"])
        wait_until(lambda: png.exists() and png.stat().st_size > 10_000, 30, "the plot")
    finally:
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output
    assert "metric_log.csv" in output and "error_distribution.png" in output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sent = {"features": {}, "y_true": {}}
    for props, body in amqp.drain(spy):
        sent[props.type][props.message_id] = json.loads(body)
    assert set(rows) == set(sent["features"]) == set(sent["y_true"])
    assert all(uuid.UUID(i).version == 4 for i in rows)
    model = load(model_path)
    ids = sorted(rows)
    expected = model.estimator.predict(np.array([sent["features"][i]["features"] for i in ids]))
    for i, prediction in zip(ids, expected, strict=True):
        row = rows[i]
        assert float(row["y_pred"]) == pytest.approx(prediction, rel=1e-9)
        assert float(row["y_true"]) == sent["y_true"][i]["y_true"]
        assert float(row["absolute_error"]) == pytest.approx(abs(prediction - float(row["y_true"])))
        assert row["model_version"] == model.version
        assert 0 <= float(row["latency_ms"]) < 60_000
    assert read_csv(Path(env["METRIC_ORPHAN_LOG_PATH"])) == []
    for dlq in ("model.features.dlq", "metric.y_true.dlq", "metric.y_pred.dlq"):
        assert amqp.count(dlq) == 0


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_up_stopped_while_its_services_start_exits_cleanly(
    service_env: dict, tmp_path: Path, how: str
) -> None:
    """A stop that reaches the services before they have set their own signal handlers (they are
    still importing) stops them with nothing to finish: `up` exits 0 with no traceback. CI once
    saw `exit statuses {'monitor': -15}` when the monitor started slowly."""
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        cwd=tmp_path,
        env=service_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert up.stdout is not None
        while "running" not in (line := up.stdout.readline()):
            assert line, "up ended before it started the services"
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGTERM)
        try:
            output = up.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise AssertionError(f"up did not stop within 60 s:\n{up.communicate()[0]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 0, output
    assert "Traceback" not in output, output
    assert "stopped while starting" in output


def _bad_features(contracts: Contracts) -> list[tuple[str, bytes, dict, str]]:
    ok = headers_for(contracts, "features")
    row = {"id": str(uuid.uuid4()), "emitted_at": "2026-11-27T11:40:35Z", "features": [0.1] * 10}
    nan = json.dumps({**row, "features": [math.nan] * 10}).encode()
    v9 = {"schema": contracts.schema_ids["features", 1].replace("/v1/", "/v9/")}
    return [
        ("not-json", b"{not json", ok, "not valid JSON"),
        ("not-utf8", b'{"id": "\xff\xfe"}', ok, "not valid UTF-8"),
        ("nan", nan, ok, "NaN is not a number JSON allows"),
        (
            "wrong-shape",
            json.dumps({**row, "features": [0.1] * 9}).encode(),
            ok,
            "schema violation: features v1 at features",
        ),
        ("unknown-version", json.dumps(row).encode(), v9, "unknown schema version"),
        ("no-schema", json.dumps(row).encode(), {}, "missing schema header"),
        (
            "wrong-type",
            json.dumps(row).encode(),
            headers_for(contracts, "y_true"),
            "does not accept y_true v1",
        ),
    ]


def test_bad_input_is_dead_lettered_with_its_reason_while_valid_traffic_flows(
    services: Services, service_env: dict, amqp: Amqp, contracts: Contracts
) -> None:
    model, metric = services.start("model"), services.start("metric")
    for name in ("model", "metric"):
        wait_until(lambda n=name: "connected" in services.output(n), 30, f"{name} to connect")
    bad = _bad_features(contracts)
    for name, body, headers, _ in bad:
        amqp.publish("features", body, headers, message_id=name)
    amqp.publish("y_true", b'{"id": 1}', headers_for(contracts, "y_true"), message_id="label")
    amqp.publish("y_pred", b"[]", headers_for(contracts, "y_pred"), message_id="prediction")
    services.start("features", FEATURES_COUNT="50")
    wait_rows(Path(service_env["METRIC_LOG_PATH"]), 50)
    assert model.poll() is None and metric.poll() is None

    dead = {p.message_id: p.headers for p, _ in amqp.drain("model.features.dlq")}
    assert set(dead) == {name for name, *_ in bad}
    for name, _, _, reason in bad:
        assert reason in dead[name]["x-error-reason"], (name, dead[name]["x-error-reason"])
        assert dead[name]["x-error-queue"] == "model.features"
        assert dead[name]["x-error-service"] == "model"
    [(label, _)] = amqp.drain("metric.y_true.dlq")
    assert "schema violation: y_true v1" in label.headers["x-error-reason"]
    [(prediction, _)] = amqp.drain("metric.y_pred.dlq")
    assert "y_pred v1 at (root)" in prediction.headers["x-error-reason"]
    assert len(read_csv(Path(service_env["METRIC_LOG_PATH"]))) == 50


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_metric_restart_loses_and_duplicates_nothing(
    services: Services, service_env: dict, sig: int
) -> None:
    n = 3000
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    services.start("metric")
    services.start("model")
    services.start("features", FEATURES_COUNT=str(n), FEATURES_INTERVAL_S="0.002")
    wait_until(lambda: len(read_csv(csv_path)) > 200, 60, "the first rows")
    status = services.stop("metric", sig)
    assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    before = len(read_csv(csv_path))
    assert before < n, "the run ended before the restart; make it longer"
    services.start("metric")
    rows = wait_rows(csv_path, n, timeout=120)
    assert len(rows) == n
    assert services.stop("features") == 0
    assert read_csv(Path(service_env["METRIC_ORPHAN_LOG_PATH"])) == []


def test_connection_loss_mid_stream_loses_and_duplicates_nothing(
    services: Services, service_env: dict, broker: Broker, vhost: str
) -> None:
    n = 3000
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    for name in ("metric", "model"):
        services.start(name)
    # Paced so the stream outlasts the fault on a fast machine too (~3 ms a row, ~9 s in all):
    # unpaced, 3,000 rows were all recorded before rabbitmqctl got round to closing anything.
    services.start("features", FEATURES_COUNT=str(n), FEATURES_INTERVAL_S="0.002")
    wait_until(lambda: len(read_csv(csv_path)) > 200, 60, "the first rows")
    broker.rabbitmqctl("close_all_connections", "--vhost", vhost, "test: connection loss")
    assert len(read_csv(csv_path)) < n, "the run ended before the fault; make it longer"
    rows = wait_rows(csv_path, n, timeout=120)
    assert len(rows) == n
    for name in ("features", "model", "metric"):
        assert "connection lost" in services.output(name), name


def test_a_half_without_partner_becomes_an_orphan(
    services: Services, service_env: dict, amqp: Amqp, contracts: Contracts
) -> None:
    services.start("metric", METRIC_JOIN_TIMEOUT_S="1")
    wait_until(lambda: "connected" in services.output("metric"), 30, "metric to connect")
    label, prediction = str(uuid.uuid4()), str(uuid.uuid4())
    now = "2026-11-27T11:40:35Z"
    amqp.publish(
        "y_true",
        json.dumps({"id": label, "emitted_at": now, "y_true": 80.0}).encode(),
        headers_for(contracts, "y_true"),
        message_id=label,
    )
    amqp.publish(
        "y_pred",
        json.dumps(
            {
                "id": prediction,
                "emitted_at": now,
                "predicted_at": now,
                "y_pred": 99.5,
                "model_version": "linreg-x",
            }
        ).encode(),
        headers_for(contracts, "y_pred"),
        message_id=prediction,
    )
    orphans_path = Path(service_env["METRIC_ORPHAN_LOG_PATH"])
    orphans = wait_until(
        lambda: len(read_csv(orphans_path)) == 2 and read_csv(orphans_path),
        30,
        "two orphan records",
    )
    by_id = {o["message_id"]: o for o in orphans}
    assert by_id[label]["half"] == "y_true" and by_id[label]["reason"] == "timeout"
    assert by_id[prediction]["half"] == "y_pred" and by_id[prediction]["value"] == "99.5"
    assert read_csv(Path(service_env["METRIC_LOG_PATH"])) == []


@pytest.mark.parametrize("service", ["features", "model", "metric", "plot"])
def test_sigterm_exits_zero(services: Services, service: str) -> None:
    services.start(service, FEATURES_INTERVAL_S="0.01")
    wait_until(
        lambda: "connected" in services.output(service) or "drew" in services.output(service),
        30,
        f"{service} to start",
    )
    assert services.stop(service) == 0, services.output(service)


def test_wrong_password_fails_at_start_naming_the_setting(
    service_env: dict, broker: Broker, vhost: str
) -> None:
    env = {**service_env, "RABBITMQ_URL": broker.url_for(vhost, password="wrong")}
    done = subprocess.run(
        [sys.executable, "-m", "services.model"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "RABBITMQ_URL" in done.stderr and "password" in done.stderr


def _amqp_client_ports(pid: int, port: int) -> set[int]:
    """The local ports of the process's TCP connections to `port` (/proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_services_under_test_connect_to_the_tests_vhost_never_the_default(
    services: Services, broker: Broker, vhost: str
) -> None:
    # The broker's own view: each service's connection, found by its client port, and its vhost.
    for name in ("features", "model", "metric"):
        services.start(name, FEATURES_INTERVAL_S="0.05")
        wait_until(lambda n=name: "connected" in services.output(n), 30, f"{name} to connect")
    ours = {port: name for name, proc in services.procs.items()
            for port in _amqp_client_ports(proc.pid, broker.port)}  # fmt: skip
    listing = broker.rabbitmqctl("list_connections", "peer_port", "vhost", "--no-table-headers")
    seen = {}
    for line in listing.splitlines():
        port, _, where = line.partition("\t")
        if int(port) in ours:
            seen[ours[int(port)]] = where
    assert seen == {"features": vhost, "model": vhost, "metric": vhost}, listing


def test_a_mixed_v1_v2_features_stream_gives_one_correct_row_per_id(
    services: Services, service_env: dict, amqp: Amqp, model_path: Path
) -> None:
    n = 150
    spy = spy_on(amqp, "features")
    services.start("metric")
    services.start("model")
    services.procs["features-v1"] = services.start("features", FEATURES_COUNT=str(n))
    services.procs["features-v2"] = services.start(
        "features", FEATURES_COUNT=str(n), FEATURES_SCHEMA_VERSION="2"
    )
    rows = wait_rows(Path(service_env["METRIC_LOG_PATH"]), 2 * n)
    assert len(rows) == 2 * n
    model = load(model_path)
    versions = {1: 0, 2: 0}
    for props, body in amqp.drain(spy):
        payload = json.loads(body)
        version = int(props.headers["schema"].rsplit("/v", 1)[1].split("/")[0])
        versions[version] += 1
        values = payload["features"]
        if version == 2:
            values = [values[name] for name in model.feature_names]
        expected = model.estimator.predict(np.array([values]))[0]
        assert float(rows[payload["id"]]["y_pred"]) == pytest.approx(expected, rel=1e-9)
    assert versions == {1: n, 2: n}


def test_dead_letters_are_listed_with_reasons_and_replayed_once_the_cause_is_fixed(
    services: Services, service_env: dict, amqp: Amqp, contracts: Contracts, tmp_path: Path
) -> None:
    # The cause: a model still on a catalog that accepts only features v1 ...
    services.start("metric")
    services.start("model", CONTRACTS_DIR=str(catalog_accepting_v1_only(tmp_path)))
    wait_until(lambda: "connected" in services.output("model"), 30, "model to connect")
    # ... gets v2 rows, which it dead-letters.
    services.start("features", FEATURES_COUNT="5", FEATURES_SCHEMA_VERSION="2")
    dlq = Path(service_env["METRIC_LOG_PATH"])
    wait_until(lambda: amqp.count("model.features.dlq") == 5, 30, "5 dead letters")
    env = {**service_env}
    command = [sys.executable, "-m", "services.cli", "dlq"]
    listed = subprocess.run([*command, "list", "model.features"], env=env, capture_output=True,
                            text=True)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "5 dead letter(s) in model.features.dlq" in listed.stdout
    assert listed.stdout.count("model.features does not accept features v2") == 5
    assert amqp.count("model.features.dlq") == 5  # listing leaves them in place
    first_id = listed.stdout.splitlines()[1].split()[1]
    # The fix: the model that accepts v2. Replay one, then the rest.
    assert services.stop("model") == 0
    services.start("model")
    one = subprocess.run([*command, "replay", "model.features", "--id", first_id], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert "replayed 1 message(s)" in one.stdout, one.stdout + one.stderr
    wait_until(lambda: first_id in rows_by_id(dlq), 30, "the replayed row")
    rest = subprocess.run([*command, "replay", "model.features"], env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert "replayed 4 message(s)" in rest.stdout
    rows = wait_rows(dlq, 5)
    assert len(rows) == 5 and amqp.count("model.features.dlq") == 0
    assert read_csv(Path(service_env["METRIC_ORPHAN_LOG_PATH"])) == []


def test_duplicates_give_one_row_and_a_conflicting_one_is_quarantined(
    services: Services, service_env: dict, amqp: Amqp, contracts: Contracts
) -> None:
    services.start("metric")
    wait_until(lambda: "connected" in services.output("metric"), 30, "metric to connect")
    id_, now = str(uuid.uuid4()), "2026-11-27T11:40:35Z"
    label = {"id": id_, "emitted_at": now, "y_true": 80.0}
    prediction = {"id": id_, "emitted_at": now, "predicted_at": now, "y_pred": 99.5,
                  "model_version": "linreg-x"}  # fmt: skip
    for type_, payload in [
        ("y_true", label),
        ("y_pred", prediction),
        ("y_pred", prediction),
        ("y_true", label),
        ("y_pred", {**prediction, "y_pred": 12.0}),
    ]:
        amqp.publish(type_, json.dumps(payload).encode(), headers_for(contracts, type_),
                     message_id=id_)  # fmt: skip
    wait_until(lambda: amqp.count("metric.y_pred.dlq") == 1, 30, "the quarantined duplicate")
    rows = read_csv(Path(service_env["METRIC_LOG_PATH"]))
    assert [(r["message_id"], r["y_pred"]) for r in rows] == [(id_, "99.5")]
    [(props, body)] = amqp.drain("metric.y_pred.dlq")
    assert json.loads(body)["y_pred"] == 12.0
    assert props.headers["x-error-reason"].startswith(f"conflicting duplicate: y_pred for {id_}")
    assert "duplicate y_pred" in services.output("metric")


def _serving(broker: Broker, vhost: str, contracts: Contracts, handler):
    listing = ("list_queues", "-p", vhost, "name", "consumers")
    return model_broker_in_thread(broker.url_for(vhost), contracts, handler, 500,
                                  lambda: broker.rabbitmqctl(*listing))  # fmt: skip


def _publish_rows(amqp: Amqp, contracts: Contracts, ids: list[str]) -> list[str]:
    for id_ in ids:
        row = {"id": id_, "emitted_at": "2026-11-27T11:40:35Z", "features": [0.1] * 10}
        amqp.publish("features", json.dumps(row).encode(), headers_for(contracts, "features"),
                     message_id=id_)  # fmt: skip
    return ids


def test_acks_sent_together_settle_every_delivery_once_around_nacks(
    broker: Broker, vhost: str, amqp: Amqp, contracts: Contracts, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker module acks many deliveries with one `multiple` ack, up to the newest whose
    # older deliveries are all settled. Nacks in between (a handler failing once) must neither
    # be acked by it nor make the broker refuse it: a refused ack closes the channel, and every
    # delivery after it would come back a second time.
    handled: list[str] = []
    failed_once: set[str] = set()

    def flaky(message):  # fails the first delivery of about a third of the messages
        if int(message.id[-3:], 16) % 3 == 0 and message.id not in failed_once:
            failed_once.add(message.id)
            raise RuntimeError("first delivery fails")
        handled.append(message.id)
        return []

    caplog.set_level(logging.WARNING, logger="modelwatch.broker")
    with _serving(broker, vhost, contracts, flaky):
        ids = _publish_rows(amqp, contracts, [str(uuid.uuid4()) for _ in range(600)])
        wait_until(lambda: len(handled) >= len(ids), 60, "every message handled")
        time.sleep(1)  # anything acked wrongly would be redelivered by now
    assert sorted(handled) == sorted(ids)  # each once: no ack lost, none refused
    assert len(failed_once) > 150
    assert amqp.count("model.features") == amqp.count("model.features.dlq") == 0
    assert not [r for r in caplog.records if "channel closed" in r.getMessage()]


def test_a_later_inputs_ack_never_covers_one_whose_output_failed(
    broker: Broker, vhost: str, amqp: Amqp, contracts: Contracts
) -> None:
    # Half the inputs produce a y_pred that cannot be routed (its queue is unbound), so each is
    # nacked and redelivered until the delivery limit dead-letters it; the other half produce
    # nothing and are done at once. If a later input's `multiple` ack covered an earlier input
    # still waiting for its output's confirm, that input would be gone: neither in the queue nor
    # dead-lettered.
    prediction = json.loads((REPO / "contracts/y_pred/v1/examples/valid/prediction.json")
                            .read_text())  # fmt: skip
    with_output: set[str] = set()

    def half_with_output(message):
        if message.id in with_output:
            return [Outgoing("y_pred", {**prediction, "id": message.id})]
        return []

    with _serving(broker, vhost, contracts, half_with_output):
        amqp.channel.queue_unbind("metric.y_pred", "y_pred")
        ids = [str(uuid.uuid4()) for _ in range(400)]
        with_output.update(ids[1::2])
        _publish_rows(amqp, contracts, ids)
        wait_until(lambda: amqp.count("model.features.dlq") == len(with_output), 60,
                   "every input with an unroutable output dead-lettered")  # fmt: skip
    dead = {p.message_id for p, _ in amqp.drain("model.features.dlq")}
    assert dead == with_output
    assert amqp.count("model.features") == 0


def test_a_broker_that_keeps_refusing_the_consumer_is_not_hammered(
    services: Services, amqp: Amqp, contracts: Contracts, broker: Broker, vhost: str
) -> None:
    # The model's user may not read model.features for a while, so the broker refuses its
    # basic.consume and closes the channel right after every connect. Reconnecting at once each
    # time made hundreds of connections a second (seen as 541s under a memory alarm); the pauses
    # must grow while connections keep dying young, and consuming resumes once it may.
    spy = spy_on(amqp, "y_pred")
    services.start("model")  # declares the topology, so the next one only has to verify it
    wait_until(lambda: "connected" in services.output("model"), 30, "the topology")
    assert services.stop("model") == 0
    broker.rabbitmqctl("set_permissions", "-p", vhost, broker.user, ".*", ".*",
                       r"^(?!model\.features$).*")  # fmt: skip
    before = services.output("model").count("connected to")
    services.start("model", RABBITMQ_TOPOLOGY="verify")
    time.sleep(4)
    out = services.output("model")
    refused = out.count("connected to") - before
    assert 2 <= refused <= 8, out  # 0.2 + 0.4 + 0.8 + 1.6 s of pauses fit in 4 s, not more
    assert "ACCESS_REFUSED" in out and "reconnecting in" in out
    broker.rabbitmqctl("set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
    _publish_rows(amqp, contracts, [str(uuid.uuid4())])
    wait_until(lambda: amqp.count(spy) == 1, 30, "a prediction once the queue may be read")


def test_a_background_task_that_fails_stops_the_service_loudly(
    services: Services, service_env: dict
) -> None:
    # The orphan sweep runs beside the consumers. When it raises (here: its table is dropped
    # from under it), the service must stop with a non-zero status, naming what failed, rather
    # than go on consuming while halves that lost their partner are never recorded as orphans.
    metric = services.start("metric", METRIC_JOIN_TIMEOUT_S="0.4")  # a sweep every 0.1 s
    wait_until(lambda: "connected" in services.output("metric"), 30, "metric to connect")
    db = sqlite3.connect(service_env["METRIC_STATE_PATH"])
    db.execute("DROP TABLE halves")
    db.commit()
    db.close()
    wait_until(lambda: metric.poll() is not None, 20, "metric to stop")
    out = services.output("metric")
    assert metric.returncode == 1, out
    assert "background task 'orphan sweep' failed" in out and "no such table: halves" in out


def test_listing_dead_letters_thirty_times_keeps_every_one_and_replay_still_works(
    services: Services, service_env: dict, amqp: Amqp, amqp_url: str, tmp_path: Path
) -> None:
    # Each look at a dead letter takes it and gives it back: a delivery. RabbitMQ 4.0 limits every
    # quorum queue without a delivery limit to 20, and a dead-letter queue has nowhere to send what
    # goes over it, so on 4.x the 21st look deleted the dead letters. On every broker they must
    # stay however often they are listed, and still replay.
    services.start("metric")
    services.start("model", CONTRACTS_DIR=str(catalog_accepting_v1_only(tmp_path)))
    wait_until(lambda: "connected" in services.output("model"), 30, "model to connect")
    services.start("features", FEATURES_COUNT="3", FEATURES_SCHEMA_VERSION="2")
    wait_until(lambda: amqp.count("model.features.dlq") == 3, 30, "3 dead letters")
    letters = DeadLetters(amqp_url)
    try:
        for look in range(30):
            found = letters.list("model.features")
            assert len(found) == 3, f"look {look + 1}: {len(found)} dead letters"
            assert all("does not accept features v2" in f.reason for f in found)
    finally:
        letters.close()
    # A quorum queue's message count catches up with returned messages only on its next tick.
    wait_until(lambda: amqp.count("model.features.dlq") == 3, 10, "3 dead letters counted")
    assert services.stop("model") == 0
    services.start("model")  # the fix: a model that accepts v2
    replayed = subprocess.run([sys.executable, "-m", "services.cli", "dlq", "replay",
                               "model.features"], env=service_env, capture_output=True,
                              text=True)  # fmt: skip
    assert "replayed 3 message(s)" in replayed.stdout, replayed.stdout + replayed.stderr
    assert len(wait_rows(Path(service_env["METRIC_LOG_PATH"]), 3)) == 3
    wait_until(lambda: amqp.count("model.features.dlq") == 0, 10, "an empty dead-letter queue")


def test_a_service_given_another_shard_count_than_the_topology_stops_naming_it(
    services: Services,
) -> None:
    # The definitions (or the first service to declare) fix the metric's shard count; a service
    # told another number under RABBITMQ_TOPOLOGY=verify must not run on, and must say why.
    services.start("model")  # declares the topology with one shard
    wait_until(lambda: "connected" in services.output("model"), 30, "the topology")
    assert services.stop("model") == 0
    features = services.start("features", "features-6", RABBITMQ_TOPOLOGY="verify",
                              METRIC_SHARDS="6", FEATURES_COUNT="1")  # fmt: skip
    assert features.wait(30) == 2
    out = services.output("features-6")
    assert "metric.y_true.6-shards" in out and "METRIC_SHARDS is 6 here" in out, out
