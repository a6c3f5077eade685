"""The `modelwatch` command: one subcommand per service, plus `train` and `up`.

`up` is the no-Docker main job: it trains the model if there is none, then runs the services
as child processes until Ctrl+C (or SIGTERM), which it passes on so each one drains and exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common import settings as env_
from services.common.settings import ConfigError

SERVICES = ("model", "metric", "monitor", "dashboard", "plot", "features")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelwatch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in SERVICES:
        commands.add_parser(name, help=f"run the {name} service (settings from the environment)")
    train = commands.add_parser(
        "train", help="fit the model; write MODEL_PATH, its manifest and the monitor's reference"
    )
    train.add_argument(
        "--if-missing", action="store_true", help="do nothing if all three files exist"
    )
    commands.add_parser("up", help="train if needed, then run all the services until Ctrl+C")
    alerts = commands.add_parser("alerts", help="the monitor's recent alerts and the open ones")
    alerts.add_argument("--last", type=int, default=20, help="how many recent alerts to show")
    alerts.add_argument("--json", action="store_true", help="one alert message per line")
    broker = commands.add_parser("broker", help="broker set-up derived from the contracts")
    broker.add_argument("what", choices=["definitions"], help="print the RabbitMQ definitions")
    broker.add_argument("--vhost", default="modelwatch")
    broker.add_argument(
        "--metric-shards", type=int, default=None,
        help="shard queues of the metric's join (default: METRIC_SHARDS, else 1); "
        "deploy/rabbitmq/definitions.json is made with compose's METRIC_SHARDS",
    )  # fmt: skip
    contracts = commands.add_parser("contracts", help="check contracts/ or regenerate its files")
    contracts.add_argument("what", choices=["check", "asyncapi"])
    contracts.add_argument("--base", help="git ref to compare released schemas with")
    bench = commands.add_parser("bench", help="measure throughput, latency and CPU per row")
    bench.add_argument("--quick", action="store_true", help="1 run of 300 rows: a smoke test")
    bench.add_argument("--rows", type=int, default=20_000, help="rows per full-speed run")
    bench.add_argument("--latency-rows", type=int, default=2_000, help="rows at 200 rows/s")
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument("--out", type=Path, default=Path("logs/bench.json"))
    soak = commands.add_parser("soak", help="full speed while connections keep being closed")
    soak.add_argument("--rows", type=int, default=100_000)
    soak.add_argument("--close-every", type=float, default=3.0, help="seconds between closes")
    dlq = commands.add_parser("dlq", help="list or replay a queue's dead letters")
    dlq.add_argument("action", choices=["list", "replay"])
    dlq.add_argument("queue", help="the consumer queue, e.g. model.features (reads its .dlq)")
    dlq.add_argument("--id", help="replay only the dead letters with this message id")
    args = parser.parse_args(argv)
    if args.command in SERVICES:
        runpy.run_module(f"services.{args.command}", run_name="__main__")
    elif args.command == "train":
        sys.exit(_train(args.if_missing))
    elif args.command == "broker":
        sys.exit(_definitions(args.vhost, args.metric_shards))
    elif args.command == "contracts":
        sys.exit(_contracts(args.what, args.base))
    elif args.command == "bench":
        sys.exit(_bench(args))
    elif args.command == "soak":
        sys.exit(_soak(args.rows, args.close_every))
    elif args.command == "dlq":
        sys.exit(_dlq(args.action, args.queue, args.id))
    elif args.command == "alerts":
        sys.exit(_alerts(args.last, args.json))
    else:
        sys.exit(_up())


def _train(if_missing: bool) -> int:
    from services.model.artifact import manifest_path, train
    from services.model.reference import reference_path

    try:
        model_path = env_.path(os.environ, "MODEL_PATH", "models/model.json")
    except ConfigError as exc:
        print(f"train: configuration error: {exc}", file=sys.stderr)
        return 2
    # Training is deterministic: when only the reference is missing (a model trained before
    # references existed), training again rewrites the same model bytes, so its version stays.
    files = (model_path, manifest_path(model_path), reference_path(model_path))
    if if_missing and all(f.exists() for f in files):
        print(f"model and reference already at {model_path}")
        return 0
    manifest = train(model_path)
    print(f"trained {manifest['version']} -> {model_path}")
    print(json.dumps(manifest, indent=2))
    return 0


def _definitions(vhost: str, shards: int | None) -> int:
    from services.common.contracts import Contracts
    from services.common.definitions import build

    env = {**os.environ, **({"METRIC_SHARDS": str(shards)} if shards is not None else {})}
    try:
        count = env_.metric_shards(env)
        contracts = Contracts(env_.contracts_dir(env))
    except ConfigError as exc:
        print(f"broker definitions: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(build(contracts, vhost, count), indent=2))
    return 0


def _tools_missing(command: str) -> bool:
    """The tools package is not in the runtime image: say so instead of a traceback."""
    if importlib.util.find_spec("tools") is not None:
        return False
    print(
        f"modelwatch {command}: the tools package is not installed here (it is left out of the "
        "runtime image); run it from a checkout after ./scripts/setup",
        file=sys.stderr,
    )
    return True


def _contracts(what: str, base: str | None) -> int:
    if _tools_missing("contracts"):
        return 2
    from services.common.contracts import Contracts
    from tools.contracts import asyncapi
    from tools.contracts.check import check

    root = env_.contracts_dir(os.environ)
    if what == "asyncapi":
        (root / "asyncapi.yaml").write_text(asyncapi.render(Contracts(root)))
        print(f"wrote {root / 'asyncapi.yaml'}")
        return 0
    report = check(root, base)
    for problem in report.problems:
        print(f"BREAKING/INVALID {problem}")
    print(f"contracts check: {'; '.join(report.notes)}; {len(report.problems)} problem(s)")
    return 1 if report.problems else 0


def _bench(args: argparse.Namespace) -> int:
    if _tools_missing("bench"):
        return 2
    from tools.bench.run import benchmark, table

    if args.quick:
        args.rows, args.latency_rows, args.runs = 300, 200, 1
    if _train(if_missing=True) != 0:
        return 2
    model_path = env_.path(os.environ, "MODEL_PATH", "models/model.json")
    report = benchmark(args.rows, args.latency_rows, args.runs, model_path, args.out)
    print(table(report))
    print(f"figures written to {args.out}")
    return 0


def _soak(rows: int, close_every: float) -> int:
    if _tools_missing("soak"):
        return 2
    from tools.bench.soak import soak, verdict

    if _train(if_missing=True) != 0:
        return 2
    report = soak(rows, close_every, env_.path(os.environ, "MODEL_PATH", "models/model.json"))
    memory = report.pop("rss_mib")
    print(json.dumps(report, indent=2))
    for name, samples in memory.items():
        if samples:
            print(f"{name} RSS MiB: first {samples[0]}, max {max(samples)}, last {samples[-1]} "
                  f"({len(samples)} samples)")  # fmt: skip
    ok = verdict(report)
    print("accounting holds" if ok else "ACCOUNTING BROKEN")
    return 0 if ok else 1


def _dlq(action: str, queue: str, message_id: str | None) -> int:
    from services.common.broker import DeadLetters

    try:
        letters = DeadLetters(env_.amqp_urls(os.environ))
    except ConfigError as exc:
        print(f"dlq: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if action == "replay":
            count = letters.replay(queue, message_id)
            print(f"replayed {count} message(s) from {queue}.dlq to {queue}")
            return 0
        found = letters.list(queue)
        print(f"{len(found)} dead letter(s) in {queue}.dlq")
        for letter in found:
            print(f"{letter.at}  {letter.message_id}  {letter.type}  {letter.service}: "
                  f"{letter.reason}")  # fmt: skip
        return 0
    finally:
        letters.close()


def _alerts(last: int, as_json: bool) -> int:
    from services.monitor.store import recent_alerts

    try:
        state = env_.path(os.environ, "MONITOR_STATE_PATH", "logs/monitor_state.sqlite3")
    except ConfigError as exc:
        print(f"alerts: configuration error: {exc}", file=sys.stderr)
        return 2
    if not state.exists():
        print(f"alerts: no monitor state at {state} (MONITOR_STATE_PATH); is the monitor "
              "running?", file=sys.stderr)  # fmt: skip
        return 2
    found = recent_alerts(state, last)
    if as_json:
        for alert in found:
            print(json.dumps(alert))
        return 0
    latest: dict[str, dict] = {}
    for alert in recent_alerts(state, 100_000):
        latest[alert["alert"]] = alert
    still_open = [a for a in latest.values() if a["state"] == "firing"]
    print(f"{len(still_open)} open alert(s); the last {len(found)} alert message(s):")
    for a in found:
        examples = ", ".join(f"{e['message_id']} (trace {e['trace_id'] or '-'})"
                             for e in a["examples"])  # fmt: skip
        print(f"{a['emitted_at']}  {a['state']:<8} {a['alert']}  {a['summary']}")
        if examples:
            print(f"    rows: {examples}")
    return 0


def _up() -> int:
    env = os.environ
    try:
        csv_path = env_.path(env, "METRIC_LOG_PATH", "logs/metric_log.csv")
        png_path = env_.path(env, "PLOT_PATH", "logs/error_distribution.png")
        dashboard = env_.text(env, "DASHBOARD_ADDR", "127.0.0.1:8050")
    except ConfigError as exc:
        print(f"up: configuration error: {exc}", file=sys.stderr)
        return 2
    if _train(if_missing=True) != 0:
        return 2
    # A terminal's Ctrl+C reaches every child as well as `up`. Ignored from birth (the disposition
    # is inherited), it cannot interrupt a child's imports with a traceback; each child's own
    # handler takes SIGINT over once set, and `up` passes the stop on as SIGTERM in any case.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    # Before the first child: a SIGTERM that came in between would kill `up` alone and leave the
    # children running (a test that signals `up` once it says "running" saw this 1 time in 4).
    signal.signal(signal.SIGTERM, stop_all)
    for name in SERVICES:
        if not stopping:
            children[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], env={**env, "OTEL_SERVICE_NAME": name}
            )
    signal.signal(signal.SIGINT, stop_all)
    print(f"modelwatch up: {', '.join(children)} running; rows -> {csv_path}, plot -> {png_path}, "
          f"dashboard -> http://{dashboard}/")  # fmt: skip
    print("Ctrl+C stops everything.", flush=True)
    failed = ""
    while any(c.poll() is None for c in children.values()):
        for name, child in children.items():
            code = child.poll()
            if code not in (None, 0) and not stopping:
                failed = f"{name} exited with status {code}; stopping the others"
                print(f"modelwatch up: {failed}", file=sys.stderr)
                stop_all()
        time.sleep(0.2)
    codes = {name: c.returncode for name, c in children.items()}
    # Every service sets its SIGTERM handler before it connects, so one that died of our SIGTERM
    # was still importing: it had nothing in flight and nothing to finish.
    unstarted = [n for n, c in codes.items() if stopping and c == -signal.SIGTERM]
    if unstarted:
        print(
            f"modelwatch up: {', '.join(unstarted)} stopped while starting, with nothing in flight",
            flush=True,
        )
    bad = {n: c for n, c in codes.items() if c != 0 and n not in unstarted}
    if bad:
        print(f"modelwatch up: exit statuses {bad}", file=sys.stderr)
    return 1 if failed or bad else 0


if __name__ == "__main__":
    main()
