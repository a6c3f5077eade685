"""The compose stack's broker on RabbitMQ 4.x, booted as compose boots it (tests/compose_broker.py):
our rabbitmq.conf accepted and in force, the rendered definitions loaded at boot, guest shut out,
and the real services, each with the environment and the user compose gives it, writing rows.

A setting 4.x rejects fails the boot, so every test here. Run with -s for the timings and for
what the node logged as warnings.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from services.common.contracts import Contracts
from services.common.definitions import build
from tests import compose_broker as cb
from tests.compose_broker import VHOST, ComposeBroker, settings
from tests.conftest import Amqp, Services, free_port, read_csv, wait_until
from tools.contracts.check import compose_shards
from tools.otlp_sink import Receiver

BROKER_SERVICES = ("features", "model", "metric", "monitor", "dashboard")
# What may differ from deploy/rabbitmq/rabbitmq.conf on a shared machine, and why.
ADAPTED = {
    "listeners.tcp.default": "the machine's own broker has 5672; loopback only",
    "management.tcp.port": "a free port instead of 15672",
    "prometheus.tcp.ip": "the image's prometheus plugin, on loopback",
    "prometheus.tcp.port": "a free port instead of 15692",
    "load_definitions": "the rendered file in the node's own folder (the root is shared)",
}
# Each other setting of our rabbitmq.conf, as the running node holds it: application, key, value
# as Erlang prints it. A setting added to the file without a row here fails the test.
IN_FORCE = {
    "loopback_users.guest": ("rabbit", "loopback_users", '[<<"guest">>]'),
    "max_message_size": ("rabbit", "max_message_size", "16777216"),
    "consumer_timeout": ("rabbit", "consumer_timeout", "1800000"),
    "default_queue_type": ("rabbit", "default_queue_type", "rabbit_quorum_queue"),  # 4.x maps it
    "vm_memory_high_watermark.relative": ("rabbit", "vm_memory_high_watermark", "0.4"),
    "disk_free_limit.absolute": ("rabbit", "disk_free_limit", '"512MB"'),
    "heartbeat": ("rabbit", "heartbeat", "60"),
}
LOGGING = {"log.console", "log.console.level", "log.file"}  # checked by what the node writes

pytestmark = [
    pytest.mark.broker,
    pytest.mark.root("starts a RabbitMQ 4.x node from the Debian 13 root"),
]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeBroker]:
    with cb.booted(tmp_path_factory.mktemp("compose-broker")) as running:
        yield running


def test_compose_mounts_what_the_entry_point_and_the_conf_expect(broker: ComposeBroker) -> None:
    ours = settings(broker.conf.read_text())
    # The entry point writes where load_definitions reads, from the template compose mounts.
    assert ours["load_definitions"] == cb.script_default("DEFINITIONS_TARGET")
    assert broker.mounts[cb.script_default("DEFINITIONS_TEMPLATE")].name == "definitions.json"
    # Loaded after the image's 10-defaults.conf, so our loopback_users.guest wins.
    [target] = [t for t, path in broker.mounts.items() if path == broker.conf]
    assert os.path.dirname(target) == "/etc/rabbitmq/conf.d"
    assert os.path.basename(target) > "10-defaults.conf"


def test_the_node_runs_our_rabbitmq_conf_verbatim_but_for_ports(broker: ComposeBroker) -> None:
    text = (broker.node.folder / "rabbitmq.conf").read_text()
    verbatim = cb.IMAGE_DEFAULTS + broker.conf.read_text()
    assert text.count(verbatim) == 1
    appended = settings(text[text.index(verbatim) + len(verbatim) :])
    assert set(appended) <= set(ADAPTED), set(appended) - set(ADAPTED)
    assert appended["load_definitions"] == f"{cb.HERE}/{cb.RENDERED}"

    ours = settings(broker.conf.read_text())
    assert set(ours) - set(ADAPTED) == set(IN_FORCE) | LOGGING
    pairs = ", ".join(f"{{{app}, {key}}}" for app, key, _ in IN_FORCE.values())
    expression = f"[{{K, application:get_env(A, K)}} || {{A, K}} <- [{pairs}]]."
    held = broker.node.ctl("eval", expression)
    print(f"\nin force: {' '.join(held.split())}")
    for app, key, value in IN_FORCE.values():
        assert f"{{{key},{{ok,{value}}}}}" in "".join(held.split()), (app, key, value, held)
    # Logging as the file says: to the console (node.out) at info, no log file.
    assert "[info]" in (broker.node.folder / "node.out").read_text()
    assert not list((broker.node.folder / "log").glob("*.log"))
    warnings = [line for line in (broker.node.folder / "node.out").read_text().splitlines()
                if "[warning]" in line or "[error]" in line]  # fmt: skip
    print("node warnings:\n" + "\n".join(warnings))


def _definitions(broker: ComposeBroker) -> dict:
    return json.loads(broker.node.ctl("export_definitions", "-", "--format", "json"))


def _keyed(entries: list[dict], *fields: str) -> set[str]:
    return {json.dumps({f: e.get(f) for f in fields}, sort_keys=True) for e in entries}


def test_the_definitions_are_loaded_at_boot_as_the_catalog_gives_them(
    broker: ComposeBroker, contracts: Contracts
) -> None:
    # Against the catalog, not the rendered file: a render that mangles a permission fails here.
    loaded, expected = _definitions(broker), build(contracts, VHOST, compose_shards())
    said = (broker.node.folder / "node.out").read_text()
    assert f"Applying definitions from regular file at {cb.HERE}/{cb.RENDERED}" in said
    assert [v["name"] for v in loaded["vhosts"]] == [VHOST]
    for section, fields in {
        "exchanges": ("name", "vhost", "type", "durable", "auto_delete", "arguments"),  # 4.0's
        # export leaves out `internal` (false in ours)
        "queues": ("name", "vhost", "durable", "auto_delete", "arguments"),
        "bindings": ("source", "vhost", "destination", "destination_type", "routing_key"),
        "permissions": ("user", "vhost", "configure", "write", "read"),
    }.items():
        assert _keyed(loaded[section], *fields) == _keyed(expected[section], *fields), section
    users = {u["name"]: sorted(u["tags"]) for u in loaded["users"]}
    assert users == {u["name"]: sorted(u["tags"]) for u in expected["users"]}
    for user in users:  # each logs in with the password from .env
        pika.BlockingConnection(pika.URLParameters(broker.url(user))).close()


def test_guest_has_no_access_to_modelwatch(broker: ComposeBroker) -> None:
    users = {u["name"] for u in _definitions(broker)["users"]}
    listed = broker.node.ctl("list_permissions", "-p", VHOST)
    assert "guest" not in listed, listed
    print(f"\nusers: {sorted(users)}")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(broker.url("guest", password="guest")))


def test_the_services_write_rows_end_to_end(
    broker: ComposeBroker, model_path: Path, tmp_path: Path
) -> None:
    receiver = Receiver()
    logs = tmp_path / "logs"
    base = {"PATH": os.environ["PATH"], "MODEL_PATH": str(model_path), "HOME": str(tmp_path),
            "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    running = Services(base, tmp_path / "out")
    env = {name: broker.service_env(name, receiver.endpoint, logs) for name in BROKER_SERVICES}
    try:
        for name in ("metric", "model", "monitor", "dashboard"):
            assert env[name]["RABBITMQ_TOPOLOGY"] == "verify"
        for name in ("metric", "model", "monitor"):
            running.start(name, **env[name])
        assert env["dashboard"].pop("DASHBOARD_ADDR") == "0.0.0.0:8050"  # compose publishes it
        page = f"127.0.0.1:{free_port()}"
        running.start("dashboard", **env["dashboard"], DASHBOARD_ADDR=page)
        started = time.monotonic()
        running.start("features", **{**env["features"], "FEATURES_COUNT": "25",
                                     "FEATURES_INTERVAL_S": "0.01"})  # fmt: skip
        wait_until(lambda: len(read_csv(logs / "metric_log.csv")) >= 25, 60, "25 rows")
        print(f"\n25 rows in {time.monotonic() - started:.1f} s")
        # The rows' metric_record messages go out after the rows are durable (the outbox).
        wait_until(lambda: _rows_shown(page) >= 25, 60, "25 rows on the dashboard")
        wait_until(lambda: set(_depths(broker).values()) == {0}, 60, "every queue drained")
        for name in ("features", "metric", "model", "monitor", "dashboard"):
            assert running.stop(name) == 0, running.output(name)
            assert f"vhost '{VHOST}'" in running.output(name)
    finally:
        running.stop_all()
        receiver.close()
    assert len({row["message_id"] for row in read_csv(logs / "metric_log.csv")}) == 25
    assert {span.service for span in receiver.snapshot()} == set(BROKER_SERVICES)
    counts = _depths(broker)
    assert set(counts.values()) == {0}, counts  # every message handled, no dead letter


def _rows_shown(addr: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{addr}/api/state", timeout=5) as answer:
            return json.load(answer)["rows_total"]
    except OSError:  # not listening yet
        return 0


def _depths(broker: ComposeBroker) -> dict[str, int]:
    """Ready messages per queue, as the queue itself answers; the history streams are left out
    (they keep what they are sent). Not `rabbitmqctl list_queues messages`: for quorum queues
    that is a statistic refreshed every few seconds, and it read 0 for a queue holding 25."""
    listed = broker.node.ctl("list_queues", "-p", VHOST, "--no-table-headers", "name")
    names = [name for name in listed.split() if not name.endswith(".history")]
    client = Amqp(broker.url("admin"))
    try:
        return {name: client.count(name) for name in names}
    finally:
        client.close()
