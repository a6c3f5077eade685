"""Consuming and settling: each delivery is decoded, handled, its outputs published, then settled.

For every delivery: decode -> validate -> handle -> validate outgoing -> publish -> wait for the
confirms -> ack, so an input is acknowledged only once its effect is durable. Bad input (`Rejected`)
and outputs over the size limit are dead-lettered at once; a handler that raises is requeued until
the delivery limit, then dead-lettered. A handler with no outputs may have its effect made durable
in batches (`on_flush`): the inputs are acked after the flush (after the confirms too, when the
handler also had outputs).

Settling (acks, rejects, flush batches) is settle.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from observability import attributes as attr
from observability import tracer
from observability.messaging import processing
from services.common.broker.connection import Connection
from services.common.broker.deadletters import DeadLettering
from services.common.broker.publisher import MessageTooLarge, Publisher
from services.common.broker.settle import Settler
from services.common.contracts import Contracts, QueueSpec
from services.common.messages import Message, Outgoing, Rejected

log = logging.getLogger("modelwatch.broker")

Handler = Callable[[Message], Sequence[Outgoing]]


@dataclass
class Consumer:
    spec: QueueSpec
    accepts: frozenset[int]
    handler: Handler
    span: str
    span_attributes: dict[str, Any]
    tag: str = ""  # the consumer tag on the current channel
    delivered: int = 0  # deliveries received, for the watchdog


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

    def add(self, consumer: Consumer) -> None:
        self.entries.append(consumer)

    async def on_open(self, chan: Channel) -> None:
        """Consume every queue on the new channel (after the topology is in place)."""
        chan.add_on_cancel_callback(self._on_cancelled)
        if self.entries:
            await self._link.call(
                lambda cb: chan.basic_qos(prefetch_count=self.prefetch, callback=cb)
            )
        for consumer in self.entries:
            consumer.tag = chan.basic_consume(consumer.spec.name, self._on_delivery(consumer))

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

    def _process(
        self, consumer: Consumer, chan: Channel, method: Basic.Deliver, props: BasicProperties,
        body: bytes,
    ) -> None:  # fmt: skip
        tag = method.delivery_tag
        spec = consumer.spec
        try:
            message = self._decode(consumer, props, body, method.redelivered)
            outputs = self._call_handler(consumer, message)
            prepared = [self._publisher.prepare(out) for out in outputs]
        except (Rejected, MessageTooLarge) as exc:
            # Neither improves with another delivery: dead-letter now, with why.
            reason = exc.reason if isinstance(exc, Rejected) else f"output refused: {exc}"
            self._dead_letter(spec, chan, tag, props, body, reason)
            return
        except Exception as exc:  # noqa: BLE001 - a failing handler is retried, then dead-lettered
            reason = self._dead.handler_failed(props, exc)
            if reason:
                self._dead_letter(spec, chan, tag, props, body, reason)
            else:
                self.settler.settle(chan, tag, requeue=True)
            return
        if not prepared:
            self.settler.defer(chan, tag)
            return
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
