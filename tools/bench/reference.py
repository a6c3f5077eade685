"""The bare reference pipeline the benchmark compares against: the demo's design, minus its sleep.

Plain queues on the default exchange, auto-ack, no publisher confirms, no validation, no tracing,
a dict join — everything modelwatch adds guarantees on top of. Kept only as a baseline measured in
the same run; it loses messages on any fault, which is the point of the comparison. It is the one
place outside services/common/broker/ that uses pika, on purpose: it must not share our broker
code.

    python -m tools.bench.reference features|model|metric
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pika
from sklearn.datasets import load_diabetes

from services.model.artifact import load

QUEUES = ("ref.features", "ref.y_true", "ref.y_pred")


def _channel() -> pika.adapters.blocking_connection.BlockingChannel:
    connection = pika.BlockingConnection(
        [pika.URLParameters(u.strip()) for u in os.environ["RABBITMQ_URL"].split(",") if u.strip()]
    )
    channel = connection.channel()
    for queue in QUEUES:
        channel.queue_declare(queue)
    return channel


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def features() -> None:
    channel = _channel()
    data = load_diabetes()
    for _ in range(int(os.environ["FEATURES_COUNT"])):
        row, id_, now = random.randrange(len(data.target)), str(uuid.uuid4()), _now()
        channel.basic_publish(
            "",
            "ref.features",
            json.dumps({"id": id_, "emitted_at": now, "features": data.data[row].tolist()}),
        )
        channel.basic_publish("", "ref.y_true", json.dumps(
            {"id": id_, "emitted_at": now, "y_true": float(data.target[row])}))  # fmt: skip
    channel.connection.close()


def model() -> None:
    channel = _channel()
    estimator = load(Path(os.environ["MODEL_PATH"]).absolute()).estimator

    def predict(ch, _method, _props, body: bytes) -> None:
        message = json.loads(body)
        y_pred = float(estimator.predict(np.asarray([message["features"]]))[0])
        out = {"id": message["id"], "emitted_at": message["emitted_at"], "y_pred": y_pred}
        ch.basic_publish("", "ref.y_pred", json.dumps(out))

    channel.basic_consume("ref.features", predict, auto_ack=True)
    channel.start_consuming()


def metric() -> None:
    channel = _channel()
    pending: dict[str, dict] = {}
    out = open(os.environ["METRIC_LOG_PATH"], "a", newline="")  # noqa: SIM115 - open all run
    writer = csv.writer(out)
    writer.writerow(["message_id", "y_true", "y_pred", "absolute_error", "emitted_at",
                     "recorded_at"])  # fmt: skip

    def join(_ch, _method, _props, body: bytes) -> None:
        message = json.loads(body)
        other = pending.pop(message["id"], None)
        if other is None:
            pending[message["id"]] = message
            return
        both = {**other, **message}
        error = abs(both["y_true"] - both["y_pred"])
        writer.writerow([both["id"], both["y_true"], both["y_pred"], error, both["emitted_at"],
                         _now()])  # fmt: skip
        out.flush()

    channel.basic_consume("ref.y_true", join, auto_ack=True)
    channel.basic_consume("ref.y_pred", join, auto_ack=True)
    channel.start_consuming()


if __name__ == "__main__":
    {"features": features, "model": model, "metric": metric}[sys.argv[1]]()
    time.sleep(0)
