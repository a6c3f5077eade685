"""The dashboard in a real browser on the real pipeline: Debian's chromium driven by playwright-core
(tests/dashboard.mjs), the services on the real broker.

The page loads from the dashboard alone (no other host), shows new rows and windows without a
reload, shows the drift alert that FEATURES_DRIFT causes with trace links that carry the row's
trace id, and comes back by itself when the dashboard service restarts. Screenshots of each step
go to logs/screenshots/dashboard/ (git-ignored), replaced every run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

import pytest

from tests.conftest import REPO, Services, free_port, read_csv, traced, wait_until
from tools.otlp_sink import Receiver

SHOTS = REPO / "logs" / "screenshots" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
JAEGER = "http://jaeger.example:16686"

pytestmark = [
    pytest.mark.broker,
    pytest.mark.npm,
    pytest.mark.root("installs chromium"),
]


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    done = subprocess.run([REPO / "scripts" / "chromium"], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr


class Walk:
    """tests/dashboard.mjs running, its JSON lines read as they come."""

    def __init__(self, url: str, shots: Path) -> None:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               "DASHBOARD_URL": url, "SHOTS": str(shots), "CHROMIUM": CHROMIUM,
               "ALERT_FEATURE": "bmi"}  # fmt: skip
        self.proc = subprocess.Popen(
            ["node", REPO / "tests" / "dashboard.mjs"], env=env, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: Queue[dict] = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put({"failed": "exit", "error": "the walk ended"})

    def step(self, name: str, timeout: float) -> dict:
        try:
            seen = self.lines.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no {name!r} step from the browser in {timeout} s") from None
        assert "failed" not in seen, f"the page failed at {seen['failed']}: {seen['error']}"
        assert seen["step"] == name, seen
        return seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def walk_env(services: Services, receiver: Receiver) -> Iterator[dict[str, str]]:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    port = free_port()
    yield {**traced(receiver), "DASHBOARD_ADDR": f"127.0.0.1:{port}", "DASHBOARD_PUSH_S": "0.25",
           "JAEGER_UI_URL": JAEGER}  # fmt: skip


def test_the_page_follows_the_pipeline_shows_the_drift_alert_and_survives_a_restart(
    services: Services, walk_env: dict[str, str], service_env: dict[str, str]
) -> None:
    tracing = {k: v for k, v in walk_env.items() if k.startswith("OTEL_")}
    for name in ("model", "metric"):
        services.start(name, **tracing)
    services.start("monitor", MONITOR_WINDOW_ROWS="200", MONITOR_MIN_ROWS="150", **tracing)
    services.start("dashboard", **walk_env)
    url = "http://" + walk_env["DASHBOARD_ADDR"] + "/"
    wait_until(lambda: "dashboard on http" in services.output("dashboard"), 30, "the dashboard")
    # 100 rows/s, bmi shifted from row 1,000 on: windows close every 2 s, the alert follows.
    services.start("features", FEATURES_COUNT="0", FEATURES_INTERVAL_S="0.01", FEATURES_SEED="7",
                   FEATURES_DRIFT="bmi:+2@1000", **tracing)  # fmt: skip
    walk = Walk(url, SHOTS)
    try:
        loaded = walk.step("load", 60)
        print(f"\npage: load {loaded['loadedMs']} ms, live {loaded['liveMs']} ms, {loaded['nav']}")
        assert loaded["hosts"] == [walk_env["DASHBOARD_ADDR"]], "the page loads nothing elsewhere"

        live = walk.step("live", 90)
        assert live["after"][1] > live["after"][0] > live["rows"][0], live
        assert live["newest"] != live["firstRow"], "the rows table moved on without a reload"

        windows = walk.step("windows", 90)
        assert "bmi" in windows["drift"] and len(windows["drift"]) == 10, windows

        alert = walk.step("alert", 120)
        assert alert["alert"].split("/")[1] == "bmi", alert
        assert alert["links"], "the alert names rows with their traces"
        rows = {r["message_id"]: r for r in read_csv(Path(service_env["METRIC_LOG_PATH"]))}
        for link in alert["links"]:
            assert len(link["traceId"]) == 32
            assert link["href"] == f"{JAEGER}/trace/{link['traceId']}"
            recorded = rows.get(link["messageId"])
            if recorded:  # a features row of the window may not be recorded yet
                assert recorded["trace_id"] == link["traceId"], link

        assert services.stop("dashboard") == 0, services.output("dashboard")
        services.start("dashboard", **walk_env)
        after = walk.step("restart", 120)
        assert after["kept"] == 1, "the alert is still shown after the restart"
        assert after["resumed"][1] > after["resumed"][0]
        assert after["errors"] == [], after["errors"]
        # What the broker redelivers after the restart is not shown (or counted) twice.
        assert len(after["ids"]) == len(set(after["ids"])) > 10, after["ids"]
        walk.step("done", 30)
        assert walk.proc.wait(30) == 0, walk.proc.stderr.read() if walk.proc.stderr else ""
    finally:
        walk.close()
