"""`modelwatch contracts check [--base GIT_REF]`: everything that keeps contracts/ honest.

1. every schema against the 2020-12 metaschema, with `$schema`, `$id` (matching its folder) and a
   `title`;
2. every example against its version: valid ones accepted, invalid ones rejected, both present;
3. the catalog, the files, the AsyncAPI document and the broker definitions against each other, and
   the AsyncAPI document through the AsyncAPI parser (scripts/asyncapi.mjs);
4. each version against the previous version of its type, under the type's compatibility mode;
5. with `--base`: every released version file against itself on the base ref — any change to the
   set of messages it accepts is breaking, whatever the mode — and the AsyncAPI document against
   the base's with @asyncapi/diff.
Each problem names the file, the field, the change and the consumers it breaks; exit status 1.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource

from services.common.contracts import Contracts
from services.common.definitions import build as build_definitions
from tools.contracts import asyncapi
from tools.contracts.compat import dereference, narrowing

MODES = ("backward", "forward", "full", "none")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def check(root: Path, base: str | None = None) -> Report:
    report = Report()
    schemas = _check_schema_files(root, report)
    try:
        contracts = Contracts(root)
    except (KeyError, ValueError, OSError) as exc:
        report.problem(f"catalog.json cannot be loaded: {exc!r}")
        return report
    _check_catalog(root, contracts, schemas, report)
    _check_examples(root, contracts, report)
    _check_derived_files(root, contracts, report)
    _check_versions(contracts, report)
    if base:
        _check_against_base(root, contracts, base, report)
    return report


def _check_schema_files(root: Path, report: Report) -> dict[Path, dict]:
    schemas = {}
    for path in sorted(root.glob("*/v*/schema.json")):
        rel = path.relative_to(root)
        try:
            schema = json.loads(path.read_text())
            Draft202012Validator.check_schema(schema)
        except (ValueError, SchemaError) as exc:
            report.problem(f"{rel}: not a valid 2020-12 schema: {str(exc).splitlines()[0]}")
            continue
        if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
            report.problem(f"{rel}: $schema must be the 2020-12 metaschema")
        if not str(schema.get("$id", "")).endswith(f"/contracts/{rel}"):
            report.problem(f"{rel}: $id {schema.get('$id')!r} does not end in /contracts/{rel}")
        if not schema.get("title"):
            report.problem(f"{rel}: no title")
        schemas[path] = schema
    report.notes.append(f"{len(schemas)} schema files")
    return schemas


def _check_catalog(root: Path, contracts: Contracts, schemas: dict, report: Report) -> None:
    catalog = json.loads((root / "catalog.json").read_text())
    listed = {root / p for g in ("types", "shared") for t in catalog[g].values()
              for p in t["versions"].values()}  # fmt: skip
    for path in sorted(listed - set(schemas)):
        report.problem(f"catalog.json lists {path.relative_to(root)}, which is missing or invalid")
    for path in sorted(set(schemas) - listed):
        report.problem(f"{path.relative_to(root)} is not in catalog.json")
    for mtype in contracts.types.values():
        if mtype.compatibility not in MODES:
            report.problem(f"{mtype.name}: compatibility {mtype.compatibility!r} not in {MODES}")
        if mtype.produces not in mtype.versions:
            report.problem(
                f"{mtype.name}: the producer emits v{mtype.produces}, which is not listed"
            )
        for c in mtype.consumers:
            for v in c.accepts:
                if v not in mtype.versions:
                    report.problem(f"{mtype.name}: {c.service} accepts v{v}, which is not listed")
            if not c.queue:
                continue  # reads a file the producer writes, not a queue
            if mtype.transport == "amqp" and mtype.produces not in c.accepts:
                report.problem(f"{mtype.name}: {c.service} ({c.queue}) does not accept "
                               f"v{mtype.produces}, which the producer emits")  # fmt: skip
            if mtype.transport == "amqp" and c.queue != f"{c.service}.{mtype.name}":
                report.problem(
                    f"{mtype.name}: queue {c.queue!r} should be {c.service}.{mtype.name}"
                )


def _check_examples(root: Path, contracts: Contracts, report: Report) -> None:
    count = 0
    for mtype in contracts.types.values():
        for version, rel in mtype.versions.items():
            folder = (root / rel).parent / "examples"
            for kind in ("valid", "invalid"):
                examples = sorted((folder / kind).glob("*.json"))
                if not examples:
                    report.problem(f"{mtype.name} v{version}: no {kind} examples in {folder}")
                for example in examples:
                    count += 1
                    error = contracts.errors(mtype.name, version, json.loads(example.read_text()))
                    if kind == "valid" and error:
                        report.problem(f"{example.relative_to(root)} should be valid: {error}")
                    if kind == "invalid" and not error:
                        report.problem(f"{example.relative_to(root)} should be invalid, but passes")
    report.notes.append(f"{count} examples")


def compose_shards() -> int:
    """The METRIC_SHARDS compose gives every service: the definitions are made for it."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return int(compose["x-service-env"]["METRIC_SHARDS"])


