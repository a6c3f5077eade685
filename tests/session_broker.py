"""The broker a test session shares: the machine's, one private RabbitMQ 4 node, or one by URL.

The `broker` fixture (tests/conftest.py) yields one per entry of MODELWATCH_TEST_BROKERS
(tests/broker_choice.py); each test makes a vhost of its own on it. A `debian13` entry starts one
node from the Debian 13 root for the whole session (built first if missing), beside which the
fault tests start their own. What a test does to the broker goes through `Broker.rabbitmqctl`,
so it always reaches the broker under test, never the machine's by accident.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika

from tests.broker_choice import Choice
from tests.brokers import CACHE_ROOT, HERE, Node
from tools.broker import Target

REPO = Path(__file__).resolve().parents[1]
USED: list[Broker] = []  # in the order the session started them, for the terminal summary


@dataclass(frozen=True)
class Broker(Target):
    """A broker under test: a Target (URL, rabbitmqctl) with the test id and what it runs."""

    name: str = ""
    installation: str | None = None  # the installation of the fault tests' private nodes
    version: str = ""  # the server's own, from the AMQP handshake
    node: Node | None = None  # the session's private node, when the session started one

    def describe(self) -> str:
        where = f"node {self.node.name}, " if self.node else ""
        return f"{self.name}: RabbitMQ {self.version} ({where}amqp {self.host}:{self.port})"

    def import_definitions(self, definitions: dict) -> None:
        """Import `definitions` with rabbitmqctl, from where its CLI can read them."""
        text = json.dumps(definitions)
        if self.node is not None:  # the node's CLI sees only the root, and the folder at /mnt
            name = f"definitions-{uuid.uuid4().hex[:8]}.json"
            (self.node.folder / name).write_text(text)
            (self.node.folder / name).chmod(0o644)
            self.rabbitmqctl("import_definitions", f"{HERE}/{name}")
        elif self.installation == "system":
            # The machine's rabbitmqctl runs as the rabbitmq user, who cannot read pytest's
            # tmp_path, and 3.10's import from stdin is broken: a folder that user can read.
            with tempfile.TemporaryDirectory() as shared:
                Path(shared).chmod(0o755)
                path = Path(shared) / "definitions.json"
                path.write_text(text)
                path.chmod(0o644)
                self.rabbitmqctl("import_definitions", str(path))
        else:  # elsewhere (a container): only stdin reaches it, so its ctl must pass stdin on
            self.rabbitmqctl("import_definitions", stdin=text)


def server_version(url: str) -> str:
    """The version the server announces in the AMQP handshake."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        version = connection._impl.server_properties["version"]  # no public accessor in pika
    finally:
        connection.close()
    return version.decode() if isinstance(version, bytes) else version


@contextlib.contextmanager
def running(choice: Choice, folder: Path) -> Iterator[Broker]:
    """The broker of `choice`, started in `folder` if it is a node, stopped afterwards."""
    if choice.url is not None:
        yield _register(Broker(choice.url, choice.ctl, choice.name, choice.installation,
                               server_version(choice.url)))  # fmt: skip
        return
    build_debian13_root()
    node = Node(folder, choice.installation)
    try:
        node.start()
        yield _register(Broker(node.url, tuple(node.cli()), choice.name, choice.installation,
                               server_version(node.url), node))  # fmt: skip
    finally:
        node.stop()


def _register(broker: Broker) -> Broker:
    USED.append(broker)
    return broker


def build_debian13_root() -> None:
    """scripts/debian13-root: milliseconds when the root is built, minutes the first time."""
    done = subprocess.run([REPO / "scripts/debian13-root"], capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"scripts/debian13-root failed: {done.stderr.strip()}")


def header(choice: Choice) -> str:
    """One line on `choice` for pytest's report header, before any node is started."""
    if choice.url is None:
        stamp = CACHE_ROOT / "modelwatch.stamp"
        package = next((line.split()[2] for line in _lines(stamp)
                        if line.startswith("package rabbitmq-server ")), None)  # fmt: skip
        found = f"rabbitmq-server {package}" if package else "not built yet, built on first use"
        return f"{choice.name}: Debian 13 root {CACHE_ROOT}: {found}; one node per session"
    target = Target(choice.url, choice.ctl)
    where = f"amqp {target.host}:{target.port}, ctl `{shlex.join(target.ctl)}`"  # no password
    try:
        return f"{choice.name}: RabbitMQ {server_version(choice.url)} ({where})"
    except Exception as exc:  # noqa: BLE001 - the header reports, the tests will fail
        return f"{choice.name}: not reachable ({where}): {exc!r}"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
