"""Destructive faults on a private RabbitMQ node that these tests start and remove themselves.

The node is of the broker under test's installation (tests/brokers.py: the machine's RabbitMQ or
the Debian 13 root's 4.x); a broker given by URL has none, and these tests skip on it. The shared
broker is never touched: the node has its own name, ports, epmd and data folder.
For each fault, rows flow through the real services while the fault is injected, and the
accounting must hold: every features message the broker confirmed (seen by a durable spy queue on
the features exchange) ends as exactly one CSV row; no row for an id that was never emitted; no id
twice; nothing dead-lettered or orphaned. Each test also checks that its fault happened and
was seen: by the services' own log lines or by what the broker reports, so none of them can pass
with a fault that did nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pika
import pytest

from services.common.broker import DeadLetters
from services.common.contracts import Contracts
from tests.brokers import Cluster, Node
from tests.conftest import (
    REPO,
    Amqp,
    Services,
    model_broker_in_thread,
    read_csv,
    stall_s,
    wait_until,
)
from tests.session_broker import Broker
from tools.bench.spy import Spy
from tools.otlp_sink import Receiver

pytestmark = [
    pytest.mark.broker,
    pytest.mark.root("starts private RabbitMQ nodes as the rabbitmq user (su, chown)"),
]


@pytest.fixture
def node(broker: Broker, tmp_path: Path, request) -> Iterator[Node]:
    """A fresh node per test, of the broker under test's installation (seconds to boot), so no
    fault leaves state for the next. A test marked `node_conf("...")` adds those lines to the
    node's rabbitmq.conf."""
    if broker.installation is None:
        pytest.skip(f"{broker.name} is a broker given by URL: no private nodes of it to fault")
    conf = request.node.get_closest_marker("node_conf")
    started = Node(tmp_path / "node", broker.installation, conf.args[0] if conf else "")
    try:
        started.start()
        yield started
    finally:
        started.stop()
        # Its log stays beside the test's other output, for a failure's post-mortem.
        shutil.rmtree(started.folder / "mnesia", ignore_errors=True)


def _queue_depth(node: Node | Cluster, queue: str) -> int:
    """Ready messages, as the queue answers now: `rabbitmqctl list_queues messages` reads a
    quorum queue's statistics, refreshed every few seconds, so a 0 there may be stale."""
    client = Amqp(node.url)
    try:
        return client.count(queue)
    finally:
        client.close()


def _dead_letter_queues(service_env: dict) -> list[str]:
    """The dead-letter queues of the model's and the metric's queues (their shards, if any)."""
    topology = Contracts(REPO / "contracts").topology(int(service_env.get("METRIC_SHARDS", "1")))
    families = ("model.features", "metric.y_true", "metric.y_pred")
    return [q.dlq for family in families for q in topology.family(family)]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _connection_states(node: Node) -> list[str]:
    return node.ctl("list_connections", "state", "--no-table-headers").split()


def saw_the_loss(services: Services, *names: str, unreachable: bool = False) -> None:
    """Each named service lost its connection and connected again (as its log says); with
    `unreachable`, it also found the broker gone while it tried to reconnect."""
    for name in names:
        out = services.output(name)
        assert "connection lost" in out, (name, out[-2000:])
        assert out.count("connected to") >= 2, (name, out[-2000:])
        if unreachable:
            assert "broker not reachable" in out, (name, out[-2000:])


