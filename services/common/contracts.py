"""The contracts in `contracts/`, loaded once at start-up.

`contracts/catalog.json` names every message type, its schema file per version, who produces which
version and which queue each consumer reads. Everything here is derived from it: validators, the
schema id that travels with each message, and the broker topology. Schemas are resolved through a
`referencing.Registry` built from the files on disk, so validation never fetches anything.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from services.common.messages import ContractViolation, Message, Rejected, decode_body

# A partitioned consumer's messages carry a routing key from their id: one of KEYS two-digit hex
# keys, each bound to one shard queue. 256 keys keep 2-16 shards within 1/40 of even.
KEYS = 256


def shard_key(message_id: str) -> str:
    """The routing key of a message of a partitioned type: the same for both halves of an id,
    and independent of the shard count, so producers need not know it."""
    return f"{zlib.crc32(message_id.encode()) % KEYS:02x}"


def shard_of(key: str, shards: int) -> int:
    return int(key, 16) % shards


@dataclass(frozen=True, slots=True)
class Consumer:
    service: str
    queue: str
    accepts: tuple[int, ...]
    # Its queue may be split in shards by message id (METRIC_SHARDS): the consumers of a join,
    # whose two halves of an id must meet in one process.
    partitioned: bool = False


@dataclass(frozen=True, slots=True)
class MessageType:
    name: str
    description: str
    transport: str
    compatibility: str
    versions: dict[int, Path]
    producer: str
    produces: int
    consumers: tuple[Consumer, ...]
    history: History | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A stream queue bound to a type's exchange: every message of the last `max_age`, readable
    again from any point by anyone allowed to read it (RabbitMQ streams)."""

    queue: str
    exchange: str
    max_age: str  # a RabbitMQ x-max-age, e.g. "7D"

    def arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "stream", "x-max-age": self.max_age,
                "x-max-length-bytes": 1_000_000_000}  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A consumer queue, bound to its type's exchange, with a dead-letter queue `<name>.dlq`."""

    name: str
    exchange: str
    message_type: str
    # A shard of a partitioned consumer's queue: bound to `router`, a direct exchange fed by
    # `exchange`, for the routing `keys` of shard `shard`; consumed by its owner only.
    router: str = ""
    keys: tuple[str, ...] = ()
    shard: int = 0
    family: str = ""  # the catalog's queue name, of which this is a shard

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything the broker needs declared: one fanout exchange per AMQP message type."""

    exchanges: tuple[str, ...]
    queues: tuple[QueueSpec, ...]
    dead_letter_exchange: str
    delivery_limit: int
    histories: tuple[History, ...] = ()

    def queue_arguments(self, queue: QueueSpec) -> dict[str, Any]:
        """A consumer queue: quorum, bounded redeliveries, dead letters that cannot be dropped.

        A shard queue has no single active consumer: its owner's file lock already keeps it to
        one consumer, and on quorum queues SAC refuses basic.get, which the management UI's
        "Get messages" uses to show what a queue holds."""
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": queue.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": self.delivery_limit,
        }

    def family(self, queue: str) -> list[QueueSpec]:
        """A catalog consumer queue as declared: itself, or its shard queues."""
        return [q for q in self.queues if q.name == queue or q.family == queue]

    @property
    def routers(self) -> tuple[tuple[str, str], ...]:
        """(router, the fanout exchange it is bound to) for each sharded queue family."""
        return tuple(dict.fromkeys((q.router, q.exchange) for q in self.queues if q.router))

    def dlq_arguments(self, broker: tuple[int, ...] = (4,)) -> dict[str, Any]:
        """A dead-letter queue on a broker of version `broker`: quorum, never dropping a message.

        Listing dead letters takes each one and returns it, which is a delivery. RabbitMQ 4.0
        gives every quorum queue a delivery limit of 20 unless it has one, and a dead-letter queue
        has no dead-letter exchange of its own, so the 21st look would drop them: on 4.x the
        limit is explicitly -1 (none). 3.x has no default limit and reads -1 as "drop on the first
        return", so there the argument is left out.
        """
        if broker >= (4,):
            return {"x-queue-type": "quorum", "x-delivery-limit": -1}
        return {"x-queue-type": "quorum"}


class Contracts:
    """Validators and topology for every message type in the catalog."""

    def __init__(self, root: Path) -> None:
        self.root = root
        catalog = json.loads((root / "catalog.json").read_text())
        self.types = {name: _message_type(name, spec) for name, spec in catalog["types"].items()}
        self._dlx = catalog["dead_letter_exchange"]
        self._delivery_limit = int(catalog["delivery_limit"])
        schemas = {p: json.loads(p.read_text()) for p in sorted(root.glob("*/v*/schema.json"))}
        self.registry = Registry().with_resources(
            (s["$id"], Resource.from_contents(s)) for s in schemas.values()
        )
        self.schema_ids: dict[tuple[str, int], str] = {}
        self._validators: dict[tuple[str, int], Draft202012Validator] = {}
        # The hot path checks with jsonschema-rs (compiled, a small fraction of jsonschema's cost
        # per message: docs/benchmark.md); jsonschema, which loads the registry and checks the
        # metaschemas, words the reason when a message fails.
        fast_registry = jsonschema_rs.Registry([(s["$id"], s) for s in schemas.values()])
        self._fast: dict[tuple[str, int], Any] = {}
        self._schemas: dict[tuple[str, int], dict[str, Any]] = {}
        for mtype in self.types.values():
            for version, rel in mtype.versions.items():
                schema = schemas[root / rel]
                self.schema_ids[mtype.name, version] = schema["$id"]
                self._schemas[mtype.name, version] = schema
                self._validators[mtype.name, version] = Draft202012Validator(
                    schema, registry=self.registry
                )
                self._fast[mtype.name, version] = jsonschema_rs.Draft202012Validator(
                    schema, registry=fast_registry
                )
        self._by_id = {sid: key for key, sid in self.schema_ids.items()}

    def identify(self, schema_id: Any) -> tuple[str, int]:
        """The (type, version) a message's schema header names; `Rejected` if none."""
        if not isinstance(schema_id, str | bytes):
            raise Rejected("missing schema header")
        if isinstance(schema_id, bytes):
            schema_id = schema_id.decode("utf-8", "replace")
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise Rejected(f"unknown schema version {schema_id!r}") from None

    def errors(self, type_: str, version: int, payload: Any) -> str | None:
        """Why `payload` breaks the schema, or None when it conforms."""
        if self._fast[type_, version].is_valid(payload):
            return None
        error = best_match(self._validators[type_, version].iter_errors(payload))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"{type_} v{version} at {where}: {error.message[:200]}"

    def decode(
        self,
        queue: str,
        type_: str,
        accepts: Collection[int],
        headers: dict[str, Any],
        body: bytes,
        redelivered: bool = False,
    ) -> Message:
        """What a consumer of `queue` gets: a validated Message, or `Rejected` saying why not."""
        found_type, version = self.identify(headers.get("schema"))
        if found_type != type_ or version not in accepts:
            raise Rejected(f"{queue} does not accept {found_type} v{version}")
        payload = decode_body(body)
        self.check_input(type_, version, payload)
        return Message(type_, version, payload, headers, redelivered)

    def check_input(self, type_: str, version: int, payload: Any) -> None:
        reason = self.errors(type_, version, payload)
        if reason:
            raise Rejected(f"schema violation: {reason}")

    def check_output(self, type_: str, payload: Any, version: int | None = None) -> int:
        """Validate what this service is about to emit; returns the version it is emitted as."""
        version = version or self.types[type_].produces
        reason = self.errors(type_, version, payload)
        if reason:
            raise ContractViolation(f"refusing to emit invalid output: {reason}")
        return version

    def unaccepted_by(self, type_: str, version: int) -> list[str]:
        """The consumers (`service (queue)`) that would dead-letter `type_` at `version`."""
        return [
            f"{c.service} ({c.queue})"
            for c in self.types[type_].consumers
            if c.queue and version not in c.accepts
        ]

    def columns(self, type_: str) -> list[str]:
        """The fields of the version this service produces, in schema order (CSV columns)."""
        return list(self._schemas[type_, self.types[type_].produces]["properties"])

    def routed(self, type_: str) -> bool:
        """Whether a message of `type_` reaches any queue (a consumer's or its history)."""
        mtype = self.types[type_]
        return bool(mtype.history) or any(c.queue for c in mtype.consumers)

    def consumer(self, service: str, type_: str) -> Consumer:
        for consumer in self.types[type_].consumers:
            if consumer.service == service:
                return consumer
        raise KeyError(f"the catalog lists no consumer {service!r} of {type_!r}")

    def partitioned(self, type_: str) -> bool:
        """Whether messages of `type_` carry a shard key (a consumer of it is partitioned)."""
        return any(c.partitioned for c in self.types[type_].consumers)

    def topology(self, shards: int = 1) -> Topology:
        """With `shards` = n > 1, each partitioned consumer's queue `q` becomes
        `q.shard-0-of-n` ... `q.shard-<n-1>-of-n`, bound by routing key to a direct exchange
        `q.n-shards` that the type's fanout feeds. The names hold n so that queues of another
        count are never bound with these keys (an id would reach two shards)."""
        amqp = [t for t in self.types.values() if t.transport == "amqp"]
        # A consumer without a queue reads a file the producer writes (the plot reads the CSV).
        queues = tuple(
            spec
            for t in amqp
            for c in t.consumers
            if c.queue
            for spec in _queues(c, t.name, shards if c.partitioned else 1)
        )
        histories = tuple(t.history for t in amqp if t.history)
        return Topology(
            tuple(t.name for t in amqp), queues, self._dlx, self._delivery_limit, histories
        )


