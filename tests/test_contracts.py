"""Data-driven checks over every file in contracts/: a new type or version needs no new test."""

from __future__ import annotations

import collections
import json
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from services.common.contracts import Contracts, shard_key, shard_of
from tests.conftest import REPO

CONTRACTS = REPO / "contracts"
SCHEMAS = sorted(CONTRACTS.glob("*/v*/schema.json"))
VALID = sorted(CONTRACTS.glob("*/v*/examples/valid/*.json"))
INVALID = sorted(CONTRACTS.glob("*/v*/examples/invalid/*.json"))
CATALOG = json.loads((CONTRACTS / "catalog.json").read_text())


def _name(path: Path) -> str:
    return str(path.relative_to(CONTRACTS))


def _type_and_version(example: Path) -> tuple[str, int]:
    rel = example.relative_to(CONTRACTS).parts
    return rel[0], int(rel[1].removeprefix("v"))


@pytest.mark.parametrize("schema_path", SCHEMAS, ids=_name)
def test_schema_is_valid_2020_12_with_id_and_title(schema_path: Path) -> None:
    schema = json.loads(schema_path.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    type_dir, version_dir = schema_path.relative_to(CONTRACTS).parts[:2]
    assert schema["$id"].endswith(f"/contracts/{type_dir}/{version_dir}/schema.json")
    assert schema["title"]


@pytest.mark.parametrize("example", VALID, ids=_name)
def test_valid_example_is_accepted(example: Path, contracts: Contracts) -> None:
    type_, version = _type_and_version(example)
    assert contracts.errors(type_, version, json.loads(example.read_text())) is None


@pytest.mark.parametrize("example", INVALID, ids=_name)
def test_invalid_example_is_rejected(example: Path, contracts: Contracts) -> None:
    type_, version = _type_and_version(example)
    assert contracts.errors(type_, version, json.loads(example.read_text()))


def test_every_message_version_has_valid_and_invalid_examples() -> None:
    for name, spec in CATALOG["types"].items():
        for version in spec["versions"]:
            folder = CONTRACTS / name / f"v{version}" / "examples"
            assert list((folder / "valid").glob("*.json")), f"{name} v{version}: no valid example"
            assert list((folder / "invalid").glob("*.json")), f"{name} v{version}: no invalid one"


def test_catalog_names_every_schema_file_and_only_existing_ones() -> None:
    listed = {
        CONTRACTS / path
        for group in (CATALOG["types"], CATALOG["shared"])
        for spec in group.values()
        for path in spec["versions"].values()
    }
    assert listed == set(SCHEMAS)


def test_queues_are_named_consumer_dot_type_and_versions_exist() -> None:
    services = {p.parent.name for p in (REPO / "services").glob("*/handler.py")}
    for name, spec in CATALOG["types"].items():
        assert spec["producer"]["service"] in services
        assert str(spec["producer"]["version"]) in spec["versions"]
        for consumer in spec["consumers"]:
            assert consumer["service"] in services
            if spec["transport"] == "amqp" and "queue" in consumer:
                assert consumer["queue"] == f"{consumer['service']}.{name}"
                assert {str(v) for v in consumer["accepts"]} <= set(spec["versions"])


def test_topology_is_derived_from_the_catalog(contracts: Contracts) -> None:
    topology = contracts.topology()
    amqp_types = {n for n, s in CATALOG["types"].items() if s["transport"] == "amqp"}
    assert set(topology.exchanges) == amqp_types
    expected = {
        c["queue"] for n in amqp_types for c in CATALOG["types"][n]["consumers"] if "queue" in c
    }
    assert {q.name for q in topology.queues} == expected
    assert {q.dlq for q in topology.queues} == {f"{q}.dlq" for q in expected}
    histories = {s["history"]["queue"]: n for n, s in CATALOG["types"].items() if "history" in s}
    assert {h.queue: h.exchange for h in topology.histories} == histories


@pytest.mark.parametrize("shards", [2, 6, 64])
def test_a_sharded_join_routes_every_key_to_exactly_one_shard(
    contracts: Contracts, shards: int
) -> None:
    topology = contracts.topology(shards)
    for family in ("metric.y_true", "metric.y_pred"):
        queues = topology.family(family)
        names = [f"{family}.shard-{k}-of-{shards}" for k in range(shards)]
        assert [q.name for q in queues] == names
        assert {q.router for q in queues} == {f"{family}.{shards}-shards"}
        keys = [key for q in queues for key in q.keys]
        assert sorted(keys) == [f"{k:02x}" for k in range(256)]  # each once: no id unroutable
        sizes = [len(q.keys) for q in queues]
        assert max(sizes) - min(sizes) <= 1
    assert dict(topology.routers) == {f"metric.y_true.{shards}-shards": "y_true",
                                      f"metric.y_pred.{shards}-shards": "y_pred"}  # fmt: skip
    # Everything else is as with one shard.
    others = [q for q in topology.queues if not q.router]
    assert others == [q for q in contracts.topology().queues if not q.name.startswith("metric.")]


def test_both_halves_of_an_id_carry_the_same_key_whatever_the_shard_count() -> None:
    ids = [str(uuid.UUID(int=n * 7919)) for n in range(2000)] + ["not-a-uuid", ""]
    keys = [shard_key(i) for i in ids]
    assert keys == [shard_key(i) for i in ids]  # a function of the id alone
    assert all(len(k) == 2 and int(k, 16) < 256 for k in keys)
    per_shard = collections.Counter(shard_of(k, 6) for k in keys[:2000])
    assert min(per_shard.values()) > 2000 / 6 * 0.8, per_shard  # spread evenly enough
