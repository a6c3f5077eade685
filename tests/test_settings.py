"""A bad setting stops a service at start-up with a message naming the variable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def start(service: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=REPO,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("features", "FEATURES_INTERVAL_S", "soon"),
        ("features", "FEATURES_INTERVAL_S", "-1"),
        ("features", "FEATURES_COUNT", "1.5"),
        ("features", "RABBITMQ_URL", "http://localhost"),
        ("model", "MODEL_SHA256", "abc"),
        ("model", "MODEL_PATH", "/nonexistent/model.json"),
        ("metric", "METRIC_JOIN_TIMEOUT_S", "nan"),
        ("metric", "METRIC_LOG_PATH", "/proc/forbidden/metric_log.csv"),
        ("plot", "PLOT_INTERVAL_S", "0"),
        ("plot", "PLOT_PATH", "logs/plot.jpg"),
        ("plot", "LOG_LEVEL", "LOUD"),
        ("model", "CONTRACTS_DIR", "/tmp"),
        ("features", "FEATURES_SCHEMA_VERSION", "3"),
        ("features", "RABBITMQ_TOPOLOGY", "create"),
        ("model", "RABBITMQ_MAX_MESSAGE_SIZE", "0"),
        ("metric", "RABBITMQ_MAX_MESSAGE_SIZE", "16MiB"),
    ],
)
def test_bad_value_fails_naming_the_variable(service: str, variable: str, value: str) -> None:
    done = start(service, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr


def test_a_version_some_consumer_does_not_accept_is_refused(tmp_path) -> None:
    contracts = tmp_path / "contracts"
    shutil.copytree(REPO / "contracts", contracts)
    catalog = json.loads((contracts / "catalog.json").read_text())
    catalog["types"]["features"]["consumers"][0]["accepts"] = [1]
    (contracts / "catalog.json").write_text(json.dumps(catalog))
    done = start("features", CONTRACTS_DIR=str(contracts), FEATURES_SCHEMA_VERSION="2")
    assert done.returncode == 2
    assert "FEATURES_SCHEMA_VERSION=2: not accepted by model (model.features)" in done.stderr


def test_a_bad_span_batching_variable_is_named() -> None:
    done = start("model", OTEL_TRACES_EXPORTER="otlp", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="lots")
    assert done.returncode == 2
    assert "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in done.stderr
