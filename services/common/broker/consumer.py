"""Consuming and settling: each delivery is decoded, handled, its outputs published, then settled.

For every delivery: decode -> validate -> handle -> validate outgoing -> publish -> wait for the
confirms -> ack, so an input is acknowledged only once its effect is durable. Bad input (`Rejected`)
and outputs over the size limit are dead-lettered at once; a handler that raises is requeued until
the delivery limit, then dead-lettered. A handler with no outputs may have its effect made durable
in batches (`on_flush`): the inputs are acked after the flush (after the confirms too, when the
handler also had outputs).

Each delivery is handled under a CONSUMER span that continues its message's trace. An aggregating
consumer (`aggregate`: the monitor, whose outputs summarise windows of many messages) instead
handles the deliveries that arrived together under one span linked to each message, which cost a
third of what a span per message did (docs/benchmark.md); a message it refuses still gets a span
of its own, in its own trace, saying why.

Settling (acks, rejects, flush batches) is settle.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from observability import attributes as attr
from observability import instruments, tracer
from observability.messaging import processing, processing_batch
from observability.metrics import attributes_of, messaging_key
from services.common.broker.connection import Connection
from services.common.broker.deadletters import DeadLettering
from services.common.broker.publisher import MessageTooLarge, Publisher
from services.common.broker.settle import Settler
from services.common.contracts import Contracts, QueueSpec
from services.common.messages import Message, Outgoing, Rejected

log = logging.getLogger("modelwatch.broker")

Handler = Callable[[Message], Sequence[Outgoing]]
CANCEL_S = 10.0  # how long a consumer's cancel may wait for the broker's answer
# Links per batch span: the SDK keeps 128 by default (OTEL_SPAN_LINK_COUNT_LIMIT) and drops more.
LINKS = 128


@dataclass
class Consumer:
    spec: QueueSpec
    accepts: frozenset[int]
    handler: Handler
    span: str
    span_attributes: dict[str, Any]
    aggregate: bool = False  # one span per batch of deliveries, linked to each message
    tag: str = ""  # the consumer tag on the current channel
    delivered: int = 0  # deliveries received, for the watchdog
    last: tuple[Any, int] = (None, 0)  # (channel, delivery tag) of the newest delivery

    def measure(self, seconds: float, error: str) -> None:
        """Count the delivery and record how long handling it took (observability/metrics.py)."""
        key = messaging_key("process", self.spec.exchange, self.spec.name, error)
        meters = instruments()
        meters.consumed.add(key)
        meters.process_duration.record(seconds, attributes_of(key))


class Consumers:
    """The service's consumers on the connection's channel, and the settling of what they get."""

    def __init__(
        self, link: Connection, contracts: Contracts, publisher: Publisher, dead: DeadLettering,
        prefetch: int,
    ) -> None:  # fmt: skip
        self._link = link
        self._contracts = contracts
        self._publisher = publisher
        self._dead = dead
        self.prefetch = prefetch
        self.entries: list[Consumer] = []
        self.settler = Settler(link)
        # An aggregating consumer's deliveries from one read of the socket, handled together.
        self._arrived: list[tuple[Consumer, Channel, Basic.Deliver, BasicProperties, bytes]] = []
        self._consuming_on: Channel | None = None  # the channel on_open set up

    def add(self, consumer: Consumer) -> None:
        """Consume `consumer`'s queue: now if the channel is set up, else when it is."""
        self.entries.append(consumer)
        chan = self._link.channel
        if chan is not None and chan is self._consuming_on and chan.is_open:
            consumer.tag = chan.basic_consume(consumer.spec.name, self._on_delivery(consumer))

    async def remove(self, consumer: Consumer) -> None:
        """Stop consuming `consumer`'s queue; returns once the broker confirmed the cancel and
        every delivery it handled is acknowledged (or gone with its channel)."""
        self.entries.remove(consumer)
        chan = self._link.channel
        if chan is not None and chan.is_open and consumer.tag in chan.consumer_tags:
            # pika rejects (requeues) what the broker sent before it saw the cancel. No answer
            # (the channel lost, or blocked by an alarm): its deliveries are ours no more either
            # way, as pika rejects whatever comes for a cancelled tag.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._link.call(
                    lambda cb: chan.basic_cancel(consumer.tag, callback=cb)), CANCEL_S)  # fmt: skip
        last_channel, last_tag = consumer.last
        while last_channel is self._link.channel and self.settler.acks.holds_up_to(last_tag):
            await asyncio.sleep(0.01)

    async def on_open(self, chan: Channel) -> None:
        """Consume every queue on the new channel (after the topology is in place)."""
        chan.add_on_cancel_callback(self._on_cancelled)
        # Also with no consumer yet: one may be added while the channel is open (add).
        await self._link.call(lambda cb: chan.basic_qos(prefetch_count=self.prefetch, callback=cb))
        for consumer in self.entries:
            consumer.tag = chan.basic_consume(consumer.spec.name, self._on_delivery(consumer))
        self._consuming_on = chan

    @property
    def set_up_on(self) -> Channel | None:
        """The channel whose consumers are registered (a new one is not until on_open ends)."""
        return self._consuming_on

    def cancel(self) -> None:
        """Stop receiving (on shutdown); what is in flight still settles."""
        chan = self._link.channel
        if chan is not None and chan.is_open:
            for tag in list(chan.consumer_tags):
                chan.basic_cancel(tag)

    def _on_cancelled(self, frame: Any) -> None:
        # The broker cancels a consumer whose queue was deleted: redeclare by reconnecting.
        log.error(
            "the broker cancelled consumer %s (queue deleted?); reconnecting",
            frame.method.consumer_tag,
        )
        self._link.reconnect()

    def _on_delivery(self, consumer: Consumer) -> Callable[..., None]:
        def on_delivery(
            chan: Channel, method: Basic.Deliver, props: BasicProperties, body: bytes
        ) -> None:
            self.settler.acks.delivered(method.delivery_tag)
            consumer.delivered += 1
            consumer.last = (chan, method.delivery_tag)
            if consumer.aggregate:
                if not self._arrived:  # pika hands over every delivery of a read before this runs
                    asyncio.get_running_loop().call_soon(self._process_arrived)
                self._arrived.append((consumer, chan, method, props, body))
                return
            exchange = method.exchange or method.routing_key
            # A CONSUMER span, child of the publish whose context the headers carry.
            headers = props.headers or {}
            with processing(exchange, props.message_id or "", headers, self._link.server):
                try:
                    self._process(consumer, chan, method, props, body)
                except Exception:
                    log.exception("unexpected failure handling a message; it will be redelivered")
                    self.settler.settle(chan, method.delivery_tag, requeue=True)

        return on_delivery

    def _process_arrived(self) -> None:
        """Handle an aggregating consumer's waiting deliveries, a span per queue and ≤ LINKS."""
        arrived, self._arrived = self._arrived, []
        current = self._link.channel
        by_consumer: dict[int, list] = {}
        for item in arrived:
            if item[1] is current:  # those of a lost channel come back from the broker
                by_consumer.setdefault(id(item[0]), []).append(item)
        for items in by_consumer.values():
            for start in range(0, len(items), LINKS):
                chunk = items[start : start + LINKS]
                method = chunk[0][2]
                exchange = method.exchange or method.routing_key
                headers = [item[3].headers or {} for item in chunk]
                with processing_batch(exchange, headers, self._link.server):
                    for consumer, chan, method, props, body in chunk:
                        try:
                            self._process(consumer, chan, method, props, body, own_span=True)
                        except Exception:
                            log.exception("unexpected failure handling a message; it will be "
                                          "redelivered")  # fmt: skip
                            self.settler.settle(chan, method.delivery_tag, requeue=True)

    def _process(
        self, consumer: Consumer, chan: Channel, method: Basic.Deliver, props: BasicProperties,
        body: bytes, own_span: bool = False,
    ) -> None:  # fmt: skip
        started = time.perf_counter()
        error = self._handle(consumer, chan, method, props, body, own_span)
        consumer.measure(time.perf_counter() - started, error)

    def _handle(
        self, consumer: Consumer, chan: Channel, method: Basic.Deliver, props: BasicProperties,
        body: bytes, own_span: bool,
    ) -> str:  # fmt: skip
        """Handle one delivery; returns "" or the class of error that kept it from its effect."""
        tag = method.delivery_tag
        spec = consumer.spec
        try:
            message = self._decode(consumer, props, body, method.redelivered)
            outputs = self._call_handler(consumer, message)
            prepared = [self._publisher.prepare(out) for out in outputs]
        except (Rejected, MessageTooLarge) as exc:
            # Neither improves with another delivery: dead-letter now, with why.
            reason = exc.reason if isinstance(exc, Rejected) else f"output refused: {exc}"
            with self._failure_span(own_span, method, props):
                self._dead_letter(spec, chan, tag, props, body, reason)
            return type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a failing handler is retried, then dead-lettered
            with self._failure_span(own_span, method, props):
                reason = self._dead.handler_failed(props, exc)
                if reason:
                    self._dead_letter(spec, chan, tag, props, body, reason)
                else:
                    self.settler.settle(chan, tag, requeue=True)
            return type(exc).__name__
        if not prepared:
            self.settler.defer(chan, tag)
            return ""
        state = {"left": len(prepared), "failed": ""}

        def confirmed(ok: bool, why: str) -> None:
            state["left"] -= 1
            state["failed"] = state["failed"] or ("" if ok else why)
            if state["left"] == 0:
                if state["failed"]:
                    log.warning("output of %s not confirmed (%s); requeueing the input",
                                props.message_id, state["failed"])  # fmt: skip
                    self.settler.settle(chan, tag, requeue=True)
                else:  # a handler with a flush hook also waits for its effect to be durable
                    self.settler.defer(chan, tag)

        for message in prepared:
            self._publisher.send_prepared(message, confirmed)
        return ""

    def _failure_span(
        self, own_span: bool, method: Basic.Deliver, props: BasicProperties
    ) -> contextlib.AbstractContextManager:
        """For a message handled inside a batch span: a span of its own, in its own trace, so
        its dead letter (or retry) is found from the message like any other consumer's."""
        if not own_span:
            return contextlib.nullcontext()
        exchange = method.exchange or method.routing_key
        return processing(exchange, props.message_id or "", props.headers or {}, self._link.server)

    def _dead_letter(
        self, spec: QueueSpec, chan: Channel, tag: int, props: BasicProperties, body: bytes,
        reason: str,
    ) -> None:  # fmt: skip
        """Dead-letter the input, then ack it once the dead letter is confirmed (else requeue)."""
        settle = self.settler.settle
        self._dead.send(spec, props, body, reason,
                        lambda ok, _why: settle(chan, tag, requeue=not ok))  # fmt: skip

    def _call_handler(self, consumer: Consumer, message: Message) -> Sequence[Outgoing]:
        if not consumer.span:
            return consumer.handler(message)
        attributes = {attr.MESSAGING_MESSAGE_ID: message.id, **consumer.span_attributes}
        with tracer().start_as_current_span(consumer.span, attributes=attributes):
            return consumer.handler(message)

    def _decode(
        self, consumer: Consumer, props: BasicProperties, body: bytes, redelivered: bool
    ) -> Message:
        return self._contracts.decode(
            consumer.spec.name, consumer.spec.message_type, consumer.accepts,
            props.headers or {}, body, redelivered,
        )  # fmt: skip
