"""The benchmark harness: real service processes, the real broker, a real OTLP receiver.

Each run gets a vhost of its own (created and deleted with rabbitmqctl) and a fresh folder, so runs
do not see each other's messages and a pipeline on this machine is not disturbed. The broker is
the local one unless MODELWATCH_BENCH_URL and MODELWATCH_BENCH_CTL name another (tools/broker.py).
Figures:

- rows/s at full speed, from the first emit to the last row recorded (read from the CSV), with
  every guarantee on and every span exported; again with 1% trace sampling; and for the bare
  reference pipeline (tools/bench/reference.py) in the same invocation, for the ratio;
- p50/p99 emit-to-record latency with features paced at 200 rows/s;
- the same without the side consumers, the monitor and the dashboard (a catalog copy without
  their queues), for what they cost;
- CPU per row for each service and for the broker (from /proc, over the measured window);
- the metric service's resident memory at the start and the end of the full-speed run.
Each figure is the median of the runs, with min and max.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tools.bench import encoding
from tools.broker import Target, free_port
from tools.otlp_sink import Receiver

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Pipeline:
    """How to start one pipeline's processes, and the queues its consumers read."""

    name: str
    command: Callable[[str], list[str]]
    consumer_queues: tuple[str, ...]
    consumers: tuple[str, ...] = ("metric", "model")  # started before features
    # Queues read after the row is recorded (the monitor's): the run's CPU is taken once they are
    # empty, so every row's work is counted.
    lagging: tuple[str, ...] = ()


_CORE_QUEUES = ("model.features", "metric.y_true", "metric.y_pred")
# The consumers `modelwatch up` runs beside the pipeline: they read what it produces and may lag.
SIDE_CONSUMERS = ("monitor", "dashboard")
_SIDE_QUEUES = ("monitor.features", "monitor.metric_record", "dashboard.metric_record")
MODELWATCH = Pipeline(
    "modelwatch", lambda s: [sys.executable, "-m", f"services.{s}"],
    (*_CORE_QUEUES, *_SIDE_QUEUES), ("metric", "model", "monitor", "dashboard"), _SIDE_QUEUES,
)  # fmt: skip
# The same services with a catalog that has no side consumers (no monitor or dashboard queues, no
# metric_record publishes): what they cost, in the same run.
CORE_ONLY = Pipeline(
    "modelwatch without the side consumers", lambda s: [sys.executable, "-m", f"services.{s}"],
    _CORE_QUEUES,
)  # fmt: skip
REFERENCE = Pipeline(
    "reference", lambda s: [sys.executable, "-m", "tools.bench.reference", s],
    ("ref.features", "ref.y_true", "ref.y_pred"),
)  # fmt: skip


def catalog_core_only(folder: Path, contracts: Path) -> Path:
    """A copy of `contracts` in which neither the monitor nor the dashboard consumes."""
    copy = folder / "contracts"
    shutil.copytree(contracts, copy, dirs_exist_ok=True)
    catalog = json.loads((copy / "catalog.json").read_text())
    for spec in catalog["types"].values():
        spec["consumers"] = [c for c in spec["consumers"] if c["service"] not in SIDE_CONSUMERS]
    (copy / "catalog.json").write_text(json.dumps(catalog))
    return copy


@dataclass
class Result:
    rows: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_row: dict[str, float]
    metric_rss_mib: tuple[float, float]
    spans_per_row: float
    lag_s: float = 0.0  # from the last row recorded to the side consumers' queues empty


def run_once(pipeline: Pipeline, rows: int, interval_s: float, env: dict[str, str],
             sink: Receiver, target: Target) -> Result:  # fmt: skip
    with target.vhost("modelwatch-bench") as vhost:
        return _run(pipeline, rows, interval_s, env, sink, target, vhost)


