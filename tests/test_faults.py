"""Destructive faults on a private RabbitMQ node that these tests start and remove themselves.

The machine's shared broker is never touched: the node has its own name, ports and data folder.
For each fault, rows flow through the real services while the fault is injected, and the
accounting must hold: every features message the broker confirmed (seen by a durable spy queue on
the features exchange) ends as exactly one CSV row; no row for an id that was never emitted; no id
twice; nothing dead-lettered or orphaned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

from tests.conftest import Services, read_csv, wait_until

pytestmark = pytest.mark.broker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateNode:
    """A RabbitMQ node of the tests' own, run as the rabbitmq user like the machine's."""

    def __init__(self, root: Path) -> None:
        self.name = f"mwfault{uuid.uuid4().hex[:6]}@localhost"  # no hyphen: the node would not boot
        self.port, self.dist_port = _free_port(), _free_port()
        self.root = root
        root.mkdir(parents=True)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\n")
        shutil.chown(root, "rabbitmq", "rabbitmq")
        for child in root.iterdir():
            shutil.chown(child, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@localhost:{self.port}/%2F"

    def start(self) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
        }
        subprocess.run(["su", "rabbitmq", "-s", "/bin/sh", "-c",
                        "/usr/lib/rabbitmq/bin/rabbitmq-server -detached"],
                       env=env, check=True, timeout=60)  # fmt: skip
        # await_startup gives up at once while the node has not registered with epmd yet.
        deadline = time.monotonic() + 120
        while True:
            try:
                self.ctl("await_startup", "--timeout", "90")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def ctl(self, *args: str) -> str:
        done = subprocess.run(["rabbitmqctl", "-q", "-n", self.name, *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def kill(self) -> None:
        pid = int((self.root / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the broker to die")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl("stop")
        pid_file = self.root / "pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNode]:
    base = Path(tmp_path_factory.mktemp("nodes"))
    base.chmod(0o755)  # the rabbitmq user must reach the node's folder
    for parent in base.parents:
        if str(parent).startswith("/tmp/pytest"):
            parent.chmod(parent.stat().st_mode | 0o755)
    started = PrivateNode(base / "node")
    started.start()
    yield started
    started.remove()


def _spy(url: str, exchange: str = "features") -> None:
    """A durable quorum queue on an exchange: what the broker confirmed there, kept."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(exchange, "fanout", durable=True)
    queue = f"test.spy.{exchange}"
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_purge(queue)
    channel.queue_bind(queue, exchange)
    connection.close()


def _spied(url: str, exchange: str = "features") -> list[str]:
    """The message ids in the spy queue, in order, repeats included."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    ids = []
    while True:
        method, props, _ = channel.basic_get(f"test.spy.{exchange}", auto_ack=True)
        if method is None:
            break
        ids.append(props.message_id)
    connection.close()
    return ids


def _queue_depth(node: PrivateNode, queue: str) -> int:
    for line in node.ctl("list_queues", "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def run_through(node: PrivateNode, services: Services, service_env: dict, n: int,
                fault: Callable[[], None]) -> dict[str, int]:  # fmt: skip
    csv_path = Path(service_env["METRIC_LOG_PATH"])
    _spy(node.url)
    env = {"RABBITMQ_URL": node.url}
    services.start("metric", **env)
    services.start("model", **env)
    services.start("features", **env, FEATURES_COUNT=str(n), FEATURES_INTERVAL_S="0.002")
    wait_until(lambda: len(read_csv(csv_path)) > n // 5, 60, "the first rows")
    fault()
    assert services.procs["features"].wait(180) == 0, services.output("features")
    confirmed = set(_spied(node.url))
    wait_until(lambda: {r["message_id"] for r in read_csv(csv_path)} >= confirmed, 120,
               "a row for every confirmed features message")  # fmt: skip
    rows = read_csv(csv_path)
    ids = [r["message_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was recorded twice"
    assert set(ids) == confirmed, "a row for an id the broker never confirmed"
    assert len(confirmed) == n
    assert read_csv(Path(service_env["METRIC_ORPHAN_LOG_PATH"])) == []
    for dlq in ("model.features.dlq", "metric.y_true.dlq", "metric.y_pred.dlq"):
        assert _queue_depth(node, dlq) == 0, dlq
    for name in ("model", "metric"):
        assert services.stop(name) == 0, services.output(name)
    return {"emitted": n, "recorded": len(rows), "duplicated": len(ids) - len(set(ids))}


@pytest.fixture
def clean(node: PrivateNode) -> Iterator[None]:
    yield
    for queue in ("model.features", "metric.y_true", "metric.y_pred", "test.spy.features",
                  "test.spy.y_pred"):  # fmt: skip
        with contextlib.suppress(RuntimeError):
            node.ctl("purge_queue", queue)


def test_all_connections_closed_by_the_broker(node, services, service_env, clean) -> None:
    run_through(node, services, service_env, 2000,
                lambda: node.ctl("close_all_connections", "fault test"))  # fmt: skip
    assert "connection lost" in services.output("model")


def test_broker_application_stopped_and_started(node, services, service_env, clean) -> None:
    def bounce() -> None:
        node.ctl("stop_app")
        time.sleep(2)
        node.ctl("start_app")

    run_through(node, services, service_env, 2000, bounce)


def test_broker_killed_and_restarted(node, services, service_env, clean) -> None:
    def crash() -> None:
        node.kill()
        time.sleep(1)
        node.start()

    run_through(node, services, service_env, 2000, crash)
    assert "not confirmed" in services.output("features") or "connection lost" in \
        services.output("features")  # fmt: skip


def test_model_killed_mid_batch_and_restarted(node, services, service_env, clean) -> None:
    def kill_model() -> None:
        services.stop("model", signal.SIGKILL)
        services.start("model", RABBITMQ_URL=node.url)

    run_through(node, services, service_env, 2000, kill_model)


def test_two_model_replicas_predict_each_message_once(node, services, service_env, clean) -> None:
    _spy(node.url, "y_pred")
    first = {}

    def second_replica() -> None:
        first["model"] = services.procs["model"]
        services.start("model", RABBITMQ_URL=node.url)

    run_through(node, services, service_env, 2000, second_replica)
    predictions = _spied(node.url, "y_pred")
    assert len(predictions) == len(set(predictions)) == 2000  # each predicted exactly once
    first["model"].send_signal(signal.SIGTERM)
    assert first["model"].wait(30) == 0
