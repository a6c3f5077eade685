"""The pipeline on a three-node RabbitMQ cluster, through node failures (docs/cluster.md).

Three private nodes of the broker under test's installation (tests/brokers.py `Cluster`) form a
cluster; the services declare the quorum queues once it has formed, so each has a replica on
every node, and each service is given every node's URL, starting from a different one (features
on node 0, model on node 1, metric on node 2). Each fault is injected mid-stream, with the
accounting of tests/test_faults.py: every features message the broker confirmed is exactly one
CSV row, nothing orphaned or dead-lettered. Run with -s for each fault's figures (the stall is the
longest pause between two recorded rows).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pika.exceptions import AMQPConnectionError

from services.common.broker import blocking_connection
from tests.brokers import Cluster, Node
from tests.conftest import Services, free_port, stall_s, wait_until
from tests.session_broker import Broker
from tests.test_faults import run_through

pytestmark = [
    pytest.mark.broker,
    pytest.mark.root("starts private RabbitMQ nodes as the rabbitmq user (su, chown)"),
]

FIRST_NODE = {"features": 0, "model": 1, "metric": 2}  # where each service connects first
# What docs/cluster.md recommends: a node that finds itself in a minority stops serving clients,
# and starts again by itself once it sees the majority.
CONF = "cluster_partition_handling = pause_minority\n"


@pytest.fixture
def cluster(broker: Broker, tmp_path: Path) -> Iterator[Cluster]:
    if broker.installation is None:
        pytest.skip("a broker given by URL has no private nodes to cluster")
    started = time.monotonic()
    with Cluster(tmp_path / "cluster", broker.installation, conf=CONF) as running:
        print(f"\n{running.nodes[0].version}: three nodes clustered in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        yield running


def urls(cluster: Cluster) -> dict[str, str]:
    """Each service's RABBITMQ_URL: every node, its first node first."""
    nodes = cluster.nodes
    return {
        name: ",".join(nodes[(first + i) % len(nodes)].url for i in range(len(nodes)))
        for name, first in FIRST_NODE.items()
    }


def leader(cluster: Cluster, queue: str, asked: Node | None = None) -> Node:
    """The node that leads `queue` now, as `asked` (or any running node) sees it."""
    listing = (asked or cluster.nodes[0]).ctl("list_queues", "name", "leader",
                                              "--no-table-headers")  # fmt: skip
    for line in listing.splitlines():
        name, _, node = line.partition("\t")
        if name == queue:
            return next(n for n in cluster.nodes if n.name == node.strip())
    raise AssertionError(f"no {queue} in {listing!r}")


def members(node: Node, queue: str) -> int:
    listing = node.ctl("list_queues", "name", "members", "--no-table-headers")
    for line in listing.splitlines():
        name, _, found = line.partition("\t")
        if name == queue:
            return len(re.findall(r"@", found))
    return 0


def connected_port(services: Services, name: str) -> int:
    """The port of the node `name` connected to last, from its log."""
    found = re.findall(r"connected to [\d.]+:(\d+)", services.output(name))
    assert found, services.output(name)[-2000:]
    return int(found[-1])


def moves_s(services: Services, name: str) -> list[float]:
    """How long each move of service `name` took: from its log's "connection lost to" to the
    next "connected to"."""
    stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*"
    events = re.findall(stamp + r"(connection lost to|connected to)", services.output(name), re.M)
    took, lost = [], None
    for when, what in events:
        at = datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f")
        if what == "connection lost to":
            lost = lost or at
        elif lost is not None:
            took.append((at - lost).total_seconds())
            lost = None
    return took


def report(fault: str, figures: dict[str, int], csv_path: Path, services: Services) -> None:
    moves = {name: moves_s(services, name) for name in FIRST_NODE}
    said = ", ".join(f"{name} {max(m):.2f} s" for name, m in moves.items() if m)
    print(f"\n{fault}: emitted {figures['emitted']}, recorded {figures['recorded']}, "
          f"duplicated {figures['duplicated']}, dead-lettered 0, orphaned 0; longest stall "
          f"{stall_s(csv_path):.1f} s; longest move: {said or 'none'}")  # fmt: skip


