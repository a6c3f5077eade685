"""The RabbitMQ definitions file, derived from the catalog like everything else about the broker.

It holds the vhost, one user per service that talks to the broker, their permissions, and the
topology (exchanges, queues with their arguments, dead-letter queues, bindings). Passwords are
`${VARIABLE}` placeholders that the broker container fills from `.env` when it starts
(`deploy/rabbitmq/render-definitions.sh`). Each service may only do its job:

- configure: nothing (the topology is preloaded; services run with RABBITMQ_TOPOLOGY=verify);
- write: the exchanges of the types it produces, plus the dead-letter exchange if it consumes;
- read: the queues it consumes.

`modelwatch broker definitions` writes it; a test fails when the committed file is stale.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.contracts import Contracts

ADMIN_USER = "admin"


def password_variable(user: str) -> str:
    return "RABBITMQ_ADMIN_PASSWORD" if user == ADMIN_USER else f"{user.upper()}_BROKER_PASSWORD"


def permissions(contracts: Contracts, shards: int = 1) -> dict[str, dict[str, str]]:
    """configure/write/read regular expressions per service user."""
    topo = contracts.topology(shards)
    users: dict[str, dict[str, list[str]]] = {}
    for mtype in contracts.types.values():
        if mtype.transport != "amqp":
            continue
        users.setdefault(mtype.producer, {"write": [], "read": []})["write"].append(mtype.name)
        for consumer in (c for c in mtype.consumers if c.queue):
            entry = users.setdefault(consumer.service, {"write": [], "read": []})
            entry["read"].extend(q.name for q in topo.family(consumer.queue))
            if topo.dead_letter_exchange not in entry["write"]:
                entry["write"].append(topo.dead_letter_exchange)
    return {
        user: {"configure": "^$", "write": _exactly(p["write"]), "read": _exactly(p["read"])}
        for user, p in sorted(users.items())
    }


def build(contracts: Contracts, vhost: str = "modelwatch", shards: int = 1) -> dict[str, Any]:
    topo = contracts.topology(shards)
    grants = permissions(contracts, shards)
    users = [*grants, ADMIN_USER]
    queues = [(q.name, topo.queue_arguments(q)) for q in topo.queues]
    queues += [(q.dlq, topo.dlq_arguments((4,))) for q in topo.queues]  # the image is 4.x
    queues += [(h.queue, h.arguments()) for h in topo.histories]
    return {
        "vhosts": [{"name": vhost}],
        "users": [
            {
                "name": user,
                "password": "${" + password_variable(user) + "}",
                "tags": ["administrator"] if user == ADMIN_USER else [],
            }
            for user in users
        ],
        "permissions": [
            {"user": user, "vhost": vhost, **grant}
            for user, grant in [*grants.items(), (ADMIN_USER, _ALL)]
        ],
        "exchanges": [
            _exchange(vhost, topo.dead_letter_exchange, "direct"),
            *(_exchange(vhost, name, "fanout") for name in topo.exchanges),
            *(_exchange(vhost, router, "direct") for router, _ in topo.routers),
        ],
        "queues": [_queue(vhost, name, arguments) for name, arguments in queues],
        "bindings": [
            _binding(vhost, source, router, "", "exchange") for router, source in topo.routers
        ]
        + [
            binding
            for q in topo.queues
            for binding in (
                *(
                    [_binding(vhost, q.router, q.name, key) for key in q.keys]
                    if q.router
                    else [_binding(vhost, q.exchange, q.name, "")]
                ),
                _binding(vhost, topo.dead_letter_exchange, q.dlq, q.name),
            )
        ]
        + [_binding(vhost, h.exchange, h.queue, "") for h in topo.histories],
    }


_ALL = {"configure": ".*", "write": ".*", "read": ".*"}


def _exactly(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$" if names else "^$"


def _exchange(vhost: str, name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "vhost": vhost, "type": kind, "durable": True, "auto_delete": False,
            "internal": False, "arguments": {}}  # fmt: skip


def _queue(vhost: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "vhost": vhost, "durable": True, "auto_delete": False,
            "arguments": arguments}  # fmt: skip


def _binding(
    vhost: str, source: str, destination: str, key: str, kind: str = "queue"
) -> dict[str, Any]:
    return {"source": source, "vhost": vhost, "destination": destination,
            "destination_type": kind, "routing_key": key, "arguments": {}}  # fmt: skip
