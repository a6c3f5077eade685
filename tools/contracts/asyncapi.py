"""contracts/asyncapi.yaml (AsyncAPI 3.0), derived from the catalog so the two cannot disagree.

One channel per exchange (where producers send) and one per consumer queue and its dead-letter
queue (where consumers receive), with AMQP bindings matching the real topology; one message per
type and version, whose payload is a `$ref` to the schema file itself; the AMQP headers every
message carries (`schema`, trace context). `modelwatch contracts asyncapi` writes it;
`modelwatch contracts check` fails when the committed file differs.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from services.common.contracts import Contracts, MessageType

AMQP_BINDING = "0.3.0"
HEADERS = {
    "type": "object",
    "description": "AMQP headers every modelwatch message carries.",
    "properties": {
        "schema": {"type": "string", "format": "uri",
                   "description": "$id of the schema version the body conforms to."},
        "traceparent": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                        "description": "W3C trace context of the span that published it."},
        "tracestate": {"type": "string", "description": "W3C trace state, when set."},
        "baggage": {"type": "string", "description": "W3C baggage, when set."},
    },
    "required": ["schema"],
}  # fmt: skip
DEAD_LETTER_HEADERS = {
    "type": "object",
    "description": "Headers added when a message is dead-lettered (the original ones are kept).",
    "properties": {
        "x-error-reason": {"type": "string", "description": "why it was dead-lettered"},
        "x-error-queue": {"type": "string", "description": "the queue it was consumed from"},
        "x-error-service": {"type": "string", "description": "the service that rejected it"},
        "x-error-at": {"type": "string", "description": "when, RFC 3339 UTC"},
    },
}


def message_id(type_: str, version: int) -> str:
    return f"{type_}V{version}"


def _camel(*parts: str) -> str:
    words = [w for p in parts for w in p.replace(".", "_").split("_") if w]
    return words[0] + "".join(w.capitalize() for w in words[1:])


def _exchange_channel(mtype: MessageType) -> dict[str, Any]:
    return {
        "address": mtype.name,
        "title": f"{mtype.name} exchange",
        "description": f"{mtype.description} Fanout exchange: every consumer queue gets a copy.",
        "messages": {
            mid: {"$ref": f"#/components/messages/{mid}"}
            for mid in (message_id(mtype.name, v) for v in mtype.versions)
        },
        "bindings": {"amqp": {
            "is": "routingKey",
            "exchange": {"name": mtype.name, "type": "fanout", "durable": True,
                         "autoDelete": False, "vhost": "/"},
            "bindingVersion": AMQP_BINDING,
        }},
    }  # fmt: skip


def _queue_channel(name: str, mtype: MessageType, versions: list[int], note: str) -> dict:
    return {
        "address": name,
        "title": f"{name} queue",
        "description": note,
        "messages": {
            message_id(mtype.name, v): {
                "$ref": f"#/channels/{mtype.name}/messages/{message_id(mtype.name, v)}"
            }
            for v in versions
        },
        "bindings": {"amqp": {
            "is": "queue",
            "queue": {"name": name, "durable": True, "exclusive": False, "autoDelete": False,
                      "vhost": "/"},
            "bindingVersion": AMQP_BINDING,
        }},
    }  # fmt: skip


def _message(mtype: MessageType, version: int, contracts: Contracts) -> dict[str, Any]:
    schema_file = contracts.root / mtype.versions[version]
    schema = json.loads(schema_file.read_text())
    examples = sorted((schema_file.parent / "examples" / "valid").glob("*.json"))
    return {
        "name": mtype.name,
        "title": schema["title"],
        "summary": mtype.description,
        "contentType": "application/json",
        "headers": {"$ref": "#/components/schemas/headers"},
        "payload": {"$ref": f"./{mtype.versions[version]}"},
        "correlationId": {"description": "The message's id, also the AMQP message_id.",
                          "location": f"$message.payload#/{_id_field(schema)}"},
        "bindings": {"amqp": {"messageType": mtype.name, "bindingVersion": AMQP_BINDING}},
        "examples": [
            {"name": e.stem, "payload": json.loads(e.read_text()),
             "headers": {"schema": schema["$id"]}}
            for e in examples
        ],
    }  # fmt: skip


def _id_field(schema: dict[str, Any]) -> str:
    return "id" if "id" in schema.get("properties", {}) else "message_id"


def build(contracts: Contracts) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for mtype in (t for t in contracts.types.values() if t.transport == "amqp"):
        channels[mtype.name] = _exchange_channel(mtype)
        for v in mtype.versions:
            messages[message_id(mtype.name, v)] = _message(mtype, v, contracts)
        operations[_camel("send", mtype.name)] = {
            "action": "send",
            "title": f"{mtype.producer} publishes {mtype.name}",
            "description": f"Emitted by the {mtype.producer} service as v{mtype.produces}.",
            "channel": {"$ref": f"#/channels/{mtype.name}"},
            "messages": [{"$ref": f"#/channels/{mtype.name}/messages/"
                                  f"{message_id(mtype.name, mtype.produces)}"}],
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "timestamp": True,
                                  "bindingVersion": AMQP_BINDING}},
            "x-producer": mtype.producer,
        }  # fmt: skip
        if mtype.history:
            h = mtype.history
            channels[_camel(h.queue)] = _queue_channel(
                h.queue, mtype, list(mtype.versions),
                f"A stream bound to the {mtype.name} exchange: every message of the last "
                f"{h.max_age}, readable again from any offset (x-queue-type stream).",
            )  # fmt: skip
        for c in (c for c in mtype.consumers if c.queue):
            key, dlq = _camel(c.queue), _camel(c.queue, "dlq")
            channels[key] = _queue_channel(
                c.queue,
                mtype,
                list(c.accepts),
                f"Bound to the {mtype.name} exchange; {c.service} consumes it, accepting versions "
                f"{', '.join(map(str, c.accepts))}.",
            )
            channels[dlq] = _queue_channel(
                f"{c.queue}.dlq",
                mtype,
                list(mtype.versions),
                f"Dead letters of {c.queue}, through the modelwatch.dlx exchange with routing key "
                f"{c.queue}; each carries x-error-reason.",
            )
            channels[dlq]["x-dead-letter-headers"] = {"$ref": "#/components/schemas/deadLetter"}
            operations[_camel("receive", c.queue)] = {
                "action": "receive",
                "title": f"{c.service} consumes {c.queue}",
                "channel": {"$ref": f"#/channels/{key}"},
                "messages": [{"$ref": f"#/channels/{key}/messages/{message_id(mtype.name, v)}"}
                             for v in c.accepts],
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
                "x-consumer": c.service,
            }  # fmt: skip
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "modelwatch",
            "version": "1.0.0",
            "description": "Event-driven ML model monitoring over RabbitMQ. Generated from "
            "contracts/catalog.json by `modelwatch contracts asyncapi`; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "description": "modelwatch up against a local RabbitMQ (vhost /).",
            },
            "compose": {
                "host": "rabbitmq:5672",
                "pathname": "/modelwatch",
                "protocol": "amqp",
                "description": "docker compose: vhost modelwatch, one user per service.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {"headers": HEADERS, "deadLetter": DEAD_LETTER_HEADERS},
        },
    }


def render(contracts: Contracts) -> str:
    header = "# Generated from contracts/catalog.json by `modelwatch contracts asyncapi`.\n"
    return header + yaml.safe_dump(build(contracts), sort_keys=False, width=100)
