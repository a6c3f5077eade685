"""The compose stack's broker, booted the way compose boots it, on RabbitMQ 4.x from the Debian 13
root (scripts/debian13-root, tests/brokers.Node): for the tests that need the real 4.x node.

What the `rabbitmq:4.x-management` container does, and what this node does instead:
- Configuration: the image reads /etc/rabbitmq/conf.d/*.conf in name order: its 10-defaults.conf
  (IMAGE_DEFAULTS), then ours, mounted as 20-modelwatch.conf. Here one rabbitmq.conf holds, in that
  order, Node's own lines, IMAGE_DEFAULTS, deploy/rabbitmq/rabbitmq.conf verbatim, and last the
  overrides (the last value of a key wins, as a later conf.d file's does). Overrides are only what
  must differ on a shared machine: ports and listeners on loopback, and where the definitions are.
- Definitions: the container's entry point, render-definitions.sh, fills the passwords from the
  environment compose gives it (from .env) into /var/lib/rabbitmq/modelwatch-definitions.json,
  the file `load_definitions` names. Here the same script, with the same environment, renders
  into the node's folder, which the node sees at /mnt; the root's /var/lib/rabbitmq is shared by
  every node of the root, so `load_definitions` is overridden to point there.
- Plugins: rabbitmq_prometheus (enabled by the base image) and rabbitmq_management (-management).
- The .env: .env.example with fresh passwords, as a user makes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.brokers import CACHE_ROOT, HERE, Node, free_port
from tests.compose import load, read_env_file
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
RENDER = REPO / "deploy" / "rabbitmq" / "render-definitions.sh"
# docker-library/rabbitmq's 10-defaults.conf, which the image loads before our file.
IMAGE_DEFAULTS = "loopback_users.guest = false\nlog.console = true\n"
IMAGE_PLUGINS = "[rabbitmq_management,rabbitmq_prometheus].\n"
RENDERED = "modelwatch-definitions.json"
VHOST = "modelwatch"


def settings(text: str) -> dict[str, str]:
    """The `key = value` lines of a rabbitmq.conf, the last value of a key winning."""
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def script_default(variable: str) -> str:
    """The default render-definitions.sh gives `variable` (`${VARIABLE:-default}`)."""
    return re.search(rf"\$\{{{variable}:-([^}}]+)\}}", RENDER.read_text())[1]


def make_env(folder: Path) -> Path:
    """A .env made from .env.example, every password replaced by a fresh one."""
    lines = []
    for line in (REPO / ".env.example").read_text().splitlines():
        key, sep, _ = line.partition("=")
        if sep and key.endswith("PASSWORD"):
            line = f"{key}={secrets.token_urlsafe(18)}"  # letters, digits, _ and -
        lines.append(line)
    path = folder / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def mounts(service: dict) -> dict[str, Path]:
    """A compose service's bind mounts: container path -> file in the checkout."""
    found = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = REPO / source
    return found


class ComposeBroker:
    """A 4.x node with compose's configuration, plugins and rendered definitions, in `folder`."""

    def __init__(self, folder: Path, root: Path = CACHE_ROOT) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.env = read_env_file(make_env(folder))
        self.compose = load(COMPOSE, self.env)
        self.service = self.compose["services"]["rabbitmq"]
        self.mounts = mounts(self.service)
        [self.conf] = [path for target, path in self.mounts.items()
                       if target.startswith("/etc/rabbitmq/conf.d/")]  # fmt: skip
        self.rendered = self._render(folder, folder / "node" / RENDERED)
        self.node = Node(folder / "node", "debian13", conf=IMAGE_DEFAULTS + self.conf.read_text(),
                         management=True, root=root)  # fmt: skip
        self.prometheus_port = free_port()
        self.overrides = {
            "listeners.tcp.default": f"127.0.0.1:{self.node.port}",
            "management.tcp.port": str(self.node.management_port),
            "prometheus.tcp.ip": "127.0.0.1",
            "prometheus.tcp.port": str(self.prometheus_port),
            "load_definitions": f"{HERE}/{RENDERED}",
        }
        with (self.node.folder / "rabbitmq.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in self.overrides.items())
        (self.node.folder / "enabled_plugins").write_text(IMAGE_PLUGINS)

    def _render(self, folder: Path, target: Path) -> subprocess.CompletedProcess:
        """The container's entry point (render-definitions.sh) with the environment compose gives
        it, reading the template the container has mounted where the script looks, writing into
        `target`; the image's own `docker-entrypoint.sh` is a stub that says what it was given."""
        stub = folder / "entrypoint-stub"
        stub.mkdir(exist_ok=True)
        (stub / "docker-entrypoint.sh").write_text('#!/bin/sh\necho "started: $*"\n')
        (stub / "docker-entrypoint.sh").chmod(0o755)
        shell, script = self.service["entrypoint"]
        template = self.mounts[script_default("DEFINITIONS_TEMPLATE")]
        target.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            [shell, self.mounts[script], *self.service["command"]],
            env={"PATH": f"{stub}:/usr/bin:/bin", **self.service["environment"],
                 "DEFINITIONS_TEMPLATE": str(template), "DEFINITIONS_TARGET": str(target)},
            capture_output=True, text=True,
        )  # fmt: skip

    def start(self) -> None:
        os.chown(self.node.folder / RENDERED, self.node.uid, self.node.gid)  # the root's rabbitmq
        self.node.start()

    def stop(self) -> None:
        self.node.stop()

    def password(self, user: str) -> str:
        from services.common.definitions import password_variable

        return self.env[password_variable(user)]

    def url(self, user: str, password: str | None = None, vhost: str = VHOST) -> str:
        secret = self.password(user) if password is None else password
        return f"amqp://{user}:{secret}@127.0.0.1:{self.node.port}/{vhost}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.node.management_port}/"

    def service_env(self, name: str, otlp_endpoint: str, logs: Path) -> dict[str, str]:
        """The environment compose gives service `name`, with host names and paths mapped onto
        this machine: the broker `rabbitmq:5672` to this node, jaeger to `otlp_endpoint`."""
        env = dict(self.compose["services"][name]["environment"])
        if "RABBITMQ_URL" in env:
            url = urlsplit(env["RABBITMQ_URL"])
            assert (url.hostname, url.port) == ("rabbitmq", 5672), env["RABBITMQ_URL"]
            netloc = f"{url.username}:{url.password}@127.0.0.1:{self.node.port}"
            env["RABBITMQ_URL"] = urlunsplit(url._replace(netloc=netloc))
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
        if "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" in env:  # Prometheus' OTLP receiver in compose
            env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = f"{otlp_endpoint}/v1/metrics"
        for key, value in env.items():
            if isinstance(value, str) and value.startswith("/app/logs/"):
                env[key] = str(logs / value.removeprefix("/app/logs/"))
        return {key: str(value) for key, value in env.items()}


@contextlib.contextmanager
def booted(folder: Path) -> Iterator[ComposeBroker]:
    """A ComposeBroker in `folder`, running for the block; the Debian 13 root is built first if
    missing (scripts/debian13-root: minutes once, milliseconds after)."""
    done = subprocess.run([REPO / "scripts" / "debian13-root"], capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr
    broker = ComposeBroker(folder)
    assert broker.rendered.returncode == 0, broker.rendered.stderr
    assert broker.rendered.stdout.strip() == "started: rabbitmq-server"
    started = time.monotonic()
    broker.start()
    try:
        print(f"\nRabbitMQ {broker.node.version} booted as compose boots it in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        yield broker
    finally:
        broker.stop()
