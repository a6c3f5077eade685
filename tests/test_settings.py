"""A bad setting stops a service at start-up with a message naming the variable."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from services.common.settings import ConfigError, amqp_urls
from services.features.settings import Drift
from services.features.settings import drifts as parse_drifts
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
        ("model", "RABBITMQ_URL", "amqp://m:p@a:5672/v,amqp://other:p@b:5672/v"),
        ("metric", "RABBITMQ_URL", "amqp://m:p@a:5672/v,amqp://m:p@b:5672/elsewhere"),
        ("model", "RABBITMQ_URL", "amqp://m:p@a:5672/v,b:5672"),
        ("model", "RABBITMQ_URL", " , "),
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
        ("dashboard", "DASHBOARD_ADDR", "localhost"),
        ("dashboard", "DASHBOARD_ADDR", "127.0.0.1:99999"),
        ("dashboard", "JAEGER_UI_URL", "jaeger:16686"),
        ("dashboard", "DASHBOARD_ASSETS_DIR", "/tmp"),
        ("dashboard", "DASHBOARD_PUSH_S", "0"),
        ("model", "OTEL_METRICS_EXPORTER", "statsd"),
        ("metric", "OTEL_METRIC_EXPORT_INTERVAL", "soon"),
    ],
)
def test_bad_value_fails_naming_the_variable(service: str, variable: str, value: str) -> None:
    done = start(service, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr


def test_a_clusters_urls_are_read_in_order_and_a_bad_one_is_named_without_its_password() -> None:
    env = {"RABBITMQ_URL": " amqp://m:p@a:5672/v, amqp://m:p@b:5673/v ,amqp://m:p@c/v "}
    assert amqp_urls(env) == ("amqp://m:p@a:5672/v", "amqp://m:p@b:5673/v", "amqp://m:p@c/v")
    assert amqp_urls({}) == ("amqp://guest:guest@localhost:5672/%2F",)
    # One URL's vhost spelled three ways is one vhost.
    assert len(amqp_urls({"RABBITMQ_URL": "amqp://g:g@a,amqp://g:g@b/%2F,amqp://g:g@c/%2f"})) == 3
    with pytest.raises(ConfigError) as bad:
        amqp_urls({"RABBITMQ_URL": "amqp://m:secret@b:port/v"})
    assert "RABBITMQ_URL has an invalid host or port" in str(bad.value)
    assert "secret" not in str(bad.value) and "m:***@b:port" in str(bad.value)
    for password in ("sec,ret@h:5672/v", "123,x@h/v"):  # a comma not written %2C
        with pytest.raises(ConfigError) as bad:
            amqp_urls({"RABBITMQ_URL": f"amqp://u:{password}"})
        assert "%2C" in str(bad.value)
        assert not {"sec", "ret", "123", "x@h"} & set(re.split(r"[ ':]", str(bad.value)))


@pytest.mark.npm  # the chart library's files are checked first
def test_a_taken_dashboard_port_fails_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = start("dashboard", DASHBOARD_ADDR=address,
                     RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/%2F")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"DASHBOARD_ADDR {address}" in done.stderr
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


NAMES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def drifts(value: str | None) -> tuple[Drift, ...]:
    return parse_drifts({} if value is None else {"FEATURES_DRIFT": value}, "FEATURES_DRIFT", NAMES)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        ("", ()),
        ("  ", ()),
        ("bmi:+2@1000", (Drift("bmi", 2.0, 1000),)),
        ("bmi:+2@1000,s5:-1.5@0", (Drift("bmi", 2.0, 1000), Drift("s5", -1.5, 0))),
        (" bmi : 2 @ 10 , s5:-1.5e0@0 ", (Drift("bmi", 2.0, 10), Drift("s5", -1.5, 0))),
        ("age:0@5", (Drift("age", 0.0, 5),)),
    ],
)
def test_features_drift_is_parsed(value: str | None, expected: tuple[Drift, ...]) -> None:
    assert drifts(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("BMI:+2@1000", "unknown feature 'BMI' in 'BMI:+2@1000'; the features are age, sex, bmi"),
        ("weight:1@0", "unknown feature 'weight'"),
        ("bmi+2@1000", "malformed entry 'bmi+2@1000'; expected <feature>:<shift in standard"),
        ("bmi=2@1000", "standard deviations>@<after N rows>, e.g. bmi:+2@1000"),
        ("bmi:+2", "malformed entry 'bmi:+2'; expected"),
        ("bmi:@10", "malformed entry 'bmi:@10'"),
        (":1@10", "malformed entry ':1@10'"),
        ("bmi:two@10", "malformed entry 'bmi:two@10'"),
        ("bmi:2@1.5", "malformed entry 'bmi:2@1.5'"),
        ("bmi:2@10,", "malformed entry ''"),
        ("bmi:nan@10", "the shift in 'bmi:nan@10' must be a finite number"),
        ("bmi:-inf@10", "the shift in 'bmi:-inf@10' must be a finite number"),
        ("bmi:1@-1", "N in 'bmi:1@-1' must be >= 0"),
        ("bmi:1@0,s5:1@0,bmi:2@5", "bmi is given twice in 'bmi:1@0,s5:1@0,bmi:2@5'"),
    ],
)
def test_a_bad_features_drift_is_named_with_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        drifts(value)
    assert str(error.value).startswith("FEATURES_DRIFT: ")
    assert message in str(error.value)


def test_the_features_service_refuses_a_bad_drift_at_start_up() -> None:
    done = start("features", FEATURES_DRIFT="bmi:+2@soon")
    assert done.returncode == 2
    assert "FEATURES_DRIFT: malformed entry 'bmi:+2@soon'" in done.stderr
    assert "Traceback" not in done.stderr
