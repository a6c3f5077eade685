"""The management UI of the compose stack's broker (RabbitMQ 4.x, booted as compose boots it), in a
real browser: Debian's chromium driven by playwright-core (tests/management_ui.mjs).

A person logs in as admin, finds the catalog's exchanges and queues with their dead-letter queues,
gets a message the model service dead-lettered and reads why, logs out; a service user is refused.
Screenshots of each step go to logs/screenshots/management-ui/ (git-ignored), replaced every run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from services.common.contracts import Contracts
from services.common.messages import Rejected
from tests.compose_broker import VHOST, ComposeBroker, booted
from tests.conftest import REPO, Services, wait_until
from tools.contracts.check import compose_shards
from tools.otlp_sink import Receiver

SHOTS = REPO / "logs" / "screenshots" / "management-ui"
CHROMIUM = "/usr/bin/chromium"
BAD_BODY = b"{not json"
MESSAGE_ID = "ui-not-json"

pytestmark = [
    pytest.mark.broker,
    pytest.mark.npm,
    pytest.mark.root("starts a RabbitMQ 4.x node from the Debian 13 root; installs chromium"),
]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeBroker]:
    done = subprocess.run([REPO / "scripts" / "chromium"], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with booted(tmp_path_factory.mktemp("ui-broker")) as running:
        yield running


def _dead_letter(broker: ComposeBroker, contracts: Contracts, model_path: Path,
                 tmp_path: Path) -> str:  # fmt: skip
    """A features message that is not JSON, published as admin with the `schema` header: the
    model service (compose's environment) dead-letters it. Returns the reason it must give."""
    receiver = Receiver()
    running = Services({"PATH": os.environ["PATH"], "MODEL_PATH": str(model_path),
                        "HOME": str(tmp_path)}, tmp_path / "out")  # fmt: skip
    try:
        running.start("model", **broker.service_env("model", receiver.endpoint, tmp_path))
        wait_until(lambda: "connected" in running.output("model"), 60, "model to connect")
        headers = {"schema": contracts.schema_ids["features", 1]}
        connection = pika.BlockingConnection(pika.URLParameters(broker.url("admin")))
        channel = connection.channel()
        channel.confirm_delivery()
        props = pika.BasicProperties(headers=headers, message_id=MESSAGE_ID, delivery_mode=2)
        channel.basic_publish("features", "", BAD_BODY, props, mandatory=True)
        wait_until(lambda: channel.queue_declare("model.features.dlq", passive=True)
                   .method.message_count == 1, 60, "the dead letter")  # fmt: skip
        connection.close()
        assert running.stop("model") == 0, running.output("model")
    finally:
        running.stop_all()
        receiver.close()
    with pytest.raises(Rejected) as why:
        contracts.decode("model.features", "features", (1, 2), headers, BAD_BODY)
    return str(why.value)


def _ui_count(broker: ComposeBroker, queue: str) -> int:
    """Messages in `queue` as the management UI shows them: its statistics, which for a quorum
    queue lag the queue itself by seconds (the passive declare above saw it at once)."""
    url = f"{broker.ui_url.rstrip('/')}/api/queues/{VHOST}/{urllib.parse.quote(queue, safe='')}"
    request = urllib.request.Request(url)
    token = base64.b64encode(f"admin:{broker.password('admin')}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(json.load(answer).get("messages", 0))


def _walk(broker: ComposeBroker) -> dict:
    # The page shows the statistics: wait until they count the dead letter (CI once walked the
    # UI while they still said 0, and the Total column read "0").
    wait_until(lambda: _ui_count(broker, "model.features.dlq") == 1, 60, "the UI's count")
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           "UI_URL": broker.ui_url, "UI_ADMIN_PASSWORD": broker.password("admin"),
           "UI_SERVICE_USER": "model", "UI_SERVICE_PASSWORD": broker.password("model"),
           "UI_VHOST": VHOST, "UI_QUEUE": "model.features.dlq", "UI_SHOTS": str(SHOTS),
           "CHROMIUM": CHROMIUM}  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(["node", REPO / "tests" / "management_ui.mjs"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    print(f"\nbrowser walk: {time.monotonic() - started:.1f} s; screenshots in {SHOTS}")
    seen = json.loads(done.stdout)
    (SHOTS / "seen.json").write_text(json.dumps(seen, indent=1))  # what the asserts below read
    assert done.returncode == 0 and not seen["failed"], (seen["failed"], done.stderr[-2000:])
    return seen


def test_a_person_reads_a_dead_letters_reason_in_the_ui_and_a_service_user_is_refused(
    broker: ComposeBroker, contracts: Contracts, model_path: Path, tmp_path: Path
) -> None:
    reason = _dead_letter(broker, contracts, model_path, tmp_path)
    seen = _walk(broker)
    print(f"{seen['browser']}; {seen['versions']}")

    # Logged in as admin: the header names the user, the admin tabs are there, it is 4.x.
    assert seen["adminLogin"]["status"] == 200
    assert seen["header"].strip() == "User admin"
    assert "Admin" in seen["tabs"] and "RabbitMQ 4." in seen["versions"]

    topology = contracts.topology(compose_shards())  # as compose's definitions declare it
    exchanges = {row["Name"]: row for row in seen["exchanges"]}
    assert exchanges[topology.dead_letter_exchange]["Type"] == "direct"
    for name in topology.exchanges:
        assert exchanges[name]["Type"] == "fanout", name
    for router, _ in topology.routers:  # the join's shards
        assert exchanges[router]["Type"] == "direct", router

    queues = {row["Name"]: row for row in seen["queues"]}
    histories = {h.queue for h in topology.histories}
    assert set(queues) == {n for q in topology.queues for n in (q.name, q.dlq)} | histories
    assert {queues[h]["Type"] for h in histories} == {"stream"}
    for queue in topology.queues:
        features = queues[queue.name]["Features titles"]
        assert f"x-dead-letter-exchange: {topology.dead_letter_exchange}" in features
        assert f"x-dead-letter-routing-key: {queue.name}" in features
        assert queues[queue.name]["Type"] == queues[queue.dlq]["Type"] == "quorum"
    assert queues["model.features.dlq"]["Total"] == "1"

    # The dead letter, as the queue page's "Get messages" shows it; it stays in the queue.
    assert seen["ackMode"] == "Nack message requeue true"
    message = seen["message"]
    assert message["facts"]["Exchange"] == topology.dead_letter_exchange
    assert message["facts"]["Routing Key"] == "model.features"
    assert message["facts"]["Payload"] == BAD_BODY.decode()
    assert message["properties"]["message_id"] == MESSAGE_ID
    assert message["properties"]["x-error-reason"] == reason
    assert message["properties"]["x-error-service"] == "model"
    assert message["properties"]["x-error-queue"] == "model.features"

    # Logged out: the login form again. The model service's user (no management tag, right
    # password: it just dead-lettered with it) is refused by the UI.
    assert seen["afterLogout"] == {"loginForm": 1, "logoutButton": 0}
    refused = seen["serviceLogin"]
    assert refused["status_text"] == "Login failed" and refused["logoutButton"] == 0
    assert refused["status"] == 401 and "Not management user" in refused["body"]
    assert sorted(p.name for p in SHOTS.iterdir()) == [
        "1-overview-as-admin.png", "2-exchanges.png", "3-queues.png",
        "4-dead-letter-got-close-up.png", "4-dead-letter-got.png", "5-logged-out.png",
        "6-service-user-refused.png", "seen.json",
    ]  # fmt: skip
