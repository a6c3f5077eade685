"""Property-based: what each schema allows, its consumer takes; what it forbids is rejected.

Instances are generated from every schema a consumer accepts (hypothesis-jsonschema), so a new
type or version is covered without new test code. Mutations of them must come back as `Rejected`
with a reason (the broker dead-letters those); nothing else may escape, which would crash a service.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from services.common.contracts import Contracts
from services.common.messages import Message, Rejected, encode_body
from services.dashboard import handler as dashboard
from services.dashboard.view import View
from services.metric import handler as metric
from services.model import handler as model
from services.model.artifact import load, train
from services.monitor import handler as monitor
from tests.conftest import REPO
from tools.contracts.compat import dereference

CONTRACTS = Contracts(REPO / "contracts")
CONSUMED = [
    (c.queue, t.name, v)
    for t in CONTRACTS.types.values()
    if t.transport == "amqp"
    for c in t.consumers
    for v in c.accepts
]
PROPERTIES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def generation_schema(type_: str, version: int) -> dict:
    path = CONTRACTS.root / CONTRACTS.types[type_].versions[version]
    schema = dereference(json.loads(path.read_text()), CONTRACTS.registry)
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id", "$defs")}


def decode(queue: str, type_: str, version: int, body: bytes) -> Message:
    accepts = next(c.accepts for c in CONTRACTS.types[type_].consumers if c.queue == queue)
    headers = {"schema": CONTRACTS.schema_ids[type_, version]}
    return CONTRACTS.decode(queue, type_, accepts, headers, body)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("model") / "model.json"
    train(path)
    return load(path)


def handle(queue: str, message: Message, trained) -> None:
    """Run the consumer's handler; a reasoned rejection is fine, anything else is a crash."""
    if queue.startswith("dashboard."):
        assert dashboard.handle(View(), message) == []
    elif message.type == "metric_record":
        monitor.event_of(message, 0.0, trained.feature_names)
    elif message.type == "features":
        [out] = model.handle(message, trained)
        CONTRACTS.check_output(out.type, out.payload)
    else:
        half = metric.half_of(message, "2026-11-27T11:40:35Z")
        metric.handle(half, None, None, "2026-11-27T11:40:36Z")


@pytest.mark.parametrize(("queue", "type_", "version"), CONSUMED)
def test_every_instance_the_schema_allows_is_accepted_by_its_consumer(
    queue: str, type_: str, version: int, trained
) -> None:
    @PROPERTIES
    @given(from_schema(generation_schema(type_, version)))
    def accepted(instance: dict) -> None:
        try:
            body = encode_body(instance)
        except TypeError:  # an integer wider than 64 bits, which no producer of ours can write
            assume(False)
        message = decode(queue, type_, version, body)
        assert message.payload == instance
        try:
            handle(queue, message, trained)
        except Rejected as exc:  # e.g. features so large the prediction overflows
            assert exc.reason

    accepted()


def body_of(instance: object) -> bytes:
    """The producers' encoding, or the standard library's for what orjson cannot write (an
    integer wider than 64 bits), which the consumer must then refuse with a reason."""
    try:
        return encode_body(instance)
    except TypeError:
        return json.dumps(instance).encode()


def _mutations(instance: dict) -> st.SearchStrategy[bytes]:
    keys = sorted(instance)
    return st.one_of(
        st.sampled_from(keys).map(lambda k: {x: v for x, v in instance.items() if x != k}),
        st.tuples(st.sampled_from(keys), st.sampled_from([None, "text", [], {}, True])).map(
            lambda kv: {**instance, kv[0]: kv[1]}
        ),
        st.just({**instance, "unexpected_field": 1}),
        st.just([instance]),
    ).map(body_of) | st.one_of(
        st.just(body_of(instance)[:-1]),
        st.just(body_of(instance).replace(b"{", b"{\xff", 1)),
        st.just(json.dumps({**instance, "id": float("nan")}).encode()),
    )


@pytest.mark.parametrize(("queue", "type_", "version"), CONSUMED)
def test_every_mutation_is_rejected_with_a_reason(queue: str, type_: str, version: int) -> None:
    @PROPERTIES
    @given(from_schema(generation_schema(type_, version)).flatmap(_mutations))
    def rejected(body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        # A replacement the schema happens to allow (e.g. "text" where a pattern takes it).
        assume(not (isinstance(payload, dict) and not CONTRACTS.errors(type_, version, payload)))
        with pytest.raises(Rejected) as caught:
            decode(queue, type_, version, body)
        assert caught.value.reason

    rejected()


def test_examples_directory_is_what_the_properties_cover() -> None:
    assert {(t, v) for _, t, v in CONSUMED} == {
        (p.parts[-3], int(p.parts[-2][1:]))
        for p in Path(REPO / "contracts").glob("*/v*/schema.json")
        if p.parts[-3] not in ("common", "orphan_record")  # shared definitions; a CSV row
    }