def _run(pipeline: Pipeline, rows: int, interval_s: float, env: dict[str, str], sink: Receiver,
         target: Target, vhost: str) -> Result:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="modelwatch-bench-"))
    env = {
        **os.environ, **env,
        "RABBITMQ_URL": target.url_for(vhost),
        "METRIC_LOG_PATH": str(work / "metric_log.csv"),
        "METRIC_ORPHAN_LOG_PATH": str(work / "orphans.csv"),
        "METRIC_STATE_PATH": str(work / "metric_state.sqlite3"),
        "MONITOR_STATE_PATH": str(work / "monitor_state.sqlite3"),
        "DASHBOARD_STATE_PATH": str(work / "dashboard_state.json"),
        "DASHBOARD_ADDR": f"127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "FEATURES_COUNT": str(rows),
        "FEATURES_INTERVAL_S": str(interval_s),
        "LOG_LEVEL": "WARNING",
    }  # fmt: skip
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in pipeline.consumers:
            procs[name] = _start(pipeline, name, env, work)
        _wait_for_consumers(target, vhost, pipeline.consumer_queues, procs, work)
        spans_before = sink.count
        broker = target.pid()
        cpu_start = _cpu(procs, broker)
        rss_start = rss_mib(procs["metric"].pid)
        procs["features"] = _start(pipeline, "features", env, work)
        csv_path = work / "metric_log.csv"
        emitter = _Emitter(procs["features"].pid)
        counter = _RowCounter(csv_path)
        deadline = time.monotonic() + 120 + rows / 50
        while (recorded := counter.count()) < rows:
            emitter.sample(recorded)
            failed = any(p.poll() not in (None, 0) for p in procs.values())
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"{pipeline.name}: rows stopped arriving; logs in {work}")
            time.sleep(0.05)
        recorded_at = time.monotonic()
        _wait_until_consumed(target, vhost, pipeline.lagging, work)
        lag_s = time.monotonic() - recorded_at
        cpu_end = _cpu(procs, broker)
        cpu_start["features"], cpu_end["features"], measured_rows = emitter.window(rows)
        rss_end = rss_mib(procs["metric"].pid)
        emitted, latencies = _times(csv_path)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    time.sleep(0.5)  # let the last spans arrive
    span = emitted[1] - emitted[0]
    quantiles = statistics.quantiles(latencies, n=100)
    return Result(
        rows=rows,
        rows_per_s=rows / span,
        p50_ms=statistics.median(latencies),
        p99_ms=quantiles[98],
        cpu_us_per_row={
            k: (cpu_end[k] - cpu_start[k]) / (measured_rows if k == "features" else rows) * 1e6
            for k in cpu_end
        },
        metric_rss_mib=(rss_start, rss_end),
        spans_per_row=(sink.count - spans_before) / rows,
        lag_s=lag_s,
    )


