"""A bad setting stops a service at start-up with a message naming the variable."""

from __future__ import annotations

import os
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
    ],
)
def test_bad_value_fails_naming_the_variable(service: str, variable: str, value: str) -> None:
    done = start(service, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr
