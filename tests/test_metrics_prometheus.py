"""The compose stack's Prometheus and Grafana files, and the services' metrics in a real Prometheus.

Debian 13's Prometheus 2.53 (from the root scripts/debian13-root builds) runs with the compose
configuration, rules and flags. Debian builds it without the OTLP receiver (its changelog: "Disable
OTLP Ingestion endpoint ... until golang-opentelemetry-collector is in Debian", #1080354; sid's 3.5
likewise), so here the services hand it the same metrics through the SDK's Prometheus exporter
(OTEL_METRICS_EXPORTER=prometheus), which names them as Prometheus' OTLP receiver does; what that
leaves unchecked is in docs/metrics.md. Every query of the Grafana dashboard is then answered, and
the drift alert rule fires on a drift the features service causes. The answers go to
logs/prometheus/answers.json (git-ignored).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.common.contracts import Contracts
from tests.brokers import CACHE_ROOT
from tests.conftest import REPO, Amqp, Services, free_port, wait_until
from tests.test_pipeline import headers_for

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "modelwatch.json"
ANSWERS = REPO / "logs" / "prometheus" / "answers.json"
SCRAPED = ("features", "model", "metric", "monitor")


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def exported_names() -> set[str]:
    """What Prometheus calls each instrument of observability/metrics.py (the OTLP receiver's
    translation: dots to underscores, the unit as a suffix, `_total` on counters)."""
    source = (REPO / "observability" / "metrics.py").read_text()
    names = set()
    for name in re.findall(r'"((?:messaging|modelwatch)\.[a-z_.]+)"', source):
        base = name.replace(".", "_")
        names |= {
            base + "_total",
            base,
            base + "_bucket",
            base + "_sum",
            base + "_count",
            base + "_seconds_bucket",
            base + "_seconds_sum",
            base + "_seconds_count",
        }
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names in `by (...)` and `{...}` aside)."""
    bare = re.sub(r"\{[^}]*\}", "", re.sub(r"\bby \([^)]*\)", "", expr))
    return set(re.findall(r"\b((?:messaging|modelwatch)_[a-z_]+)", bare))


def test_the_grafana_files_agree_with_each_other_and_with_the_services() -> None:
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml")
                             .read_text())["datasources"]  # fmt: skip
    uids = {s["uid"]: s["type"] for s in sources}
    assert set(uids.values()) == {"prometheus", "jaeger"}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert uids.get(ref["uid"]) == ref["type"], (panel["title"], ref)
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")
                              .read_text())["providers"][0]  # fmt: skip
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in compose["volumes"]
    known = exported_names()
    for title, expr in panel_queries():
        used = metric_names(expr)
        assert used and used <= known, (title, used - known)
    for rule in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"][0][
        "rules"
    ]:
        assert metric_names(rule["expr"]) <= known, rule["alert"]


class Prometheus:
    """Debian 13's prometheus binary, through the root's own loader and libraries (no chroot)."""

    def __init__(self, folder: Path, targets: dict[str, int]) -> None:
        root = CACHE_ROOT
        binary = root / "usr" / "bin" / "prometheus"
        if not binary.exists():
            pytest.skip(f"no Prometheus in {root}: run scripts/debian13-root")
        config = folder / "config"
        shutil.copytree(DEPLOY / "prometheus", config)
        settings = yaml.safe_load((config / "prometheus.yml").read_text())
        # The one addition: scrape the services' /metrics instead of their OTLP pushes.
        settings["scrape_configs"] = [
            {"job_name": name, "scrape_interval": "1s",
             "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for name, port in targets.items()
        ]  # fmt: skip
        (config / "prometheus.yml").write_text(yaml.safe_dump(settings))
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        flags = [f for f in compose["services"]["prometheus"]["command"]
                 if not f.startswith(("--config.file", "--storage.tsdb.path"))]  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        libs = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
        self.log = folder / "prometheus.log"
        self.proc = subprocess.Popen(
            [root / "lib64" / "ld-linux-x86-64.so.2", "--library-path", libs, binary,
             f"--config.file={config / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", *flags],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self.ready, 60, "Prometheus to be ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def get(self, path: str, **query: str) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in SCRAPED}


@pytest.fixture
def prometheus(tmp_path: Path, ports: dict[str, int]) -> Iterator[Prometheus]:
    running = Prometheus(tmp_path / "prometheus", ports)
    yield running
    running.close()


@pytest.mark.broker
@pytest.mark.root("runs Prometheus from the Debian 13 root")
def test_every_dashboard_query_is_answered_and_the_drift_rule_fires(
    services: Services,
    prometheus: Prometheus,
    ports: dict[str, int],
    amqp: Amqp,
    contracts: Contracts,
) -> None:
    def metered(name: str) -> dict[str, str]:
        return {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(ports[name])}  # fmt: skip

    services.start("model", **metered("model"))
    services.start("metric", **metered("metric"))
    services.start("monitor", MONITOR_WINDOW_ROWS="200", MONITOR_MIN_ROWS="150",
                   **metered("monitor"))  # fmt: skip
    services.start("features", FEATURES_COUNT="0", FEATURES_INTERVAL_S="0.004", FEATURES_SEED="7",
                   FEATURES_DRIFT="bmi:+2@1000", **metered("features"))  # fmt: skip
    wait_until(lambda: "connected" in services.output("model"), 60, "the model service")
    amqp.publish("features", b"{not json", headers_for(contracts, "features"), "not-json")
    up = {r["metric"]["job"] for r in prometheus.query("up == 1")}
    wait_until(lambda: {r["metric"]["job"] for r in prometheus.query("up == 1")} == set(SCRAPED),
               60, f"Prometheus to scrape {SCRAPED} (up: {up})")  # fmt: skip

    def firing() -> list[dict]:
        return prometheus.query('ALERTS{alertname="ModelwatchDriftAlertOpen",alertstate="firing"}')

    wait_until(firing, 120, "the drift rule to fire", every=1)
    answers: dict[str, dict] = {"ALERTS firing": {"query": "ALERTS", "result": firing()}}
    assert {r["metric"]["feature"] for r in firing()} >= {"bmi"}
    missing = []
    for title, expr in panel_queries():
        deadline = time.monotonic() + 30  # rates need two samples; a window may still be open
        while not (result := prometheus.query(expr)) and time.monotonic() < deadline:
            time.sleep(1)
        answers[f"{title}: {expr}"] = {"query": expr, "result": result}
        if not result:
            missing.append((title, expr))
    ANSWERS.parent.mkdir(parents=True, exist_ok=True)
    ANSWERS.write_text(json.dumps(answers, indent=1))
    assert not missing, f"queries with no answer: {missing}"
    rows = float(prometheus.query("sum(modelwatch_rows_recorded_total)")[0]["value"][1])
    assert rows > 1000
