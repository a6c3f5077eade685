"""Publishing with confirms: validate, encode, send, and hear the broker's answer for each message.

Every message is checked against its contract and the broker's size limit before anything is
sent, published persistent and `mandatory` (an unroutable message is an error, not a silent drop)
inside a PRODUCER span that writes the trace context into its headers, and counts as sent only
once the broker confirmed it (confirms.py keeps the bookkeeping).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import pika
from opentelemetry.trace import SpanContext
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from observability import instruments
from observability.messaging import publishing
from observability.metrics import messaging_key
from services.common.broker.confirms import Confirmed, Confirms
from services.common.broker.connection import Connection, why
from services.common.contracts import Contracts, shard_key
from services.common.messages import Outgoing, encode_body

log = logging.getLogger("modelwatch.broker")

# How RabbitMQ says it closed a channel for a body over its max_message_size.
_TOO_LARGE = re.compile(r"larger than configured max size (\d+)")

Prepared = tuple[str, str, bytes, BasicProperties]  # exchange, routing key, body, properties


class MessageTooLarge(ValueError):
    """A body over the broker's max_message_size: sending it again could never succeed."""


class Publisher:
    """Confirmed publishing on the connection's channel."""

    def __init__(self, link: Connection, contracts: Contracts, service: str, max_size: int) -> None:
        self._link = link
        self._contracts = contracts
        self._service = service
        self._max_size = max_size
        self._max_size_from = "RABBITMQ_MAX_MESSAGE_SIZE"
        self._keyed = frozenset(t for t in contracts.types if contracts.partitioned(t))
        self.confirms = Confirms()
        link.on_open(self._on_open)
        link.on_channel_error(self._learn_max_size)

    async def _on_open(self, chan: Channel) -> None:
        chan.add_on_return_callback(self._on_return)
        await self._link.call(lambda cb: chan.confirm_delivery(self._on_confirm, callback=cb))
        self.confirms.fail_all("a new channel")  # numbers its publishes from 1 again

    def lost(self, exc: BaseException) -> None:
        """The channel is gone: no confirm will come for what it carried."""
        self.confirms.fail_all(f"connection lost before the confirm ({why(exc)})")

    def prepare(self, out: Outgoing) -> Prepared:
        """Validate and encode `out`; ContractViolation or MessageTooLarge are raised before
        anything is sent."""
        version = self._contracts.check_output(out.type, out.payload, out.version)
        body = encode_body(out.payload)
        if len(body) > self._max_size:
            raise MessageTooLarge(
                f"{out.type} {out.id} is {len(body)} bytes, over the limit of {self._max_size} "
                f"({self._max_size_from})"
            )
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=out.id,
            type=out.type,
            app_id=self._service,
            timestamp=int(time.time()),
            headers={"schema": self._contracts.schema_ids[out.type, version]},
        )
        # A partitioned type's key picks the shard queue; the fanout ignores it (shards == 1).
        key = shard_key(out.id) if out.type in self._keyed else ""
        return out.type, key, body, props

    def send_prepared(
        self, prepared: Prepared, on_done: Confirmed, parent: SpanContext | None = None
    ) -> None:
        exchange, key, body, props = prepared
        self.send(exchange, key, body, props, on_done, parent)

    def send(
        self, exchange: str, key: str, body: bytes, props: BasicProperties, on_done: Confirmed,
        parent: SpanContext | None = None,
    ) -> None:  # fmt: skip
        """Publish now; `on_done(ok, why)` hears the broker's answer (or that it cannot come)."""
        chan = self._link.channel
        if chan is None or not chan.is_open:
            self._count(exchange, "not_connected")
            on_done(False, "not connected")
            return
        self._count(exchange, "")
        # Trace context rides in the AMQP headers, written inside the PRODUCER span.
        server = self._link.server
        with publishing(exchange, key, props.message_id or "", props.headers, server, parent):
            chan.basic_publish(exchange, key, body, props, mandatory=True)
        self.confirms.sent(exchange, props.message_id or "", on_done)

    async def publish(
        self, *outs: Outgoing, parents: Sequence[SpanContext | None] | None = None
    ) -> None:
        """Publish `outs`; return once the broker confirmed every one, resending any that failed.

        They go out together, so one emission's messages share a network write and a confirm.
        Each PRODUCER span is a child of the current span, or of `parents[i]` for `outs[i]`.
        Raises MessageTooLarge (nothing of that attempt sent) for a body over the broker's limit.
        """
        pending = list(zip(outs, parents or [None] * len(outs), strict=True))
        delay = 0.1
        while pending:
            await self._link.ready.wait()
            answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            results: dict[int, tuple[bool, str]] = {}

            def done(
                index: int, ok: bool, why: str, results=results, answered=answered,
                wanted: int = len(pending),
            ) -> None:  # fmt: skip
                results[index] = (ok, why)
                if len(results) == wanted and not answered.done():
                    answered.set_result(None)

            prepared = [self.prepare(out) for out, _ in pending]
            for index, message in enumerate(prepared):
                self.send_prepared(message, functools.partial(done, index), pending[index][1])
            await answered
            failed = [(pending[i], why) for i, (ok, why) in sorted(results.items()) if not ok]
            for (out, _), why_not in failed:
                log.warning("publish of %s %s not confirmed (%s); sending again", out.type, out.id,
                            why_not)  # fmt: skip
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            pending = [item for item, _ in failed]

    def _count(self, exchange: str, error: str) -> None:
        instruments().sent.add(messaging_key("publish", exchange, error=error))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        self.confirms.answered(method.delivery_tag, multiple=method.multiple, ok=ok)

    def _on_return(
        self, _chan: Channel, method: Basic.Return, props: BasicProperties, _body: bytes
    ) -> None:
        why_not = f"unroutable: {method.reply_text} (no queue bound to {method.exchange!r})"
        self.confirms.returned(method.exchange, props.message_id or "", why_not)

    def _learn_max_size(self, exc: BaseException) -> None:
        """A channel closed for a too-large body: adopt the broker's limit, so resending stops.

        Without this, publish() would resend the message, the broker would close the channel
        again, and so on forever; with it, the resend raises MessageTooLarge.
        """
        found = _TOO_LARGE.search(getattr(exc, "reply_text", "") or "")
        if found and int(found.group(1)) < self._max_size:
            log.error(
                "RABBITMQ_MAX_MESSAGE_SIZE=%d is larger than the broker's max_message_size %s; "
                "using the broker's",
                self._max_size,
                found.group(1),
            )
            self._max_size = int(found.group(1))
            self._max_size_from = "the broker's max_message_size"
