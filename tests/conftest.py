"""Shared fixtures: the brokers under test, a private vhost on one, a trained model, services.

Every test that talks to a broker does it through the session-scoped `broker` fixture, once per
entry of MODELWATCH_TEST_BROKERS (tests/broker_choice.py: ids `system`, `debian13`, ...). Broker
tests never touch the default vhost: each gets its own, created and deleted with the broker's
`rabbitmqctl`, so a pipeline running on this machine is not disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pika
import pytest

from services.common.broker import blocking_connection
from services.common.contracts import Contracts
from services.model.artifact import train
from tests import session_broker
from tests.broker_choice import SETTING, default, selected
from tests.session_broker import Broker
from tools.broker import free_port
from tools.otlp_sink import Receiver, Span

REPO = Path(__file__).resolve().parents[1]
BROKERS = selected()


def pytest_configure(config: pytest.Config) -> None:
    # `broker` and `node_conf` are registered in pyproject.toml; these two belong to the tests.
    config.addinivalue_line(
        "markers", "npm: needs node and the AsyncAPI tools that `npm ci` installs (scripts/setup)"
    )
    config.addinivalue_line(
        "markers", "root: needs root (starts RabbitMQ nodes as the rabbitmq user, mounts a tmpfs)"
    )
    config.addinivalue_line("markers", "disk_size(size): the size of the small_disk tmpfs")
    if os.geteuid() != 0 and any(c.installation == "debian13" for c in BROKERS):
        raise pytest.UsageError(f"{SETTING}: debian13 runs a node in a chroot, which needs root")


def pytest_report_header() -> list[str]:
    told = os.environ.get(SETTING)
    setting = f"{SETTING}={told!r}" if told is not None else f"{SETTING} unset: {default()!r}"
    return [f"brokers ({setting}):", *(f"  {session_broker.header(c)}" for c in BROKERS)]


def pytest_terminal_summary(terminalreporter) -> None:
    for broker in session_broker.USED:
        terminalreporter.write_line(f"broker under test: {broker.describe()}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # whatever uses a broker needs one, marked or not: `-m "not broker"`
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


def pytest_runtest_setup(item: pytest.Item) -> None:
    root = item.get_closest_marker("root")
    if root is not None and os.geteuid() != 0:
        pytest.skip(f"needs root: {root.args[0] if root.args else 'marked root'}")


def wait_until(check: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def model_broker_in_thread(
    url: str, contracts: Contracts, handler: Callable, prefetch: int, listing: Callable[[], str]
) -> Iterator[None]:
    """A Broker of the model service consuming `features` with `handler`, on a thread of its own,
    for the length of the block. `listing` gives `list_queues name consumers` of its vhost."""
    from services.common.broker import Broker
    from services.common.settings import BrokerSettings

    stop = asyncio.Event()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        broker = Broker(BrokerSettings((url,), "declare", prefetch), contracts, "model")
        broker.consume("features", handler)
        await broker.start(stop)
        await broker.run_until(stop)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        wait_until(lambda: "model.features\t1" in listing(), 30, "the consumer")
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@pytest.fixture(scope="session")
def contracts() -> Contracts:
    return Contracts(REPO / "contracts")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.json"
    train(path)
    return path


@pytest.fixture(scope="session", params=BROKERS, ids=[c.name for c in BROKERS])
def broker(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of MODELWATCH_TEST_BROKERS for the whole session (`debian13`: one node)."""
    with session_broker.running(request.param, tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def vhost(broker: Broker, request) -> Iterator[str]:
    request.node.user_properties.append(("rabbitmq", broker.version))  # e.g. in --junitxml
    with broker.vhost("modelwatch-test") as name:
        yield name


@pytest.fixture
def amqp_url(broker: Broker, vhost: str) -> str:
    return broker.url_for(vhost)


@pytest.fixture
def service_env(amqp_url: str, model_path: Path, tmp_path: Path) -> dict[str, str]:
    logs = tmp_path / "logs"
    return {
        **os.environ,
        "RABBITMQ_URL": amqp_url,
        "MODEL_PATH": str(model_path),
        "METRIC_LOG_PATH": str(logs / "metric_log.csv"),
        "METRIC_ORPHAN_LOG_PATH": str(logs / "orphans.csv"),
        "METRIC_STATE_PATH": str(logs / "metric_state.sqlite3"),
        "MONITOR_STATE_PATH": str(logs / "monitor_state.sqlite3"),
        "DASHBOARD_STATE_PATH": str(logs / "dashboard_state.json"),
        "DASHBOARD_ADDR": f"127.0.0.1:{free_port()}",
        "PLOT_PATH": str(logs / "error_distribution.png"),
        "PLOT_INTERVAL_S": "0.5",
        "FEATURES_INTERVAL_S": "0",
        "OTEL_TRACES_EXPORTER": "none",
    }


class Services:
    """Starts service processes and makes sure none outlives the test."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, label: str = "", **overrides: str) -> subprocess.Popen:
        """Start `services.<name>`, known (and logged) as `label`, default `name`."""
        service, name = name, label or name
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env={**self.env, **overrides},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.out").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def services(service_env: dict[str, str], tmp_path: Path) -> Iterator[Services]:
    running = Services(service_env, tmp_path / "out")
    yield running
    running.stop_all()


def stall_s(csv_path: Path) -> float:
    """The longest pause between two rows recorded one after the other."""
    times = sorted(datetime.fromisoformat(r["recorded_at"]) for r in read_csv(csv_path))
    return max((b - a).total_seconds() for a, b in itertools.pairwise(times))


def read_csv(path: Path) -> list[dict[str, str]]:
    """The complete rows of a CSV a service may be writing right now (a line still being
    written is left out: the header alone, or a row without its newline)."""
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(complete, newline="")))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real OTLP/HTTP endpoint on a free port, keeping every span it is sent."""
    running = Receiver()
    yield running
    running.close()


def traced(receiver: Receiver, **extra: str) -> dict[str, str]:
    """Service variables that export spans over OTLP/HTTP to `receiver`, every 100 ms."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **extra,
    }


def one(spans: list[Span], **match: str) -> Span:
    """The single span whose fields equal `match`; fails naming what was found otherwise."""
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span {match}, got {[(s.service, s.name) for s in found]}"
    return found[0]


class Amqp:
    """A plain pika connection for what tests do to the broker behind the services' backs."""

    def __init__(self, url: str) -> None:
        self.connection = blocking_connection(url)  # a cluster's nodes: the first that answers
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(
        self,
        exchange: str,
        body: bytes,
        headers: dict | None = None,
        message_id: str | None = None,
        routing_key: str = "",
    ) -> None:
        props = pika.BasicProperties(
            delivery_mode=2,
            headers=headers or {},
            message_id=message_id,
            content_type="application/json",
        )
        self.channel.basic_publish(exchange, routing_key, body, props, mandatory=True)

    def drain(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Take every message now in `queue`."""
        found = []
        while True:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((props, body))

    def count(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def amqp(amqp_url: str) -> Iterator[Amqp]:
    client = Amqp(amqp_url)
    yield client
    if client.connection.is_open:
        client.close()


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs (512 KiB, or the test's `disk_size` mark): a filesystem to fill up and free."""
    marked = request.node.get_closest_marker("disk_size")
    size = marked.args[0] if marked else "512k"
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
