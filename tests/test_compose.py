"""The compose stack, checked without a Docker engine: real linters, the real broker, real services.

What cannot be checked here (no Docker): that the images build and the containers start; the
broker image's own behaviour (4.x) with our rabbitmq.conf; Jaeger's UI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest

from services.common.contracts import Contracts, shard_key, shard_of
from services.common.definitions import build, password_variable
from tests.compose import load, read_env_file
from tests.conftest import REPO, Services, free_port, read_csv, wait_until
from tests.session_broker import Broker
from tools.otlp_sink import Receiver

BIN = Path(sys.executable).parent
COMPOSE = REPO / "docker-compose.yml"
DEFINITIONS = REPO / "deploy" / "rabbitmq" / "definitions.json"
RENDER = REPO / "deploy" / "rabbitmq" / "render-definitions.sh"
ENV_EXAMPLE = read_env_file(REPO / ".env.example")
BROKER_SERVICES = ("features", "model", "metric", "monitor", "dashboard")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE, ENV_EXAMPLE)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    done = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([BIN / "hadolint", REPO / "Dockerfile"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_carries_the_services_and_not_the_tools() -> None:
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", (REPO / "Dockerfile").read_text(), re.M)
    sources = {part for line in copied for part in line.split()}
    assert {"services", "observability", "contracts"} <= sources
    assert not sources & {"tools", "tests", "."}, sources
    assert {"tools", "tests"} <= set((REPO / ".dockerignore").read_text().split())


def test_shell_scripts_pass_shellcheck() -> None:
    shell = [p for p in sorted((REPO / "scripts").iterdir()) if not p.suffix]
    scripts = [RENDER, REPO / ".ci" / "run", *shell]
    done = subprocess.run([BIN / "shellcheck", *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_committed_definitions_are_the_ones_the_catalog_gives(
    contracts: Contracts, compose: dict
) -> None:
    shards = int(compose["services"]["metric"]["environment"]["METRIC_SHARDS"])
    assert shards > 1  # so that `--scale metric=3` shares the join
    # Every service verifies the topology with the same number, or it would not find the queues.
    for name in BROKER_SERVICES:
        assert compose["services"][name]["environment"]["METRIC_SHARDS"] == str(shards), name
    assert json.loads(DEFINITIONS.read_text()) == build(contracts, shards=shards), (
        "deploy/rabbitmq/definitions.json is stale: run `modelwatch broker definitions "
        f"--metric-shards {shards} > deploy/rabbitmq/definitions.json`"
    )


def test_images_are_pinned_and_services_wait_for_a_healthy_broker(compose: dict) -> None:
    services = compose["services"]
    assert re.fullmatch(r"rabbitmq:4\.\d+\.\d+-management", services["rabbitmq"]["image"])
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", services["jaeger"]["image"])
    assert re.fullmatch(r"prom/prometheus:v2\.53\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])
    assert "--enable-feature=otlp-write-receiver" in services["prometheus"]["command"]
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", (REPO / "Dockerfile").read_text(), re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", ENV_EXAMPLE["PYTHON_IMAGE"])
    for name in BROKER_SERVICES:
        service = services[name]
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        assert service["restart"] == "on-failure"
        assert service["command"] == ["modelwatch", name]
        assert service["environment"]["RABBITMQ_TOPOLOGY"] == "verify"
        url = urlsplit(service["environment"]["RABBITMQ_URL"])
        assert (url.username, url.hostname, url.path) == (name, "rabbitmq", "/modelwatch")
        assert service["environment"]["OTEL_SERVICE_NAME"] == name
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert service["environment"]["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] == (
            "http://prometheus:9090/api/v1/otlp/v1/metrics"
        )
    assert "RABBITMQ_URL" not in services["plot"]["environment"]
    for name in ("metric", "plot"):
        assert "./logs:/app/logs" in services[name]["volumes"]


def test_every_password_variable_is_wired_through(compose: dict) -> None:
    users = [u["name"] for u in json.loads(DEFINITIONS.read_text())["users"]]
    variables = {password_variable(u) for u in users}
    assert variables <= set(ENV_EXAMPLE)
    assert variables == set(compose["services"]["rabbitmq"]["environment"])
    rendered_by_script = re.search(r'^variables="([^"]+)"', RENDER.read_text(), re.M)[1].split()
    assert set(rendered_by_script) == variables


def test_every_service_setting_in_compose_is_documented(compose: dict) -> None:
    settings = (REPO / "docs" / "settings.md").read_text()
    for name in (*BROKER_SERVICES, "plot"):
        for variable in compose["services"][name]["environment"]:
            assert f"`{variable}`" in settings, f"{variable} (compose) is not in docs/settings.md"


def _render(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "docker-entrypoint.sh").write_text('#!/bin/sh\necho "started: $*"\n')
    (stub / "docker-entrypoint.sh").chmod(0o755)
    return subprocess.run(
        ["/bin/sh", RENDER, "rabbitmq-server"],
        env={"PATH": f"{stub}:/usr/bin:/bin", "DEFINITIONS_TEMPLATE": str(DEFINITIONS),
             "DEFINITIONS_TARGET": str(tmp_path / "rendered.json"), **env},
        capture_output=True, text=True,
    )  # fmt: skip


def test_broker_entrypoint_fills_passwords_then_starts_rabbitmq(tmp_path: Path) -> None:
    done = _render(tmp_path, ENV_EXAMPLE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started: rabbitmq-server"
    rendered = json.loads((tmp_path / "rendered.json").read_text())
    for user in rendered["users"]:
        assert user["password"] == ENV_EXAMPLE[password_variable(user["name"])]
    assert oct((tmp_path / "rendered.json").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("bad", ["", "has space", "quote'", "slash/"])
def test_broker_entrypoint_refuses_a_missing_or_unsafe_password(tmp_path: Path, bad: str) -> None:
    done = _render(tmp_path, {**ENV_EXAMPLE, "MODEL_BROKER_PASSWORD": bad})
    assert done.returncode == 1
    assert "MODEL_BROKER_PASSWORD" in done.stderr and "started" not in done.stdout


class Deployment:
    """The committed definitions, rendered and imported into the broker under test, test names."""

    def __init__(self, broker: Broker, tmp_path: Path) -> None:
        self.broker = broker
        self.tag = uuid.uuid4().hex[:6]
        self.vhost = f"modelwatch-test-{self.tag}"
        self.passwords = {u: f"pw-{u}-{self.tag}" for u in (*BROKER_SERVICES, "admin")}
        assert _render(tmp_path, {password_variable(u): p for u, p in self.passwords.items()}) \
            .returncode == 0  # fmt: skip
        text = (tmp_path / "rendered.json").read_text()
        definitions = json.loads(text)
        definitions["vhosts"] = [{"name": self.vhost}]
        for section in definitions.values():
            for entry in section:
                if entry.get("vhost") == "modelwatch":
                    entry["vhost"] = self.vhost
                if "user" in entry:
                    entry["user"] = self.user(entry["user"])
        for user in definitions["users"]:
            user["name"] = self.user(user["name"])
        broker.import_definitions(definitions)
        wait_until(lambda: self._ready(), 30, "the definitions import")

    def user(self, name: str) -> str:
        return f"t{self.tag}-{name}"

    def url(self, user: str) -> str:
        return self.broker.url_for(self.vhost, self.user(user), self.passwords[user])

    def _ready(self) -> bool:
        try:
            listing = self.broker.rabbitmqctl("list_queues", "-p", self.vhost, "name")
        except RuntimeError:
            return False
        return "model.features.dlq" in listing

    def remove(self) -> None:
        self.broker.rabbitmqctl("delete_vhost", self.vhost)
        for user in self.passwords:
            self.broker.rabbitmqctl("delete_user", self.user(user))


@pytest.fixture
def deployment(broker: Broker, tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(broker, tmp_path)
    yield deployed
    deployed.remove()


def _channel(url: str):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def _refused(url: str, action) -> bool:
    connection, channel = _channel(url)
    try:
        action(channel)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()
    return False


def _publish(exchange: str, key: str = ""):
    return lambda ch: ch.basic_publish(exchange, key, b"{}", pika.BasicProperties(), mandatory=True)


@pytest.mark.broker
def test_each_service_user_may_do_its_job_and_nothing_else(
    deployment: Deployment, compose: dict
) -> None:
    d = deployment
    # What each must be able to do.
    # The join's halves carry their shard's key (6 shards in compose).
    key = shard_key("an-id")
    shards = int(compose["services"]["metric"]["environment"]["METRIC_SHARDS"])
    shard = f"shard-{shard_of(key, shards)}-of-{shards}"
    connection, channel = _channel(d.url("features"))
    channel.basic_publish("features", "", b"{}", pika.BasicProperties(), mandatory=True)
    channel.basic_publish("y_true", key, b"{}", pika.BasicProperties(), mandatory=True)
    connection.close()
    connection, channel = _channel(d.url("model"))
    assert channel.basic_get("model.features", auto_ack=True)[0] is not None
    channel.basic_publish("y_pred", key, b"{}", pika.BasicProperties(), mandatory=True)
    channel.basic_publish("modelwatch.dlx", "model.features", b"{}", pika.BasicProperties())
    connection.close()
    connection, channel = _channel(d.url("metric"))
    assert channel.basic_get(f"metric.y_true.{shard}", auto_ack=True)[0] is not None
    assert channel.basic_get(f"metric.y_pred.{shard}", auto_ack=True)[0] is not None
    channel.basic_publish("modelwatch.dlx", f"metric.y_pred.{shard}", b"{}", pika.BasicProperties())
    connection.close()
    connection, channel = _channel(d.url("dashboard"))  # reads its queues, dead-letters, no more
    channel.queue_declare("dashboard.metric_record.dlq", passive=True)  # the dead-letter counts
    channel.basic_publish("modelwatch.dlx", "dashboard.alert", b"{}", pika.BasicProperties())
    connection.close()
    # What each must be refused.
    assert _refused(d.url("dashboard"), _publish("alert"))
    assert _refused(d.url("dashboard"), _publish("metric_record"))
    assert _refused(d.url("dashboard"), lambda ch: ch.basic_get("monitor.metric_record"))
    assert _refused(d.url("model"), _publish("y_true"))
    assert _refused(d.url("model"), _publish("features"))
    assert _refused(d.url("metric"), _publish("y_pred"))
    assert _refused(d.url("features"), _publish("y_pred"))
    assert _refused(d.url("features"), lambda ch: ch.basic_get("model.features"))
    assert _refused(d.url("model"), lambda ch: ch.basic_get(f"metric.y_true.{shard}"))
    assert _refused(d.url("metric"), lambda ch: ch.basic_get("model.features.dlq"))
    for user in BROKER_SERVICES:
        assert _refused(d.url(user), lambda ch: ch.queue_declare("sneaky", durable=True))
        assert _refused(d.url(user), lambda ch: ch.queue_delete("model.features"))
    # The tests' own user (guest) has no permissions in the deployment's vhost.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.URLParameters(d.broker.url_for(d.vhost)))


def _shards_held(log: str) -> int:
    """How many shards a metric process holds, from its log."""
    return log.count("took shard") - log.count("gave shard")


def _as_deployed(compose: dict, name: str, d: Deployment, receiver: Receiver, logs: Path) -> dict:
    """The service's compose environment, with hosts and paths mapped onto this machine."""
    env = dict(compose["services"][name]["environment"])
    if "RABBITMQ_URL" in env:
        url = urlsplit(env["RABBITMQ_URL"])
        assert url.username == name and url.hostname == "rabbitmq"
        env["RABBITMQ_URL"] = d.url(name)
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    if "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" in env:
        env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = f"{receiver.endpoint}/v1/metrics"
    for key, value in env.items():
        if isinstance(value, str) and value.startswith("/app/logs/"):
            env[key] = str(logs / value.removeprefix("/app/logs/"))
    return {k: str(v) for k, v in env.items()}