def _check_derived_files(root: Path, contracts: Contracts, report: Report) -> None:
    document = root / "asyncapi.yaml"
    if not document.exists() or document.read_text() != asyncapi.render(contracts):
        report.problem("contracts/asyncapi.yaml does not match the catalog: "
                       "run `modelwatch contracts asyncapi`")  # fmt: skip
    definitions = REPO / "deploy" / "rabbitmq" / "definitions.json"
    shards = compose_shards()
    if definitions.exists() and json.loads(definitions.read_text()) != build_definitions(
        contracts, shards=shards
    ):
        report.problem(
            "deploy/rabbitmq/definitions.json does not match the catalog: run `modelwatch broker "
            f"definitions --metric-shards {shards} > deploy/rabbitmq/definitions.json`"
        )
    done = _node("validate", str(document))
    if done.returncode != 0:
        report.problem(f"AsyncAPI validation failed:\n{done.stdout}{done.stderr}".rstrip())
    else:
        report.notes.append("asyncapi.yaml valid (@asyncapi/parser)")


def _check_versions(contracts: Contracts, report: Report) -> None:
    for mtype in contracts.types.values():
        versions = sorted(mtype.versions)
        for old, new in itertools.pairwise(versions):
            a = dereference(_schema(contracts, mtype.name, old), contracts.registry)
            b = dereference(_schema(contracts, mtype.name, new), contracts.registry)
            checks = {"backward": [(a, b)], "forward": [(b, a)], "full": [(a, b), (b, a)],
                      "none": []}[mtype.compatibility]  # fmt: skip
            for before, after in checks:
                for change in narrowing(before, after):
                    report.problem(
                        f"{mtype.name} v{new} is not {mtype.compatibility}-compatible with "
                        f"v{old} {change} - breaks {_consumers(contracts, mtype.name)}"
                    )


def _check_against_base(root: Path, contracts: Contracts, base: str, report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base_root = _export(base, root, Path(tmp))
        if base_root is None:
            report.notes.append(f"no contracts/ at {base}: nothing to compare")
            return
        base_registry, base_schemas = _registry(base_root)
        for rel, before in sorted(base_schemas.items()):
            now = root / rel
            type_name, version = rel.parts[0], rel.parts[1]
            if type_name not in contracts.types:
                continue  # shared definitions: their users are compared below
            if not now.exists():
                report.problem(f"{rel} was released at {base} and is gone - breaks "
                               f"{_consumers(contracts, type_name)}")  # fmt: skip
                continue
            a = dereference(before, base_registry)
            b = dereference(json.loads(now.read_text()), contracts.registry)
            where = f"{type_name} {version} ({rel}) edited in place since {base}"
            for change in narrowing(a, b):
                report.problem(f"{where} {change} - breaks {_consumers(contracts, type_name)}")
            for change in narrowing(b, a):
                report.problem(
                    f"{where} at {change.path}: loosened - it now admits messages the released "
                    f"version rejected (reverse check: {change.what}); a released version must "
                    "keep its exact meaning"
                )
        _diff_asyncapi(base_root / "asyncapi.yaml", root / "asyncapi.yaml", base, report)
        report.notes.append(f"compared with {base}")


def _diff_asyncapi(before: Path, after: Path, base: str, report: Report) -> None:
    if not before.exists():
        report.notes.append(f"no asyncapi.yaml at {base}")
        return
    done = _node("diff", str(before), str(after))
    if done.returncode != 0:
        report.problem(f"@asyncapi/diff failed: {done.stderr.strip()}")
        return
    changes = json.loads(done.stdout)
    for change in changes["breaking"]:
        report.problem(f"asyncapi.yaml: breaking change since {base} ({change['action']} "
                       f"{change['path']})")  # fmt: skip
    counts = {k: len(v) for k, v in changes.items()}
    report.notes.append(
        f"asyncapi.yaml since {base}: {counts['breaking']} breaking, {counts['nonBreaking']} "
        f"non-breaking, {counts['unclassified']} unclassified (@asyncapi/diff)"
    )


def _export(ref: str, root: Path, into: Path) -> Path | None:
    repo = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    prefix = root.resolve().relative_to(Path(repo).resolve()).as_posix()
    done = subprocess.run(["git", "-C", repo, "archive", "--format=tar", ref, prefix],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        if b"did not match any files" in done.stderr or b"pathspec" in done.stderr:
            return None
        raise RuntimeError(f"git archive {ref}: {done.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / prefix


def _registry(root: Path) -> tuple[Registry, dict[Path, dict]]:
    schemas = {p.relative_to(root): json.loads(p.read_text())
               for p in sorted(root.glob("*/v*/schema.json"))}  # fmt: skip
    registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    return registry, schemas


def _schema(contracts: Contracts, type_: str, version: int) -> dict:
    return json.loads((contracts.root / contracts.types[type_].versions[version]).read_text())


def _consumers(contracts: Contracts, type_: str) -> str:
    names = [f"{c.service} ({c.queue})" if c.queue else c.service
             for c in contracts.types[type_].consumers]  # fmt: skip
    return ", ".join(names) or "no listed consumer"


def _node(*args: str) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    script = REPO / "scripts" / "asyncapi.mjs"
    if node is None or not (REPO / "node_modules" / "@asyncapi" / "parser").exists():
        return subprocess.CompletedProcess(
            args, 1, "", "the AsyncAPI tools are not installed: run `npm ci` (scripts/setup does)"
        )
    return subprocess.run([node, str(script), *args], capture_output=True, text=True, cwd=REPO)