def test_quorum_queues_have_a_replica_on_every_node(cluster, services, service_env) -> None:
    services.start("model", RABBITMQ_URL=urls(cluster)["model"])
    wait_until(lambda: "connected to" in services.output("model"), 60, "the model to connect")
    for node in cluster.nodes:  # each node knows the queue, with all three members
        assert members(node, "model.features") == 3
        assert members(node, "model.features.dlq") == 3
    assert connected_port(services, "model") == cluster.nodes[FIRST_NODE["model"]].port
    # The tools take the same list: `modelwatch dlq` skips a node that does not answer.
    dead_first = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F,{cluster.url}"
    listed = subprocess.run([sys.executable, "-m", "services.cli", "dlq", "list", "model.features"],
                            env={**service_env, "RABBITMQ_URL": dead_first}, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "0 dead letter(s) in model.features.dlq" in listed.stdout


def test_the_leader_of_model_features_killed(cluster, services, service_env) -> None:
    def kill_the_leader() -> None:
        old = leader(cluster, "model.features")
        old.kill()
        alive = next(n for n in cluster.nodes if n is not old)
        wait_until(lambda: leader(cluster, "model.features", alive) is not old, 60, "a new leader")
        old.start()

    csv_path = Path(service_env["METRIC_LOG_PATH"])
    figures = run_through(cluster, services, service_env, 3000, kill_the_leader, "0.01",
                          urls(cluster).get)  # fmt: skip
    assert cluster.running(cluster.nodes[0]) == {n.name for n in cluster.nodes}
    report("leader of model.features killed", figures, csv_path, services)


def test_the_node_a_service_uses_killed(cluster, services, service_env) -> None:
    moved = {}

    def kill_the_metrics_node() -> None:
        node = next(n for n in cluster.nodes if n.port == connected_port(services, "metric"))
        moved["from"] = node.port
        node.kill()
        wait_until(lambda: connected_port(services, "metric") != node.port, 60,
                   "the metric on another node")  # fmt: skip
        moved["to"] = connected_port(services, "metric")
        node.start()

    csv_path = Path(service_env["METRIC_LOG_PATH"])
    figures = run_through(cluster, services, service_env, 3000, kill_the_metrics_node, "0.01",
                          urls(cluster).get)  # fmt: skip
    assert moved["from"] == cluster.nodes[FIRST_NODE["metric"]].port
    assert moved["to"] in {n.port for n in cluster.nodes} - {moved["from"]}
    out = services.output("metric")
    assert "connection lost to" in out and "broker not reachable" not in out.split("lost to")[1]
    report("the metric's node killed", figures, csv_path, services)


def test_a_rolling_restart_of_every_node(cluster, services, service_env) -> None:
    restarted = []

    def roll() -> None:
        for node in cluster.nodes:
            # Maintenance mode first, as an operator would: leaders move away, clients leave.
            node.ctl("drain", tool="rabbitmq-upgrade")
            node.stop()
            node.start()
            node.ctl("revive", tool="rabbitmq-upgrade")
            others = [n for n in cluster.nodes if n is not node]
            wait_until(lambda node=node, others=others:
                       node.name in cluster.running(others[0]), 60, "the node back")  # fmt: skip
            restarted.append(node.name)

    csv_path = Path(service_env["METRIC_LOG_PATH"])
    # However long the restarts take, rows flow until 500 after the last (n=0).
    figures = run_through(cluster, services, service_env, 0, roll, "0.02",
                          urls(cluster).get)  # fmt: skip
    assert restarted == [n.name for n in cluster.nodes]
    for name in ("features", "model", "metric"):  # every one was moved at least once
        assert services.output(name).count("connected to") >= 2, services.output(name)[-2000:]
    report("rolling restart of all three nodes", figures, csv_path, services)


def test_a_node_cut_off_from_the_other_two(cluster, services, service_env) -> None:
    cut = cluster.nodes[FIRST_NODE["metric"]]
    majority = cluster.nodes[0]
    seen = {}

    def partition() -> None:
        cluster.cut_off(cut)
        # The minority pauses: it refuses clients (the metric moves) until it sees the others.
        wait_until(lambda: cut.name not in cluster.running(majority), 60, "the majority to drop it")
        wait_until(lambda: connected_port(services, "metric") != cut.port, 60, "the metric to move")
        seen["refused"] = _refuses_clients(cut)
        time.sleep(5)  # rows flow through the majority meanwhile
        cluster.heal(cut)
        wait_until(lambda: cut.name in cluster.running(majority), 120, "the node back")

    csv_path = Path(service_env["METRIC_LOG_PATH"])
    figures = run_through(cluster, services, service_env, 4000, partition, "0.01",
                          urls(cluster).get)  # fmt: skip
    assert seen["refused"], "the minority node still took clients"
    assert cluster.partitions(majority) == {}
    assert cluster.running(cut) == {n.name for n in cluster.nodes}
    report("a node cut off from the other two, then healed", figures, csv_path, services)


def _refuses_clients(node: Node) -> bool:
    try:
        blocking_connection(node.url).close()
    except AMQPConnectionError:
        return True
    return False