def _queues(consumer: Consumer, type_: str, shards: int) -> list[QueueSpec]:
    if shards == 1:
        return [QueueSpec(consumer.queue, type_, type_)]
    keys = [f"{k:02x}" for k in range(KEYS)]
    return [
        QueueSpec(
            f"{consumer.queue}.shard-{shard}-of-{shards}",
            type_,
            type_,
            router=f"{consumer.queue}.{shards}-shards",
            keys=tuple(k for k in keys if shard_of(k, shards) == shard),
            shard=shard,
            family=consumer.queue,
        )
        for shard in range(shards)
    ]


def _message_type(name: str, spec: dict[str, Any]) -> MessageType:
    consumers = tuple(
        Consumer(
            c["service"],
            c.get("queue", ""),
            tuple(c.get("accepts", ())),
            bool(c.get("partitioned", False)),
        )
        for c in spec["consumers"]
    )
    return MessageType(
        name=name,
        description=spec.get("description", ""),
        transport=spec["transport"],
        compatibility=spec["compatibility"],
        versions={int(v): Path(p) for v, p in spec["versions"].items()},
        producer=spec["producer"]["service"],
        produces=int(spec["producer"]["version"]),
        consumers=consumers,
        history=History(spec["history"]["queue"], name, spec["history"]["max_age"])
        if "history" in spec
        else None,
    )