def run_through(node: Node | Cluster, services: Services, service_env: dict, n: int,
                fault: Callable[[], None], interval: str = "0.002",
                urls: Callable[[str], str] | None = None) -> dict[str, int]:  # fmt: skip
    """Rows through the real services with `fault` injected once a fifth are recorded (n > 0),
    or once 200 are (n = 0: features run until 500 rows after the fault, however long it takes);
    the accounting of the module's notes. `urls(service)` is the RABBITMQ_URL each gets (default
    the node's, or the cluster's every node)."""
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    spy = Spy(node.url, "features", "test.spy.features")  # what the broker confirmed, kept
    url = urls or (lambda _: node.url)
    services.start("metric", RABBITMQ_URL=url("metric"))
    services.start("model", RABBITMQ_URL=url("model"))
    services.start("features", RABBITMQ_URL=url("features"), FEATURES_COUNT=str(n),
                   FEATURES_INTERVAL_S=interval)  # fmt: skip
    wait_until(lambda: len(read_csv(csv_path)) > (n // 5 or 200), 60, "the first rows")
    fault()
    if n:
        # Features are paced (>= 2 ms a row), so this holds on any machine; if it did not, the
        # run would pass without having been through the fault.
        assert len(read_csv(csv_path)) < n, "the run ended before the fault was over"
        assert services.procs["features"].wait(180) == 0, services.output("features")
    else:
        after = len(read_csv(csv_path)) + 500
        wait_until(lambda: len(read_csv(csv_path)) >= after, 120, "500 rows after the fault")
        assert services.stop("features") == 0, services.output("features")
    confirmed = set(spy.drain())
    wait_until(lambda: {r["message_id"] for r in read_csv(csv_path)} >= confirmed, 120,
               "a row for every confirmed features message")  # fmt: skip
    rows = read_csv(csv_path)
    ids = [r["message_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was recorded twice"
    assert set(ids) == confirmed, "a row for an id the broker never confirmed"
    assert len(confirmed) == (n or len(confirmed))
    assert read_csv(Path(service_env["METRIC_ORPHAN_LOG_PATH"])) == []
    for dlq in _dead_letter_queues(service_env):
        assert _queue_depth(node, dlq) == 0, dlq
    for name in ("model", "metric"):
        assert services.stop(name) == 0, services.output(name)
    return {"emitted": len(confirmed), "recorded": len(rows),
            "duplicated": len(ids) - len(set(ids))}  # fmt: skip


def test_all_connections_closed_by_the_broker(node, services, service_env) -> None:
    run_through(node, services, service_env, 2000,
                lambda: node.ctl("close_all_connections", "fault test"))  # fmt: skip
    saw_the_loss(services, "features", "model", "metric")


def test_broker_application_stopped_and_started(node, services, service_env) -> None:
    def bounce() -> None:
        node.ctl("stop_app")
        time.sleep(2)
        node.ctl("start_app")

    run_through(node, services, service_env, 2000, bounce)
    # stop_app closes the listener too: reconnecting failed until start_app.
    saw_the_loss(services, "features", "model", "metric", unreachable=True)


def test_broker_killed_and_restarted(node, services, service_env) -> None:
    def crash() -> None:
        node.kill()
        time.sleep(1)
        node.start()

    run_through(node, services, service_env, 2000, crash)
    saw_the_loss(services, "features", "model", "metric", unreachable=True)


def test_a_second_metric_waits_and_takes_over_when_the_first_is_killed(
    node, services, service_env
) -> None:
    """What `docker compose up --scale metric=2` starts: two processes on one log and state. The
    second must stand by (two writers would cut off each other's rows), then take over."""
    seen = {}

    def standby_then_kill() -> None:
        first = services.procs["metric-first"] = services.procs["metric"]  # stopped if we fail
        services.start("metric", RABBITMQ_URL=node.url)
        wait_until(lambda: "waiting as a standby" in services.output("metric"), 30, "a standby")
        seen["rows at the kill"] = len(read_csv(Path(service_env["METRIC_LOG_PATH"])))
        first.kill()
        seen["first"] = first.wait(30)
        wait_until(lambda: "took over" in services.output("metric"), 30, "the take-over")

    figures = run_through(node, services, service_env, 3000, standby_then_kill, "0.005")
    assert seen["first"] == -signal.SIGKILL
    out = services.output("metric")
    assert out.count("waiting as a standby") == 1 and out.count("took over") == 1, out[-2000:]
    print(f"\nstandby took over after row {seen['rows at the kill']}: {figures}")


def test_three_metrics_share_the_join_one_killed_and_one_added(node, services, service_env) -> None:
    """METRIC_SHARDS=6 and several metric processes on one log: each holds some shards; one is
    SIGKILLed and started again, a third is added, and every row is still recorded once."""
    service_env["METRIC_SHARDS"] = "6"
    seen = {}
    services.start("metric", "metric-b", RABBITMQ_URL=node.url)

    def kill_one_and_add_one() -> None:
        first = services.procs["metric-a"] = services.procs["metric"]  # stopped if we fail
        wait_until(lambda: "took shard" in services.output("metric"), 30, "a shard for each")
        seen["rows at the kill"] = len(read_csv(Path(service_env["METRIC_LOG_PATH"])))
        seen["killed at"] = datetime.now()
        first.kill()
        seen["first"] = first.wait(30)
        # The survivor takes the dead one's shards (before anyone else is started).
        wait_until(lambda: _shards_taken_after(services.output("metric-b"), seen["killed at"]),
                   30, "the survivor to take the dead one's shards")  # fmt: skip
        services.start("metric", RABBITMQ_URL=node.url)  # the same process started again
        services.start("metric", "metric-c", RABBITMQ_URL=node.url)  # and one more
        wait_until(lambda: "took shard" in services.output("metric-c"), 30, "the third's shards")

    figures = run_through(node, services, service_env, 4000, kill_one_and_add_one, "0.005")
    assert seen["first"] == -signal.SIGKILL
    for name in ("metric-b", "metric-c"):
        assert services.stop(name) == 0, services.output(name)
    logs = {name: services.output(name) for name in ("metric", "metric-b", "metric-c")}
    # The shards moved: the survivor took the killed one's, then gave some back to the newcomers.
    assert "gave shard" in logs["metric-b"], logs["metric-b"][-3000:]
    assert all("took shard" in out for out in logs.values()), logs
    taken = _shards_taken_after(logs["metric-b"], seen["killed at"])
    print(f"\nthree metrics, one killed at row {seen['rows at the kill']}: {figures}; dead "
          f"one's shards taken after {taken[0]:.2f} s; longest stall between rows "
          f"{stall_s(Path(service_env['METRIC_LOG_PATH'])):.2f} s")  # fmt: skip


def _shards_taken_after(log: str, when: datetime) -> list[float]:
    """Seconds from `when` to each "took shard" line the log has after it."""
    stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*took shard"
    times = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t in re.findall(stamp, log, re.M)]
    return [(t - when).total_seconds() for t in times if t > when]


def test_model_killed_mid_batch_and_restarted(node, services, service_env) -> None:
    killed = {}

    def kill_model() -> None:
        killed["status"] = services.stop("model", signal.SIGKILL)
        services.start("model", RABBITMQ_URL=node.url)

    run_through(node, services, service_env, 2000, kill_model)
    assert killed["status"] == -signal.SIGKILL  # it died of the kill, not of its own accord
    # Both processes write model.out: the second connected, and no one stopped the first cleanly.
    out = services.output("model")
    assert out.count("connected to") == 2, out[-2000:]
    assert out.count("received SIGTERM") == 1, out[-2000:]  # only the second, at the end


def test_two_model_replicas_predict_each_message_once(node, services, service_env) -> None:
    predicted = Spy(node.url, "y_pred", "test.spy.y_pred")
    first = {}
    receiver = Receiver()  # the second replica's spans say which messages it handled
    csv_path = Path(service_env["METRIC_LOG_PATH"])

    def second_replica() -> None:
        first["model"] = services.procs["model"]
        services.start("model", RABBITMQ_URL=node.url, OTEL_TRACES_EXPORTER="otlp",
                       OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                       OTEL_SERVICE_NAME="model-2", OTEL_BSP_SCHEDULE_DELAY="100")  # fmt: skip
        # A model takes seconds to start on a busy machine: the fault is on once both consume.
        wait_until(lambda: "model.features\t2" in node.ctl("list_queues", "name", "consumers"),
                   60, "two consumers on model.features")  # fmt: skip
        first["left"] = 2000 - len(read_csv(csv_path))

    try:
        # Paced at 10 ms a row, so the stream outlasts the second replica's start.
        run_through(node, services, service_env, 2000, second_replica, "0.01")  # stops the 2nd
        by_second = {s.attributes["messaging.message.id"] for s in receiver.snapshot()
                     if (s.service, s.name) == ("model-2", "predict")}  # fmt: skip
    finally:
        receiver.close()
    predictions = predicted.drain()
    assert len(predictions) == len(set(predictions)) == 2000  # each predicted exactly once
    assert first["model"].poll() is None  # the first replica served to the end, too
    first["model"].send_signal(signal.SIGTERM)
    assert first["model"].wait(30) == 0
    # The queue shared the work: the second replica predicted part of it, not none or all.
    left = first["left"]  # rows not yet recorded when the second replica was consuming
    assert left >= 200, left
    assert left // 4 <= len(by_second) <= left, (len(by_second), left)
    assert by_second <= set(predictions)


def test_a_memory_alarm_blocks_publishers_who_wait_and_lose_nothing(
    node, services, service_env
) -> None:
    held = {}

    def alarm() -> None:
        node.ctl("set_vm_memory_high_watermark", "0.000001")  # every publisher blocked
        try:
            wait_until(lambda: "blocked" in _connection_states(node), 10, "a blocked publisher")
            held["from"] = _utc_now() + timedelta(seconds=1)  # what was queued drains first
            time.sleep(3)
            held["until"] = _utc_now()
        finally:
            node.ctl("set_vm_memory_high_watermark", "0.4")

    run_through(node, services, service_env, 2000, alarm)
    # While publishers were blocked, no y_pred reached the metric service: nothing was recorded.
    recorded = [datetime.fromisoformat(r["recorded_at"])
                for r in read_csv(Path(service_env["METRIC_LOG_PATH"]))]  # fmt: skip
    during = [t for t in recorded if held["from"] <= t <= held["until"]]
    assert during == [], (len(during), held)


def test_large_dead_letters_sent_while_the_broker_stops_reading_arrive_byte_for_byte(
    node, services, contracts
) -> None:
    # The broker module gives pika's send loop everything buffered as one chunk. Under a memory
    # alarm the broker stops reading the model's socket, so those chunks go out in partial
    # sends across many writability events; every byte must still arrive, in order.
    services.start("model", RABBITMQ_URL=node.url)
    wait_until(lambda: "connected" in services.output("model"), 30, "model to connect")
    services.stop("model")  # the queues exist; the bodies wait in model.features
    rng = np.random.default_rng(7)
    bodies = {f"big-{n}": b"\xff" + rng.bytes(n) for n in (9 << 20, 300, 5 << 20, 40, 3 << 20)}
    client = Amqp(node.url)
    for name, body in bodies.items():
        client.publish("features", body, {"schema": contracts.schema_ids["features", 1]}, name)
    node.ctl("set_vm_memory_high_watermark", "0.000001")
    services.start("model", RABBITMQ_URL=node.url)
    wait_until(lambda: services.output("model").count("dead-lettering") >= 2, 60, "dead letters")
    time.sleep(2)  # the socket's buffers fill; the rest waits in pika's
    assert _queue_depth(node, "model.features.dlq") < len(bodies)
    node.ctl("set_vm_memory_high_watermark", "0.4")
    wait_until(lambda: _queue_depth(node, "model.features.dlq") == len(bodies), 60, "the DLQ")
    dead = {p.message_id: (p.headers, body) for p, body in client.drain("model.features.dlq")}
    client.close()
    assert set(dead) == set(bodies)
    for name, body in bodies.items():
        assert dead[name][1] == body, name
        assert "not valid UTF-8" in dead[name][0]["x-error-reason"]


# Removes every consumer of model.features inside the quorum queue itself, the way the queue does on
# a client's basic.cancel, so the model's channel is never told: a consumer lost without notice.
# A cancel names the consumer {Tag, Pid}: 3.10 keys its consumers so, 4.0 by a number, with Pid
# and Tag first in the value; 3.10 replies ok to it, 4.0 {ok, #{...}}. Prints [cancelled, ...].
FORGET_CONSUMERS = """
Q = rabbit_misc:r(<<"/">>, queue, <<"model.features">>),
{ok, AQ} = rabbit_amqqueue:lookup(Q),
S = amqqueue:get_pid(AQ),
{ok, {_, Cs}, _} = ra:local_query(S, fun rabbit_fifo:query_consumers/1),
Id = fun({_, _} = C, _) -> C; (_, V) -> {element(2, V), element(1, V)} end,
Done = fun({ok, ok, _}) -> cancelled; ({ok, {ok, _}, _}) -> cancelled; (Other) -> Other end,
[Done(ra:process_command(S, rabbit_fifo:make_checkout(Id(K, V), cancel, #{})))
 || {K, V} <- maps:to_list(Cs)].
"""


def test_a_consumer_the_broker_forgets_silently_is_restored(node, services, service_env) -> None:
    def forget() -> None:
        said = node.ctl("eval", FORGET_CONSUMERS)
        assert set(said.strip().strip("[]").split(",")) == {"cancelled"}, said  # one or more
        wait_until(lambda: "no consumer of ours on model.features" in services.output("model"),
                   30, "the model's watchdog to notice")  # fmt: skip

    run_through(node, services, service_env, 2000, forget)


def test_a_deleted_queue_is_redeclared_and_consumed_again(node, services, service_env) -> None:
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    env = {"RABBITMQ_URL": node.url}
    services.start("metric", **env)
    services.start("model", **env)
    services.start("features", **env, FEATURES_INTERVAL_S="0.01")
    wait_until(lambda: len(read_csv(csv_path)) > 50, 60, "the first rows")
    # Only what the model logs from here on is about the deletion: its watchdog may have
    # reconnected before (seen once on 3.10, a fresh queue delivering nothing for 10 s).
    before = len(services.output("model"))
    node.ctl("delete_queue", "model.features")

    def since() -> str:
        return services.output("model")[before:]

    wait_until(lambda: "connection lost" in since(), 30, "the model to notice")
    # It noticed the deletion itself, not some other loss: the broker cancelled its consumer,
    # or no cancel came and the watchdog found the redeclared queue not delivering. The second
    # happens when the deletion races a publish: the broker crashes the publisher's channel
    # (RabbitMQ's register_enqueuer case_clause, seen on 3.10.8 and 4.0.5; the publisher
    # reconnects and redeclares the queue at once) and the old consumer is never told.
    noticed = since()
    by_watchdog = "ready messages but none were delivered to us lately" in noticed
    assert "the broker cancelled consumer" in noticed or by_watchdog, noticed

    def consumed_again() -> bool:
        # 4.0 may still count the deleted queue's consumer: the model must be alive, too.
        assert services.procs["model"].poll() is None, f"the model exited: {since()}"
        listing = node.ctl("list_queues", "name", "consumers")
        return "model.features\t1" in listing

    wait_until(consumed_again, 60, "model.features to be redeclared and consumed")
    assert since().count("connected to") == 1, since()
    # What was in the deleted queue is gone (that is what deleting a queue does); what is emitted
    # afterwards is predicted and recorded again.
    after = len(read_csv(csv_path))
    wait_until(lambda: len(read_csv(csv_path)) > after + 50, 60, "rows after the redeclare")


def test_a_poison_message_is_dead_lettered_after_the_delivery_limit(node, contracts) -> None:
    calls: list[str] = []

    def always_fails(message):  # a handler with a bug this message triggers every time
        calls.append(message.id)
        raise RuntimeError("boom")

    listing = functools.partial(node.ctl, "list_queues", "name", "consumers")
    with model_broker_in_thread(node.url, contracts, always_fails, 10, listing):
        row = json.loads((REPO / "contracts/features/v1/examples/valid/row.json").read_text())
        connection = pika.BlockingConnection(pika.URLParameters(node.url))
        channel = connection.channel()
        channel.basic_publish(
            "features",
            "",
            json.dumps(row).encode(),
            pika.BasicProperties(
                message_id=row["id"], headers={"schema": contracts.schema_ids["features", 1]}
            ),
        )
        wait_until(lambda: _queue_depth(node, "model.features.dlq") == 1, 60, "the dead letter")
        _, props, _ = channel.basic_get("model.features.dlq", auto_ack=True)
        connection.close()
    assert calls == [row["id"]] * 5  # the catalog's delivery limit, not forever
    assert props.headers["x-error-reason"] == "handler failed on 5 deliveries: RuntimeError('boom')"
    assert _queue_depth(node, "model.features") == 0


BROKER_MAX = 250  # bytes: every features body is larger (300-319), every y_true and y_pred smaller


@pytest.mark.node_conf(f"max_message_size = {BROKER_MAX}\n")
def test_a_body_over_the_brokers_max_is_reported_and_not_resent(node, services) -> None:
    # The publisher's own limit is the 16 MiB default, larger than this broker's: the broker
    # closes the channel once, the publisher adopts its limit and refuses the rows itself.
    services.start("features", RABBITMQ_URL=node.url, FEATURES_COUNT="5",
                   FEATURES_INTERVAL_S="0.2")  # fmt: skip
    assert services.procs["features"].wait(60) == 1, services.output("features")
    out = services.output("features")
    assert out.count(f"larger than the broker's max_message_size {BROKER_MAX}") == 1, out
    assert out.count("channel closed") == 1, out  # once, not in a loop
    assert out.count("row not sent: features") == 5, out
    assert f"over the limit of {BROKER_MAX} (the broker's max_message_size)" in out
    assert "5 of 5 rows were refused as too large" in out
    assert _queue_depth(node, "model.features") == 0
    # The row in flight when the channel closed may have had its y_true confirmed first: that
    # half ends as an orphan record in the metric service, not lost.
    assert _queue_depth(node, "metric.y_true") <= 1

    # Told the broker's limit, the publisher never provokes the broker at all.
    before = len(services.output("features"))
    told = {"RABBITMQ_MAX_MESSAGE_SIZE": str(BROKER_MAX), "FEATURES_INTERVAL_S": "0.05"}
    services.start("features", RABBITMQ_URL=node.url, FEATURES_COUNT="5", **told)
    assert services.procs["features"].wait(60) == 1
    out = services.output("features")[before:]
    assert "channel closed" not in out, out
    assert out.count(f"over the limit of {BROKER_MAX} (RABBITMQ_MAX_MESSAGE_SIZE)") == 5, out


def test_an_output_over_the_limit_dead_letters_its_input(node, services) -> None:
    services.start("model", RABBITMQ_URL=node.url, RABBITMQ_MAX_MESSAGE_SIZE="100")
    services.start("features", RABBITMQ_URL=node.url, FEATURES_COUNT="5")
    assert services.procs["features"].wait(60) == 0, services.output("features")
    wait_until(lambda: _queue_depth(node, "model.features.dlq") == 5, 30, "5 dead letters")
    letters = DeadLetters(node.url)
    try:
        found = letters.list("model.features")
    finally:
        letters.close()
    for letter in found:
        assert letter.service == "model"
        assert letter.reason.startswith("output refused: y_pred "), letter.reason
        assert "over the limit of 100 (RABBITMQ_MAX_MESSAGE_SIZE)" in letter.reason
    assert _queue_depth(node, "metric.y_pred") == 0
    assert services.stop("model") == 0


def _unacked(broker: Broker, vhost: str, queue: str) -> int:
    listing = broker.rabbitmqctl("list_queues", "-p", vhost, "name", "messages_unacknowledged")
    return int(dict(line.split("\t") for line in listing.splitlines() if "\t" in line)[queue])


def _held(broker: Broker, vhost: str) -> int:
    """Deliveries the metric holds unacked on its two queues."""
    return _unacked(broker, vhost, "metric.y_true") + _unacked(broker, vhost, "metric.y_pred")


def _fill_mid_run(services: Services, csv_path: Path, disk: Path) -> Path:
    """Start model and features (1,500 rows), and once rows flow take every free byte of `disk`;
    the metric is already running. Returns the filler, whose removal frees the space."""
    services.start("model")
    services.start("features", FEATURES_INTERVAL_S="0.005", FEATURES_COUNT="1500")
    wait_until(lambda: len(read_csv(csv_path)) > 100, 60, "the first rows")
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
        while True:  # take every free byte
            handle.write(b"\0" * 4096)
    return filler


@pytest.mark.root("mounts a tmpfs")
def test_a_full_csv_filesystem_holds_acks_and_resumes_without_a_torn_line(
    services: Services, service_env: dict, small_disk: Path, broker: Broker, vhost: str
) -> None:
    csv_path = small_disk / "metric_log.csv"
    services.start("metric", METRIC_LOG_PATH=str(csv_path))
    filler = _fill_mid_run(services, csv_path, small_disk)
    assert shutil.disk_usage(small_disk).free < 4096  # the filler took it all
    wait_until(lambda: "could not make" in services.output("metric"), 60, "the disk-full error")
    assert "No space left on device" in services.output("metric")
    stalled = len(read_csv(csv_path))
    time.sleep(2)
    assert len(read_csv(csv_path)) == stalled  # nothing written, nothing acked meanwhile
    # Nothing acked while nothing could be written (4.x counts unacked messages on a tick).
    wait_until(lambda: _held(broker, vhost) > 0, 15, "inputs held unacked")
    assert services.procs["metric"].poll() is None
    filler.unlink()  # space returns
    try:
        wait_until(lambda: len(read_csv(csv_path)) >= 1500, 120, "all 1,500 rows")
    except AssertionError:
        raise AssertionError(
            f"{len(read_csv(csv_path))} rows; metric said: {services.output('metric')[-2500:]}"
        ) from None
    rows = read_csv(csv_path)
    assert len({r["message_id"] for r in rows}) == len(rows) == 1500
    assert all(r["trace_id"] is not None and len(r) == 9 for r in rows)  # no torn line
    assert csv_path.read_bytes().endswith(b"\n")
    assert services.stop("features") == 0


@pytest.mark.root("mounts a tmpfs")
@pytest.mark.disk_size("16m")
def test_a_full_state_database_filesystem_holds_acks_and_loses_nothing(
    services: Services, service_env: dict, small_disk: Path, broker: Broker, vhost: str
) -> None:
    # The metric's SQLite database on a filesystem that fills mid-run: SQLite refuses the commit
    # and rolls the transaction back. The service must keep going, hold the inputs, and once space
    # returns record every row exactly once (before, the error stopped the service).
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    services.start("metric", METRIC_STATE_PATH=str(small_disk / "metric_state.sqlite3"))
    filler = _fill_mid_run(services, csv_path, small_disk)
    wait_until(lambda: "database or disk is full" in services.output("metric"), 60,
               "the database's disk-full error")  # fmt: skip
    assert "could not make" in services.output("metric")  # retried, not fatal

    # Nothing acked while nothing could be committed (4.x counts unacked messages on a tick).
    wait_until(lambda: _held(broker, vhost) > 0, 15, "inputs held unacked")
    assert services.procs["metric"].poll() is None
    filler.unlink()  # space returns
    wait_until(lambda: len(read_csv(csv_path)) >= 1500, 120, "all 1,500 rows")
    rows = read_csv(csv_path)
    assert len({r["message_id"] for r in rows}) == len(rows) == 1500
    assert read_csv(Path(service_env["METRIC_ORPHAN_LOG_PATH"])) == []
    assert services.stop("features") == 0
    assert services.stop("metric") == 0
