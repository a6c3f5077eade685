"""Declaring (or only checking) the exchanges and queues the catalog implies, on an open channel.

`call` runs one pika call that reports through a callback and fails if the channel dies (the
`Connection.call`); the broker closes the channel on a conflict, which `call` raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.contracts import Topology

Call = Callable[[Callable[[Callable[[Any], None]], Any]], Awaitable[Any]]


async def declare(call: Call, ch: Any, topo: Topology, broker: tuple[int, ...] = (4,)) -> None:
    """Declare everything, durable; a no-op for what already exists with the same arguments.
    `broker` is the broker's version, which decides the dead-letter queues' arguments."""
    dlq_arguments = topo.dlq_arguments(broker)
    dlx = topo.dead_letter_exchange
    await call(lambda cb: ch.exchange_declare(dlx, "direct", durable=True, callback=cb))
    for exchange in topo.exchanges:
        await call(lambda cb, e=exchange: ch.exchange_declare(
            e, "fanout", durable=True, callback=cb))  # fmt: skip
    for router, source in topo.routers:
        # Fed by the fanout, which passes the message's routing key on. Not `internal`: RabbitMQ
        # leaves internal exchanges out of a definitions export, so a backup would lose it; no
        # service may write to it anyway (definitions.py).
        await call(lambda cb, r=router: ch.exchange_declare(
            r, "direct", durable=True, callback=cb))  # fmt: skip
        await call(lambda cb, r=router, s=source: ch.exchange_bind(r, s, callback=cb))
    for q in topo.queues:
        arguments = topo.queue_arguments(q)
        await call(lambda cb, q=q, a=arguments: ch.queue_declare(
            q.name, durable=True, arguments=a, callback=cb))  # fmt: skip
        if q.router:  # pika sends one bind after another; asking for all at once saves waits
            await asyncio.gather(*(call(lambda cb, q=q, k=key: ch.queue_bind(
                q.name, q.router, routing_key=k, callback=cb)) for key in q.keys))  # fmt: skip
        else:
            await call(lambda cb, q=q: ch.queue_bind(q.name, q.exchange, callback=cb))
        await call(lambda cb, q=q: ch.queue_declare(
            q.dlq, durable=True, arguments=dlq_arguments, callback=cb))  # fmt: skip
        await call(lambda cb, q=q: ch.queue_bind(q.dlq, dlx, routing_key=q.name, callback=cb))
    for h in topo.histories:
        await call(lambda cb, h=h: ch.queue_declare(
            h.queue, durable=True, arguments=h.arguments(), callback=cb))  # fmt: skip
        await call(lambda cb, h=h: ch.queue_bind(h.queue, h.exchange, callback=cb))


async def verify(call: Call, ch: Any, topo: Topology, broker: tuple[int, ...] = (4,)) -> None:
    """Check the preloaded topology exists; passive declares need no configure permission."""
    routers = [router for router, _ in topo.routers]
    for exchange in (topo.dead_letter_exchange, *topo.exchanges, *routers):
        await call(lambda cb, e=exchange: ch.exchange_declare(e, passive=True, callback=cb))
    names = [n for q in topo.queues for n in (q.name, q.dlq)] + [h.queue for h in topo.histories]
    for name in names:
        await call(lambda cb, n=name: ch.queue_declare(n, passive=True, callback=cb))
