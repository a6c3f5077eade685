"""Settling deliveries: acks coalesced once per loop iteration, rejects at once, flush batches.

A frame per ack cost the services and the broker CPU for every message, so acks wait for the end
of the loop iteration and go as one `multiple` ack up to the newest delivery whose older ones are
all settled (acks.py decides which). Handlers with no outputs may make their effect durable in
batches: the inputs that arrived together are acked after one `flush` of all of them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext
from pika.channel import Channel

from observability import attributes as attr
from observability import tracer
from services.common.broker.acks import AckWindow
from services.common.broker.connection import Connection

log = logging.getLogger("modelwatch.broker")


@dataclass
class _Batch:
    """Inputs whose effects wait for one `flush` before they are acknowledged together."""

    channel: Channel
    tags: list[int] = field(default_factory=list)
    spans: list[SpanContext] = field(default_factory=list)


class Settler:
    """Acks and rejects the deliveries of the connection's current channel."""

    def __init__(self, link: Connection) -> None:
        self._link = link
        self.acks = AckWindow()
        self._acks_scheduled = False
        self._flush: Callable[[], None] | None = None
        self._batch: _Batch | None = None

    def on_flush(self, flush: Callable[[], None]) -> None:
        """Make handler effects durable in batches: `flush` runs before inputs are acknowledged."""
        self._flush = flush

    def lost(self, _exc: BaseException) -> None:
        """Deliveries die with their channel; the broker redelivers them."""
        self._batch = None
        self.acks.clear()

    def defer(self, chan: Channel, tag: int) -> None:
        """Ack once the flush made the handler's effect durable (at once if there is none)."""
        if self._flush is None:
            self.settle(chan, tag, requeue=False)
            return
        if self._batch is None:
            self._batch = _Batch(chan)
            # A fresh context: the flush serves many messages and belongs to none of their traces.
            asyncio.get_running_loop().call_soon(self._flush_batch, context=contextvars.Context())
        self._batch.tags.append(tag)
        span = trace.get_current_span().get_span_context()
        if not self._batch.spans or self._batch.spans[-1] != span:  # batch spans: link each once
            self._batch.spans.append(span)

    def _flush_batch(self, attempt: int = 0) -> None:
        """Runs once the deliveries that arrived together are handled: flush, then ack them."""
        batch = self._batch
        if batch is None or batch.channel is not self._link.channel:
            return
        try:
            assert self._flush is not None
            links = [Link(s) for s in batch.spans if s.is_valid]
            with tracer().start_as_current_span(
                "flush results", links=links, attributes={attr.BATCH_ROWS: len(batch.tags)}
            ):
                self._flush()
        except OSError as exc:
            # Disk full and the like: keep the inputs unacked and try again; never dead-letter
            # good messages because the disk is unwell.
            delay = min(0.1 * 2**attempt, 5.0)
            log.error("could not make %d results durable (%s); retrying in %.1f s",
                      len(batch.tags), exc, delay)  # fmt: skip
            asyncio.get_running_loop().call_later(delay, self._flush_batch, attempt + 1)
            return
        except Exception as exc:  # noqa: BLE001 - the store is in an unknown state: restart
            self._link.fail(exc)
            return
        self._batch = None
        for tag in batch.tags:
            self.settle(batch.channel, tag, requeue=False)

    def settle(self, chan: Channel, tag: int, *, requeue: bool) -> None:
        """Ack (or reject for redelivery) on the channel the delivery came from, if it lives.

        A reject goes out at once; acks go once per loop iteration, coalesced (see acks.py).
        Redeliveries are asked for with basic.reject, not basic.nack: from RabbitMQ 4.3 a nack
        with requeue no longer counts toward a quorum queue's x-delivery-count (only a reject
        does), so the catalog's delivery_limit would never be reached with nacks on 4.3+, while
        a reject counts on 3.x and every 4.x alike.
        """
        if chan is not self._link.channel or not chan.is_open:
            return
        if requeue:
            chan.basic_reject(tag, requeue=True)
        self.acks.settle(tag, ack=not requeue)
        if not self._acks_scheduled:
            self._acks_scheduled = True
            asyncio.get_running_loop().call_soon(self.send_acks, context=contextvars.Context())

    def send_acks(self) -> None:
        self._acks_scheduled = False
        chan = self._link.channel
        if chan is None or not chan.is_open:
            return
        newest_ack = self.acks.take()
        if newest_ack:
            chan.basic_ack(newest_ack, multiple=True)
