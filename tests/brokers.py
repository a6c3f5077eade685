"""Private RabbitMQ nodes that tests start, kill and stop themselves, next to the machine's own.

A node comes from the machine's installation ("system", 3.10 here) or from the Debian 13 root
that scripts/debian13-root keeps in the cache ("debian13", 4.0). Which brokers a test run uses is
tests/broker_choice.py's business; this module only runs nodes.

Why a node is started the way it is (each found out on this machine):
- Everything is its own: node name (NAME@localhost, so only `localhost` must resolve, inside the
  root too), AMQP, distribution, epmd and management ports, all on loopback. Its epmd is started
  first, in the foreground: a node that finds no epmd on its ERL_EPMD_PORT starts
  `epmd -daemon`, which would outlive the node and escape stop().
- Every command (server, epmd, rabbitmqctl) runs in a private mount namespace (`unshare
  --mount`) that binds the node folder at /mnt and, for the root, /proc and /dev; then `chroot
  --userspec` to the root (or to / for the machine's) as that installation's rabbitmq user. The
  machine never sees these mounts: nothing stays mounted however a test ends, and nodes from one
  root never share a mount. Seeing its folder at /mnt, a node never walks the real path, whose
  parents pytest keeps 0700 (and any other pytest session on the machine resets them to 0700).
- The root's rabbitmq user has other ids than the machine's (its 102:103 are redis here): the
  folder belongs to the ids of the installation that runs the node.
- The cookie is the folder's .erlang.cookie, written before start, with HOME=/mnt for the node
  and for every rabbitmqctl: no shared cookie file, no race to create one.
- Readiness is `rabbitmqctl wait PIDFILE`: pid file, then distribution, then applications.
  (`await_startup` gives up at once while the node is not registered with its epmd yet, hence
  the retry loop in tests/test_faults.py.) A killed node leaves its pid file behind, so start()
  removes it first; a node that fails to boot never writes one, so start() watches the process.
- rabbitmqctl's own distribution ports stay the default 35672-35682, shared with every other
  rabbitmqctl call on the machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE_ROOT = (
    Path(os.environ.get("MODELWATCH_CACHE", Path.home() / ".cache/modelwatch")) / "debian13"
)
BIN = "/usr/lib/rabbitmq/bin"
HERE = "/mnt"  # the node folder, as every process of the node sees it
# Run by `unshare --mount`: $1 the root ("/" for the machine's), $2 the folder, $3 uid:gid, then
# the command. chroot to / changes nothing but the user.
LAUNCH = f"""set -e
if [ "$1" != / ]; then mount --rbind /proc "$1/proc"; mount --rbind /dev "$1/dev"; fi
mount --bind "$2" "$1{HERE}"
root=$1 ids=$3
shift 3
exec chroot --userspec="$ids" --groups="${{ids#*:}}" "$root" "$@"
"""
LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rabbitmq_ids(passwd: Path) -> tuple[int, int]:
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "rabbitmq":
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"no rabbitmq user in {passwd}")


class Node:
    """A private node of `installation` ("system" or "debian13") with its data in `folder`;
    `conf` is added to its rabbitmq.conf; `management` enables the management plugin."""

    def __init__(self, folder: Path, installation: str = "system", conf: str = "",
                 management: bool = False, root: Path = CACHE_ROOT, *,
                 epmd_port: int | None = None, cookie: str | None = None) -> None:  # fmt: skip
        if installation not in ("system", "debian13"):
            raise ValueError(f"no private nodes of {installation!r}")
        self.root = root if installation == "debian13" else Path("/")
        if installation == "debian13" and not (root / "modelwatch.stamp").exists():
            raise RuntimeError(f"no Debian 13 root at {root}: run scripts/debian13-root")
        self.installation, self.folder = installation, folder
        self.name = f"mw{installation[:3]}{uuid.uuid4().hex[:6]}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        # A cluster's nodes share an epmd (Cluster runs it): each finds the others through it.
        self.own_epmd = epmd_port is None
        self.epmd_port = free_port() if epmd_port is None else epmd_port
        self.management_port = free_port() if management else None
        self.uid, self.gid = _rabbitmq_ids(self.root / "etc/passwd")
        self._node: subprocess.Popen | None = None
        self._epmd: subprocess.Popen | None = None
        self._prepare(conf, management, cookie or secrets.token_hex(16).upper())

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _prepare(self, conf: str, management: bool, secret: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # `default`, the key stock configurations use (deploy/rabbitmq/rabbitmq.conf too): a conf
        # that sets it replaces this listener rather than adding one (two on one port: no boot).
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        if management:
            port = self.management_port
            lines += ["management.tcp.ip = 127.0.0.1", f"management.tcp.port = {port}"]
        (self.folder / "rabbitmq.conf").write_text("\n".join([*lines, conf, ""]))
        plugins = "[rabbitmq_management].\n" if management else "[].\n"
        (self.folder / "enabled_plugins").write_text(plugins)
        cookie = self.folder / ".erlang.cookie"
        cookie.write_text(secret)
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        for path in (self.folder, *self.folder.iterdir()):
            os.chown(path, self.uid, self.gid)

    def _env(self, marker: str | None = None) -> dict[str, str]:
        return {
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": HERE,  # where Erlang finds the cookie
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "MODELWATCH_NODE": marker or self.name,  # marks every process of this node, for stop()
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_CRASH_DUMP": f"{HERE}/erl_crash.dump",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOOPBACK,
            "RABBITMQ_CTL_ERL_ARGS": LOOPBACK,
            "RABBITMQ_MNESIA_BASE": f"{HERE}/mnesia",
            "RABBITMQ_LOG_BASE": f"{HERE}/log",
            "RABBITMQ_CONFIG_FILE": f"{HERE}/rabbitmq.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{HERE}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{HERE}/pid",
        }

    def _command(self, *argv: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", LAUNCH, "launch",
                str(self.root), str(self.folder), f"{self.uid}:{self.gid}", *argv]  # fmt: skip

    def _spawn(self, log: str, *argv: str, marker: str | None = None) -> subprocess.Popen:
        with open(self.folder / log, "ab") as out:
            return subprocess.Popen(self._command(*argv), env=self._env(marker),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)  # fmt: skip

    def spawn_epmd(self, marker: str | None = None) -> subprocess.Popen:
        """An epmd on the node's ERL_EPMD_PORT, in the foreground (see the module's notes)."""
        return self._spawn("epmd.out", "epmd", "-port", str(self.epmd_port),
                           "-address", "127.0.0.1", marker=marker)  # fmt: skip

    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout: float = 120) -> str:
        """Run a RabbitMQ CLI tool of the node's installation against it, as the node runs."""
        cli = self._cli(tool, *args)
        try:
            out, err = cli.communicate(timeout=timeout)
        finally:
            _end(cli)
        if cli.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {err or out}")
        return out

    def cli(self, tool: str = "rabbitmqctl") -> list[str]:
        """The argv of a CLI tool aimed at the node, its environment included, for callers that
        take a command (tools/broker.py, `modelwatch bench`): run as root, it needs nothing else."""
        env = [f"{key}={value}" for key, value in self._env().items()]
        return ["env", "-i", *env, *self._command(f"{BIN}/{tool}", "-n", self.name)]

    def _cli(self, tool: str, *args: str) -> subprocess.Popen:
        # A session of its own: 4.0's CLI scripts run erl as a child (3.10's exec it), and that
        # erl holds the pipes; killing the script alone, communicate() would wait for the erl.
        return subprocess.Popen(self._command(f"{BIN}/{tool}", "-q", "-n", self.name, *args),
                                env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip

    @functools.cached_property
    def version(self) -> str:
        """The RabbitMQ version of the node's installation (its CLI's)."""
        return self.ctl("version").strip()

    def start(self, timeout: float = 120) -> None:
        if self.own_epmd and (self._epmd is None or self._epmd.poll() is not None):
            self._epmd = self.spawn_epmd()
        (self.folder / "pid").unlink(missing_ok=True)  # stale after kill(): `wait` would trust it
        self._node = self._spawn("node.out", f"{BIN}/rabbitmq-server")
        # `wait` would wait its full timeout for the pid file of a node that failed to boot.
        waiter = self._cli("rabbitmqctl", "wait", "--timeout", str(int(timeout)), f"{HERE}/pid")
        while waiter.poll() is None and self._node.poll() is None:
            time.sleep(0.2)
        _end(waiter)
        if waiter.returncode != 0:
            said = waiter.communicate()[0]
            raise RuntimeError(f"node {self.name} did not start: {said}\n{self._why()}")

    def _why(self) -> str:
        lines = (self.folder / "node.out").read_text(errors="replace").splitlines()
        errors = [line for line in lines if "[error]" in line or "Kernel pid" in line]
        return "\n".join(errors[:20] or lines[-20:])

    def kill(self) -> None:
        """SIGKILL the Erlang VM, as a crash would; epmd and the data stay."""
        os.kill(int((self.folder / "pid").read_text()), signal.SIGKILL)
        if self._node:
            self._node.wait(30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM the node (a graceful stop, as a service manager does it), then its epmd, and
        SIGKILL whatever of the node still runs: its mounts go with its last process."""
        procs = [proc for proc in (self._node, self._epmd) if proc]
        self._node = self._epmd = None
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        _kill_marked(self.name)
        for proc in procs:
            proc.wait(10)

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Cluster:
    """`size` private nodes of `installation` joined into one RabbitMQ cluster on loopback.

    They share one epmd (run here, not by a node, so stopping any node leaves it to the others)
    and one Erlang cookie; node 0 starts the cluster and the others `join_cluster` it. Queues
    declared once all have joined get a replica on each (RabbitMQ's default quorum size covers
    three nodes). `url` lists every node, as RABBITMQ_URL takes a cluster."""

    def __init__(self, folder: Path, installation: str = "debian13", size: int = 3,
                 conf: str = "", root: Path = CACHE_ROOT) -> None:  # fmt: skip
        self.marker = f"mwcluster{uuid.uuid4().hex[:6]}"
        port, cookie = free_port(), secrets.token_hex(16).upper()
        self.nodes = [Node(folder / f"node{i}", installation, conf, root=root, epmd_port=port,
                           cookie=cookie) for i in range(size)]  # fmt: skip
        self._epmd: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        self._epmd = self.nodes[0].spawn_epmd(marker=self.marker)
        _wait_listening(self.nodes[0].epmd_port, self._epmd)
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # each boot is mostly waiting
            list(pool.map(Node.start, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        running = self.running(first)
        if running != {node.name for node in self.nodes}:
            raise RuntimeError(f"the cluster formed with {running} only")

    def running(self, asked: Node) -> set[str]:
        """The nodes `asked` sees running in its cluster."""
        status = json.loads(asked.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def cut_off(self, node: Node) -> None:
        """Partition `node` from the other nodes, with the nodes' own tools: it uses a wrong
        Erlang cookie for each of them and drops its links, so neither side can connect to the
        other again until heal(). Only the links between nodes are cut: clients and the CLI
        still reach every node (no firewall on this machine; docs/cluster.md)."""
        others = ", ".join(f"'{other.name}'" for other in self.nodes if other is not node)
        node.ctl("eval", f"[erlang:set_cookie(N, modelwatch_cut) || N <- [{others}]], "
                         f"[erlang:disconnect_node(N) || N <- [{others}]], ok.")  # fmt: skip

    def heal(self, node: Node) -> None:
        others = ", ".join(f"'{other.name}'" for other in self.nodes if other is not node)
        node.ctl("eval", f"[erlang:set_cookie(N, erlang:get_cookie()) || N <- [{others}]], ok.")

    def partitions(self, asked: Node) -> dict:
        """The partitions `asked` reports (empty when there are none)."""
        return json.loads(asked.ctl("cluster_status", "--formatter", "json"))["partitions"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._epmd is not None:
            self._epmd.terminate()
            self._epmd.wait(30)
            self._epmd = None
        _kill_marked(self.marker)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    # A node that finds no epmd starts a daemon one that would escape stop(): wait for ours.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"epmd did not listen on {port}")


def _kill_marked(name: str) -> None:
    """SIGKILL every process marked with MODELWATCH_NODE=`name`: its mounts go with the last."""
    marker = f"MODELWATCH_NODE={name}".encode()
    for _ in range(50):
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _has(p, marker)]
        if not left:
            return
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes of {name} survive SIGKILL: {left}")


def _end(cli: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cli.pid, signal.SIGKILL)  # its erl too, if still there
    cli.wait()


def _has(proc: Path, marker: bytes) -> bool:
    try:
        return marker in (proc / "environ").read_bytes().split(b"\0")
    except OSError:  # gone meanwhile, or not ours to read
        return False
