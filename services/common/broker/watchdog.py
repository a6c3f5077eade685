"""The watchdog: a service must never sit idle on a queue it should be consuming.

The broker normally cancels the consumers of a deleted queue, and the consumer side reconnects;
this covers a cancel that never comes. Every few seconds a passive declare asks for each consumed
queue: if it is gone, the declare closes the channel (404) and the usual reconnect redeclares it
(or, with RABBITMQ_TOPOLOGY=verify, stops the service naming the queue); if it lists no consumer,
or holds ready messages while nothing was delivered to us since the last look and we have room
for more, we reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pika.channel import Channel

from services.common.broker.connection import Connection
from services.common.broker.consumer import Consumer, Consumers

log = logging.getLogger("modelwatch.broker")

Look = tuple[Channel, int, int]  # (channel, ready messages, deliveries to us) at one look


async def watch_queues(link: Connection, consumers: Consumers, every_s: float = 5.0) -> None:
    """Look at every consumed queue every `every_s` seconds; reconnect when one is not consumed."""
    last: dict[str, Look] = {}  # by consumer tag: a queue consumed again starts afresh
    while not link.stopping:
        await asyncio.sleep(every_s)
        chan = link.channel
        # A channel still being set up (topology, then consumers) has none of our tags yet.
        if chan is None or not chan.is_open or link.stopping or chan is not consumers.set_up_on:
            continue
        tags = {c.tag for c in consumers.entries}
        last = {tag: look for tag, look in last.items() if tag in tags}
        for consumer in list(consumers.entries):  # one may be added or removed meanwhile
            if consumer not in consumers.entries:
                continue
            # No timeout on purpose: while a resource alarm blocks the connection the broker
            # reads nothing from it, this included, and reconnecting would not unblock it.
            try:
                ok = await link.call(lambda cb, q=consumer.spec.name, c=chan: c.queue_declare(
                    q, passive=True, callback=cb))  # fmt: skip
            except Exception:  # noqa: BLE001 - the channel closed: the reconnect handles it
                break
            if consumer not in consumers.entries:  # removed while we asked (a shard given back)
                continue
            now = (chan, ok.method.message_count, consumer.delivered)
            why = idle_reason(consumer, consumers, ok.method, last.get(consumer.tag), now)
            last[consumer.tag] = now
            if why and chan is link.channel and link.conn is not None and link.conn.is_open:
                log.error("%s; reconnecting", why)
                link.conn.close()
                break


def idle_reason(
    consumer: Consumer, consumers: Consumers, declared: Any, before: Look | None, now: Look
) -> str:
    """Why `consumer` is not consuming its queue, or "" when it looks fine."""
    name = consumer.spec.name
    if consumer.tag not in now[0].consumer_tags or declared.consumer_count == 0:
        return f"no consumer of ours on {name} any more (cancelled without notice?)"
    stuck = (
        before is not None
        and before[0] is now[0]  # same channel: no reconnect in between
        and before[1] > 0
        and now[1] > 0
        and before[2] == now[2]
        and len(consumers.settler.acks) < consumers.prefetch  # the broker's count, not ours
    )
    if stuck:
        return f"{name} holds {now[1]} ready messages but none were delivered to us lately"
    return ""
