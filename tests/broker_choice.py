"""Which brokers a test run uses: MODELWATCH_TEST_BROKERS, a comma list (default below).

  system     the machine's RabbitMQ: amqp at 127.0.0.1:5672, the machine's rabbitmqctl; private
             nodes for destructive tests come from the machine's installation (3.10 here)
  debian13   RabbitMQ 4.x from the Debian 13 root of scripts/debian13-root: the shared broker is a
             private node started once per session, destructive tests start their own from it
  URL ctl=COMMAND
             a broker that is already running, e.g. a native RabbitMQ 4 or a container:
             `amqp://guest:guest@127.0.0.1:5673/ ctl=docker exec rmq4 rabbitmqctl`; it has no
             private nodes, so destructive tests skip on it

Each entry is one parameter of the broker tests: `MODELWATCH_TEST_BROKERS=system,debian13`
runs every broker test twice, with ids `system` and `debian13`.

Unset, it is `system,debian13` for root when the Debian 13 root exists or can be built (it is
built on first use), else `system`: a debian13 node runs in a chroot, which needs root.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.brokers import CACHE_ROOT

SETTING = "MODELWATCH_TEST_BROKERS"
SYSTEM_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class Choice:
    """One entry of MODELWATCH_TEST_BROKERS."""

    name: str  # the test id
    installation: str | None  # what tests/brokers.Node starts for it; None: no private nodes
    url: str | None = None  # a broker already running; None: start a node of `installation`
    ctl: tuple[str, ...] = ()  # its rabbitmqctl, when `url` is set


def selected(setting: str | None = None) -> list[Choice]:
    """The brokers of this run, from `setting` or else MODELWATCH_TEST_BROKERS."""
    if setting is None:
        setting = os.environ.get(SETTING, default())
    return [_choice(entry.strip()) for entry in setting.split(",") if entry.strip()]


def default(uid: int | None = None, root: Path = CACHE_ROOT) -> str:
    """What an unset MODELWATCH_TEST_BROKERS means for user `uid` (default: this process's)."""
    uid = os.geteuid() if uid is None else uid
    # scripts/debian13-root builds with debootstrap, which it installs with apt-get if missing.
    buildable = (root / "modelwatch.stamp").exists() or bool(
        shutil.which("debootstrap") or shutil.which("apt-get")
    )
    return "system,debian13" if uid == 0 and buildable else "system"


def _choice(entry: str) -> Choice:
    if entry == "system":
        return Choice("system", "system", SYSTEM_URL, ("rabbitmqctl",))
    if entry == "debian13":
        return Choice("debian13", "debian13")
    url, _, ctl = entry.partition(" ctl=")
    if url.startswith(("amqp://", "amqps://")) and ctl.split():
        return Choice(url.rsplit("@", 1)[-1].split("/")[0], None, url, tuple(ctl.split()))
    raise ValueError(f"{SETTING}: {entry!r} is not system, debian13 or 'URL ctl=COMMAND'")
