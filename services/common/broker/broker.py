"""`Broker`: what a service uses — consume with handlers, publish with confirms, run, stop.

It puts the parts together on one connection: connection.py (connect, reconnect), publisher.py
(confirmed publishing), topology.py (the exchanges and queues the catalog implies), consumer.py
(deliveries to handlers), settle.py (acks, flush batches), deadletters.py (why an input was
refused) and watchdog.py (a queue that is no longer consumed). On a new channel the steps run in
that order: confirm mode, topology, consumers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from opentelemetry.trace import SpanContext
from pika.channel import Channel
from pika.exceptions import ChannelClosedByBroker

from services.common.broker import topology
from services.common.broker.connection import BrokerError, Connection
from services.common.broker.consumer import Consumer, Consumers, Handler
from services.common.broker.deadletters import DeadLettering
from services.common.broker.publisher import Publisher
from services.common.broker.watchdog import watch_queues
from services.common.broker.wire import join_sends
from services.common.contracts import Contracts, QueueSpec
from services.common.messages import Outgoing
from services.common.settings import BrokerSettings

log = logging.getLogger("modelwatch.broker")


class BackgroundTaskFailed(RuntimeError):
    """A task the service runs beside the broker (the watchdog, the orphan sweep) raised."""


class Broker:
    """One connection and one channel, kept open for the life of a service."""

    def __init__(self, settings: BrokerSettings, contracts: Contracts, service: str):
        join_sends()
        self._contracts = contracts
        self._shards = settings.shards
        self._topology = contracts.topology(settings.shards)
        self._service = service
        self._verify_only = settings.topology == "verify"
        self._link = Connection(settings.urls)
        self._publisher = Publisher(self._link, contracts, service, settings.max_message_size)
        self._link.on_open(self._declare)
        dead = DeadLettering(
            self._publisher, service, self._topology.dead_letter_exchange,
            self._topology.delivery_limit,
        )  # fmt: skip
        self._consumers = Consumers(self._link, contracts, self._publisher, dead, settings.prefetch)
        self._link.on_open(self._consumers.on_open)
        self._link.on_lost(self._consumers.settler.lost)
        self._link.on_lost(self._publisher.lost)
        self._watchdog: asyncio.Task[None] | None = None
        self._drains: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def consume(
        self, type_: str, handler: Handler, span: str = "", span_attributes: dict | None = None,
        aggregate: bool = False, queue: QueueSpec | None = None,
    ) -> Consumer:  # fmt: skip
        """Consume this service's queue for `type_` (from the catalog) with `handler`, before
        start or while running.

        With `span`, each handler call gets a span of that name (e.g. "predict") under the
        message's process span. With `aggregate` (a consumer whose outputs summarise many
        messages), the deliveries that arrive together are handled under one process span
        linked to each message, instead of a span in every message's trace. `queue` picks one
        of `queues(type_)` when the queue is sharded.
        """
        entry = self._contracts.consumer(self._service, type_)
        specs = self._topology.family(entry.queue)
        spec = queue if queue is not None else specs[0]
        if spec not in specs or (queue is None and len(specs) > 1):
            raise ValueError(f"{type_}: name one of {[q.name for q in specs]}")
        consumer = Consumer(
            spec, frozenset(entry.accepts), handler, span, span_attributes or {}, aggregate
        )
        self._consumers.add(consumer)
        return consumer

    def queues(self, type_: str) -> list[QueueSpec]:
        """This service's queue for `type_`, or its shard queues (METRIC_SHARDS)."""
        return self._topology.family(self._contracts.consumer(self._service, type_).queue)

    async def cancel(self, consumer: Consumer) -> None:
        """Stop consuming; returns once everything it received is acknowledged (after the
        flush that made it durable), or went back to the broker with a lost channel."""
        await self._consumers.remove(consumer)

    def on_flush(self, flush: Callable[[], None]) -> None:
        """Make handler effects durable in batches: `flush` runs before inputs are acknowledged."""
        self._consumers.settler.on_flush(flush)

    def on_stop(self, drain: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """On a clean stop, await `drain` after the last inputs settled and before the
        connection closes (within the stop's timeout): publishes it still owes go out."""
        self._drains.append(drain)

    async def publish(
        self, *outs: Outgoing, parents: Sequence[SpanContext | None] | None = None
    ) -> None:
        """Publish `outs` and return once the broker confirmed every one (see Publisher); with
        `parents`, each one's PRODUCER span is a child of its own parent span."""
        await self._publisher.publish(*outs, parents=parents)

    @property
    def connected(self) -> bool:
        chan = self._link.channel
        return chan is not None and chan.is_open

    async def dead_letter_counts(self) -> dict[str, int]:
        """Messages waiting in each consumer queue's dead-letter queue (passive declares: no
        configure permission needed; every service checks at start that these queues exist)."""
        if not self.connected:
            return {}
        chan = self._link.channel
        counts = {}
        for q in self._topology.queues:
            ok = await self._link.call(lambda cb, n=q.dlq: chan.queue_declare(
                n, passive=True, callback=cb))  # fmt: skip
            counts[q.name] = ok.method.message_count
        return counts

    async def start(self, stop: asyncio.Event) -> bool:
        """Connect, declare the topology and start consuming; False if `stop` came first.

        Retries until the broker answers; errors retrying cannot fix raise `BrokerError`.
        """
        if not await self._link.start(stop):
            return False
        # Also with no consumer yet: a service may add them while it runs.
        self._watchdog = self.watch(watch_queues(self._link, self._consumers), "watchdog")
        return True

    def watch(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `work` beside the broker for the life of the service. If it fails, the service
        stops with that error (exit status 1) instead of going on without it."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.critical("background task %r failed: %r; stopping", task.get_name(), exc, exc_info=exc)
        self._link.fail(BackgroundTaskFailed(f"{task.get_name()} failed: {exc!r}"))

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then stop cleanly; re-raises a fatal error instead."""
        fatal = self._link.fatal
        assert fatal is not None, "start() first"
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopper, fatal}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if fatal.done():
            raise fatal.exception() or RuntimeError("broker failed")
        await self.stop()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming, let in-flight messages finish, then close."""
        self._link.stopping = True
        self._consumers.cancel()
        acks, confirms = self._consumers.settler.acks, self._publisher.confirms
        deadline = time.monotonic() + timeout
        while (acks.unsettled or confirms) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for drain in self._drains:
            try:
                await asyncio.wait_for(drain(), timeout=max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                log.warning("stopping before a drain finished; the rest goes after a restart")
        while confirms and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if acks.unsettled or confirms:
            log.warning(
                "stopping with %d unacked inputs and %d unconfirmed publishes; the broker "
                "redelivers the inputs",
                acks.unsettled,
                len(confirms),
            )
        self._consumers.settler.send_acks()
        if self._watchdog:
            self._watchdog.cancel()
        await self._link.close()

    async def _declare(self, chan: Channel) -> None:
        try:
            check = topology.verify if self._verify_only else topology.declare
            await check(self._link.call, chan, self._topology, self._link.broker_version)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == 404 and not self._verify_only:
                # A queue deleted while we declared it (the bind came after the deletion): the
                # next attempt declares it again. Only a conflict or a refusal is final.
                raise
            how = "RABBITMQ_TOPOLOGY=verify: " if self._verify_only else "declaring the topology: "
            hint = ""
            sharded = (c.queue for t in self._contracts.types.values() for c in t.consumers
                       if c.partitioned)  # fmt: skip
            if exc.reply_code == 404 and any(q in (exc.reply_text or "") for q in sharded):
                hint = (f" (METRIC_SHARDS is {self._shards} here: it must be the number the "
                        "definitions were made with)")  # fmt: skip
            raise BrokerError(f"{how}{exc.reply_text}{hint}") from None
