"""`modelwatch soak`: many rows at full speed while the broker keeps closing the connections.

The accounting must hold at the end — every features message the broker confirmed (kept by a
durable spy queue) is exactly one CSV row, no row for an id never emitted, nothing dead-lettered
or orphaned — and the metric service's memory must stay flat (sampled every interval). The
broker is the local one unless MODELWATCH_BENCH_URL and MODELWATCH_BENCH_CTL name another
(tools/broker.py).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.run import rss_mib
from tools.bench.spy import Spy
from tools.broker import Target, free_port


def soak(rows: int, close_every_s: float, model_path: Path) -> dict:
    target = Target.from_env()
    with target.vhost("modelwatch-soak") as vhost:
        return _soak(target, vhost, rows, close_every_s, model_path)


def _soak(target: Target, vhost: str, rows: int, close_every_s: float, model_path: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="modelwatch-soak-"))
    url = target.url_for(vhost)
    env = {**os.environ, "RABBITMQ_URL": url, "MODEL_PATH": str(model_path),
           "METRIC_LOG_PATH": str(work / "metric_log.csv"),
           "METRIC_ORPHAN_LOG_PATH": str(work / "orphans.csv"),
           "METRIC_STATE_PATH": str(work / "metric_state.sqlite3"),
           "MONITOR_STATE_PATH": str(work / "monitor_state.sqlite3"),
           "DASHBOARD_STATE_PATH": str(work / "dashboard_state.json"),
           "DASHBOARD_ADDR": f"127.0.0.1:{free_port()}",
           "OTEL_TRACES_EXPORTER": "none", "LOG_LEVEL": "WARNING"}  # fmt: skip
    spy = Spy(url, "features", "soak.spy")
    procs = {n: _start(n, env, work) for n in ("metric", "model", "monitor", "dashboard")}
    time.sleep(3)
    procs["features"] = _start("features", {**env, "FEATURES_COUNT": str(rows),
                                            "FEATURES_INTERVAL_S": "0"}, work)  # fmt: skip
    started, closes = time.monotonic(), 0
    memory: dict[str, list[float]] = {"metric": [], "monitor": [], "dashboard": []}
    try:
        while procs["features"].poll() is None or _rows(work) < rows:
            time.sleep(close_every_s)
            for name, samples in memory.items():
                samples.append(round(rss_mib(procs[name].pid), 1))
            closes += _close_connections(target, vhost)
            if time.monotonic() - started > 600 + rows / 50:
                raise RuntimeError(f"soak did not finish; logs in {work}")
            if procs["features"].poll() not in (None, 0):
                raise RuntimeError(f"features failed; logs in {work}")
        confirmed = spy.drain()
        recorded = _ids(work / "metric_log.csv")
        depths = _depths(target, vhost)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    return {
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
        "connection_closes": closes,
        "confirmed_distinct": len(set(confirmed)),
        "recorded": len(recorded),
        "recorded_twice": len(recorded) - len(set(recorded)),
        "confirmed_without_row": len(set(confirmed) - set(recorded)),
        "rows_never_confirmed": len(set(recorded) - set(confirmed)),
        "dead_lettered": sum(v for k, v in depths.items() if k.endswith(".dlq")),
        "orphaned": max(_count_lines(work / "orphans.csv") - 1, 0),
        "rss_mib": memory,
        "logs": str(work),
    }


def _start(service: str, env: dict, work: Path) -> subprocess.Popen:
    log = open(work / f"{service}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env,
                            stdout=log, stderr=log)  # fmt: skip


def _close_connections(target: Target, vhost: str) -> int:
    closed = 0
    for line in target.rabbitmqctl("list_connections", "pid", "vhost").splitlines():
        pid, _, where = line.partition("\t")
        if where == vhost:
            try:
                target.rabbitmqctl("close_connection", pid, "soak: connection closed on purpose")
                closed += 1
            except RuntimeError:
                pass  # it was already gone
    return closed


def _rows(work: Path) -> int:
    return max(_count_lines(work / "metric_log.csv") - 1, 0)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def _ids(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row["message_id"] for row in csv.DictReader(handle)]


def _depths(target: Target, vhost: str) -> dict[str, int]:
    found = {}
    for line in target.rabbitmqctl("list_queues", "-p", vhost, "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if count.isdigit():
            found[name] = int(count)
    return found


def verdict(report: dict) -> bool:
    return (report["confirmed_distinct"] == report["rows"] == report["recorded"]
            and report["recorded_twice"] == report["confirmed_without_row"] == 0
            and report["rows_never_confirmed"] == report["dead_lettered"] == 0
            and report["orphaned"] == 0)  # fmt: skip
