"""A RabbitMQ broker driven from outside: its AMQP URL and the command that runs its rabbitmqctl.

The benchmark, the soak run and the tests make a vhost of their own on it and inspect it with
rabbitmqctl. Which broker `modelwatch bench` and `modelwatch soak` use (docs/benchmark.md):

  MODELWATCH_BENCH_URL  its AMQP URL; the path is ignored, each run makes its own vhost
                        (default amqp://guest:guest@localhost:5672/). A cluster's nodes, as
                        in RABBITMQ_URL: URLs separated by commas; the services get them all,
                        the broker's CPU figure is the first node's
  MODELWATCH_BENCH_CTL  its rabbitmqctl, split as a shell would (default `rabbitmqctl`), e.g.
                        `docker exec rmq4 rabbitmqctl`
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from services.common.settings import split_urls

URL_SETTING, CTL_SETTING = "MODELWATCH_BENCH_URL", "MODELWATCH_BENCH_CTL"
DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


@dataclass(frozen=True)
class Target:
    """A running broker: `url` reaches it over AMQP, `ctl` is the argv of its rabbitmqctl."""

    url: str
    ctl: tuple[str, ...] = ("rabbitmqctl",)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Target:
        ctl = tuple(shlex.split(env.get(CTL_SETTING) or "rabbitmqctl"))
        return cls(env.get(URL_SETTING) or DEFAULT_URL, ctl)

    @property
    def nodes(self) -> list[str]:
        """Each node's URL (one for a single broker)."""
        return split_urls(self.url)

    @property
    def host(self) -> str:
        return urlsplit(self.nodes[0]).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.nodes[0])
        return parts.port or (5671 if parts.scheme == "amqps" else 5672)

    @property
    def user(self) -> str:
        return unquote(urlsplit(self.nodes[0]).username or "guest")

    def url_for(self, vhost: str, user: str | None = None, password: str | None = None) -> str:
        """The URL of `vhost` on this broker, as the URL's user or as `user` with `password`;
        for a cluster, every node's, separated by commas as RABBITMQ_URL takes them."""
        return ",".join(self._node_url(node, vhost, user, password) for node in self.nodes)

    def _node_url(self, node: str, vhost: str, user: str | None, password: str | None) -> str:
        parts = urlsplit(node)
        if user is not None or password is not None:
            name = quote(user if user is not None else self.user, safe="")
            secret = quote(password if password is not None else unquote(parts.password or ""),
                           safe="")  # fmt: skip
            netloc = f"{name}:{secret}@{parts.netloc.rsplit('@', 1)[-1]}"
        else:
            netloc = parts.netloc
        return parts._replace(netloc=netloc, path="/" + quote(vhost, safe="")).geturl()

    def rabbitmqctl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """Run rabbitmqctl against the broker; its output, or RuntimeError naming the command."""
        # A session of its own, killed whole: RabbitMQ 4's CLI script runs erl as a child that
        # holds the pipes, so killing the script alone would leave communicate() waiting.
        cli = subprocess.Popen([*self.ctl, "-q", *args], text=True, start_new_session=True,
                               stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            out, err = cli.communicate(stdin, timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
        if cli.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {(err or out).strip()}")
        return out

    @contextlib.contextmanager
    def vhost(self, prefix: str) -> Iterator[str]:
        """A fresh vhost on which the URL's user may do everything, deleted afterwards."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.rabbitmqctl("add_vhost", name)
        try:
            self.rabbitmqctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")
            yield name
        finally:
            self.rabbitmqctl("delete_vhost", name)

    def version(self) -> str:
        """The version `rabbitmqctl status` reports, or "" when it reports none."""
        for line in self.rabbitmqctl("status").splitlines():
            if line.startswith("RabbitMQ version"):
                return line.split(":", 1)[1].strip()
        return ""

    def pid(self) -> int | None:
        """The broker's Erlang VM, if it runs on this machine: whoever listens on the URL's port
        and is a beam.smp (a container's port is held by a proxy: None, no CPU figure)."""
        listening = _listening_inodes(self.port)
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and listening & _socket_inodes(proc):
                with contextlib.suppress(OSError):
                    if b"beam.smp" in (proc / "cmdline").read_bytes():
                        return int(proc.name)
        return None


def _listening_inodes(port: int) -> set[str]:
    found = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(fields[9])  # state 0A is LISTEN
    return found


def _socket_inodes(proc: Path) -> set[str]:
    found = set()
    with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
        for fd in (proc / "fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    found.add(link[8:-1])
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for a dashboard the tests or bench start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