@pytest.mark.broker
def test_services_run_with_the_environment_compose_gives_them(
    compose: dict, deployment: Deployment, model_path: Path, tmp_path: Path
) -> None:
    receiver = Receiver()
    logs = tmp_path / "logs"
    base = {"PATH": os.environ["PATH"], "MODEL_PATH": str(model_path), "HOME": str(tmp_path),
            "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    running = Services(base, tmp_path / "out")
    # `docker compose up --scale metric=3`: three metric containers with one environment, one
    # ./logs; they share the join's shards.
    metrics = ("metric", "metric-2", "metric-3")
    try:
        for name in ("model", "plot"):
            running.start(name, **_as_deployed(compose, name, deployment, receiver, logs))
        for label in metrics:
            running.start("metric", label, **_as_deployed(compose, "metric", deployment, receiver,
                                                          logs))  # fmt: skip
        dashboard = _as_deployed(compose, "dashboard", deployment, receiver, logs)
        assert dashboard.pop("DASHBOARD_ADDR") == "0.0.0.0:8050"  # published by compose's ports
        running.start("dashboard", **dashboard, DASHBOARD_ADDR=f"127.0.0.1:{free_port()}")
        features = _as_deployed(compose, "features", deployment, receiver, logs)
        running.start("features", **{**features, "FEATURES_COUNT": "300",
                                     "FEATURES_INTERVAL_S": "0.01"})  # fmt: skip
        csv_path = logs / "metric_log.csv"
        wait_until(lambda: len(read_csv(csv_path)) >= 300, 60, "300 rows")
        ids = [row["message_id"] for row in read_csv(csv_path)]
        assert len(ids) == len(set(ids)) == 300  # one log, every row once
        wait_until(lambda: (logs / "error_distribution.png").exists(), 30, "the plot")
        assert running.stop("features") == 0
        wait_until(lambda: (logs / "dashboard_state.json").exists(), 30, "the dashboard's state")
        # Each of the three holds its share of the 6 shards (2) once they have seen each other.
        wait_until(lambda: all(_shards_held(running.output(m)) == 2 for m in metrics), 30,
                   "two shards each")  # fmt: skip
        for name in (*metrics, "model", "plot", "dashboard"):
            assert running.stop(name) == 0, running.output(name)
        services = {s.service for s in receiver.snapshot()}
        assert services == {"features", "model", "metric", "dashboard"}
        assert "connected" in running.output("model")
    finally:
        running.stop_all()
        receiver.close()