def _start(pipeline: Pipeline, service: str, env: dict, work: Path) -> subprocess.Popen:
    log = open(work / f"{service}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(pipeline.command(service), env=env, stdout=log, stderr=log)


def _wait_for_consumers(target: Target, vhost: str, queues: tuple[str, ...], procs: dict,
                        work: Path) -> None:  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = target.rabbitmqctl("list_queues", "-p", vhost, "name", "consumers")
        ready = {line.split("\t")[0] for line in listing.splitlines()
                 if line.count("\t") == 1 and line.split("\t")[1] != "0"}  # fmt: skip
        if set(queues) <= ready:
            return
        if any(p.poll() is not None for p in procs.values()):
            raise RuntimeError(f"a consumer exited before it was ready; see the logs in {work}")
        time.sleep(0.1)
    raise RuntimeError(f"consumers of {queues} did not appear in 60 s")


def _wait_until_consumed(target: Target, vhost: str, queues: tuple[str, ...], work: Path) -> None:
    deadline = time.monotonic() + 120
    while queues and time.monotonic() < deadline:
        listing = target.rabbitmqctl("list_queues", "-p", vhost, "name", "messages")
        depth = {line.split("\t")[0]: line.split("\t")[1] for line in listing.splitlines()
                 if line.count("\t") == 1}  # fmt: skip
        if all(depth.get(q) == "0" for q in queues):
            return
        time.sleep(0.2)
    if queues:
        raise RuntimeError(f"{queues} were not consumed within 120 s; logs in {work}")


def _cpu(procs: dict[str, subprocess.Popen], broker: int | None) -> dict[str, float]:
    found = {name: cpu_seconds(p.pid) for name, p in procs.items() if name != "features"}
    if broker:
        found["broker"] = cpu_seconds(broker)
    return found


class _Emitter:
    """The features process's CPU from its first recorded row (imports done) to its last sample.

    It exits on its own once every row is confirmed, so it is sampled while it runs.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: tuple[float, int] | None = None
        self.last = (0.0, 0)

    def sample(self, recorded: int) -> None:
        try:
            cpu = cpu_seconds(self.pid)
        except (OSError, IndexError):
            return
        if self.first is None and recorded > 0:
            self.first = (cpu, recorded)
        self.last = (cpu, recorded)

    def window(self, rows: int) -> tuple[float, float, int]:
        first = self.first or (0.0, 0)
        return first[0], self.last[0], max(rows - first[1], 1)


class _RowCounter:
    """Rows in the growing CSV, reading only what was appended since the last look.

    Re-reading the whole file on every look took CPU from the pipeline it measures (the file
    grows to megabytes by the end of a run; docs/benchmark.md)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                new = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(new)
        self.lines += new.count(b"\n")
        return max(self.lines - 1, 0)  # the header


def _times(path: Path) -> tuple[tuple[float, float], list[float]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    emitted = [datetime.fromisoformat(r["emitted_at"]).timestamp() for r in rows]
    recorded = [datetime.fromisoformat(r["recorded_at"]).timestamp() for r in rows]
    latencies = [(r - e) * 1000 for e, r in zip(emitted, recorded, strict=True)]
    return (min(emitted), max(recorded)), latencies


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine(target: Target) -> dict[str, str]:
    version = ""
    with contextlib.suppress(RuntimeError):
        version = target.version()
    return {
        "cores": str(os.cpu_count()),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rabbitmq": version,
        "kernel": platform.release(),
    }


def benchmark(rows: int, latency_rows: int, runs: int, model_path: Path, out: Path) -> dict:
    sink = Receiver(keep=False)
    # The project's span batching defaults, with a queue big enough that no span is dropped at
    # full speed: every span is exported.
    traced = {
        "MODEL_PATH": str(model_path),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_MAX_QUEUE_SIZE": "262144",
    }
    # Metrics exported as compose exports them (every 15 s), to the same receiver; "no_metrics"
    # is the same pipeline with OTEL_METRICS_EXPORTER=none, for what exporting metrics costs.
    traced |= {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "15000",
               "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{sink.endpoint}/v1/metrics"}  # fmt: skip
    unmetered = {**traced, "OTEL_METRICS_EXPORTER": "none"}
    sampled = {**traced, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
               "OTEL_TRACES_SAMPLER_ARG": "0.01"}  # fmt: skip
    keys = ("full", "sampled", "reference", "paced", "core_only", "no_metrics")
    figures: dict[str, list[Result]] = {k: [] for k in keys}
    target = Target.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="modelwatch-bench-contracts-"))
    contracts = Path(os.environ.get("CONTRACTS_DIR", Path(__file__).parents[2] / "contracts"))
    bare = {**traced, "CONTRACTS_DIR": str(catalog_core_only(scratch, contracts))}
    try:
        for i in range(runs):
            print(f"run {i + 1}/{runs}", file=sys.stderr, flush=True)
            figures["reference"].append(run_once(REFERENCE, rows, 0, traced, sink, target))
            figures["full"].append(run_once(MODELWATCH, rows, 0, traced, sink, target))
            figures["core_only"].append(run_once(CORE_ONLY, rows, 0, bare, sink, target))
            figures["no_metrics"].append(run_once(MODELWATCH, rows, 0, unmetered, sink, target))
            figures["sampled"].append(run_once(MODELWATCH, rows, 0, sampled, sink, target))
            figures["paced"].append(run_once(MODELWATCH, latency_rows, 0.005, traced, sink, target))
    finally:
        sink.close()
        shutil.rmtree(scratch, ignore_errors=True)
    full, ref = figures["full"], figures["reference"]
    report = {
        "machine": machine(target),
        "rows_per_run": rows,
        "runs": runs,
        "rows_per_s": summarize([r.rows_per_s for r in full]),
        "rows_per_s_sampled_1pct": summarize([r.rows_per_s for r in figures["sampled"]]),
        "reference_rows_per_s": summarize([r.rows_per_s for r in ref]),
        "ratio_to_reference": summarize(
            [f.rows_per_s / r.rows_per_s for f, r in zip(full, ref, strict=True)]
        ),
        "ratio_to_reference_sampled_1pct": summarize(
            [s.rows_per_s / r.rows_per_s for s, r in zip(figures["sampled"], ref, strict=True)]
        ),
        "ratio_to_reference_without_metrics": summarize(
            [f.rows_per_s / r.rows_per_s for f, r in zip(figures["no_metrics"], ref, strict=True)]
        ),
        "ratio_to_reference_core_only": summarize(
            [f.rows_per_s / r.rows_per_s for f, r in zip(figures["core_only"], ref, strict=True)]
        ),
        "paced_200_rows_per_s": {
            "rows": latency_rows,
            "p50_ms": summarize([r.p50_ms for r in figures["paced"]]),
            "p99_ms": summarize([r.p99_ms for r in figures["paced"]]),
        },
        "cpu_us_per_row": {
            k: summarize([r.cpu_us_per_row[k] for r in full if k in r.cpu_us_per_row])
            for k in ("features", "model", "metric", "monitor", "dashboard", "broker")
            if any(k in r.cpu_us_per_row for r in full)
        },
        "cpu_us_per_row_core_only": {
            k: summarize([r.cpu_us_per_row[k] for r in figures["core_only"]])
            for k in ("features", "model", "metric", "broker")
            if all(k in r.cpu_us_per_row for r in figures["core_only"])
        },
        "spans_per_row": summarize([r.spans_per_row for r in full]),
        "metric_exports": sink.metric_requests,  # OTLP metric requests the receiver got, all runs
        "side_consumers_lag_s": summarize([r.lag_s for r in full]),
        "otlp_encode_us_per_span": encoding.us_per_span(),
        "metric_rss_mib_start_end": [full[-1].metric_rss_mib[0], full[-1].metric_rss_mib[1]],
    }
    report["targets"] = targets(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


# The performance targets (docs/benchmark.md), judged on the medians of one invocation. Memory
# flat over 100,000 rows is the soak's to judge (`modelwatch soak`), not a 20,000-row run's.
TARGETS = (
    ("ratio, every span exported", ("ratio_to_reference",), ">=", 0.8, "x"),
    ("ratio, 1% sampling", ("ratio_to_reference_sampled_1pct",), ">=", 1.2, "x"),
    ("p99 at 200 rows/s", ("paced_200_rows_per_s", "p99_ms"), "<=", 10.0, " ms"),
    ("metric CPU per row", ("cpu_us_per_row", "metric"), "<=", 300.0, " us"),
)


def targets(report: dict) -> list[dict]:
    """Each target with this run's median and whether it was met."""
    judged = []
    for name, path, how, bound, unit in TARGETS:
        figure = report
        for key in path:
            figure = figure[key]
        value = figure["median"]
        met = value >= bound if how == ">=" else value <= bound
        judged.append({"target": f"{name} {how} {bound:g}{unit}", "median": value, "met": met})
    return judged


def table(report: dict) -> str:
    def fmt(s: dict, unit: str = "", digits: int = 0) -> str:
        return f"{s['median']:.{digits}f}{unit}  ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    m = report["machine"]
    lines = [
        f"modelwatch bench: {report['runs']} run(s) x {report['rows_per_run']} rows; "
        f"{m['cores']} cores, RabbitMQ {m['rabbitmq']}, Python {m['python']}",
        "figure                                       median  (min-max)",
        f"rows/s, every guarantee, every span exported  {fmt(report['rows_per_s'])}",
        f"rows/s, same with 1% trace sampling           {fmt(report['rows_per_s_sampled_1pct'])}",
        f"rows/s, bare reference pipeline               {fmt(report['reference_rows_per_s'])}",
        f"ratio to the reference                        "
        f"{fmt(report['ratio_to_reference'], 'x', 2)}",
        f"ratio, 1% trace sampling                      "
        f"{fmt(report['ratio_to_reference_sampled_1pct'], 'x', 2)}",
        f"ratio, metrics not exported                   "
        f"{fmt(report['ratio_to_reference_without_metrics'], 'x', 2)}",
        f"ratio, without monitor and dashboard          "
        f"{fmt(report['ratio_to_reference_core_only'], 'x', 2)}",
        f"p50 latency at 200 rows/s                     "
        f"{fmt(report['paced_200_rows_per_s']['p50_ms'], ' ms', 1)}",
        f"p99 latency at 200 rows/s                     "
        f"{fmt(report['paced_200_rows_per_s']['p99_ms'], ' ms', 1)}",
    ]
    alone = report["cpu_us_per_row_core_only"]
    for name, figure in report["cpu_us_per_row"].items():
        without = f"  without them {alone[name]['median']:.0f}" if name in alone else ""
        lines.append(f"CPU per row, {name:<9}                        {fmt(figure, ' us')}{without}")
    lines.append(f"monitor, dashboard done after the last row   "
                 f"{fmt(report['side_consumers_lag_s'], ' s', 1)}")  # fmt: skip
    spans = fmt(report["spans_per_row"], "", 1)
    lines.append(f"spans exported per row                        {spans}")
    enc = report["otlp_encode_us_per_span"]
    lines.append(f"OTLP encoding per span, SDK -> ours           {enc['sdk']:.1f} -> "
                 f"{enc['modelwatch']:.1f} us")  # fmt: skip
    start, end = report["metric_rss_mib_start_end"]
    lines.append(f"metric RSS, start -> end of the last run      {start:.0f} -> {end:.0f} MiB")
    judged = report["targets"]
    missed = [t["target"] for t in judged if not t["met"]]
    lines.append(f"targets met in this run: {len(judged) - len(missed)} of {len(judged)}"
                 + (f"; missed: {', '.join(missed)}" if missed else "")
                 + " (memory: modelwatch soak)")  # fmt: skip
    return "\n".join(lines)
