"""`Broker`: one connection and channel per service, confirmed publishing, the consume loop.

For every delivery the loop runs decode -> validate -> handle -> validate outgoing -> publish ->
wait for confirms -> ack, so an input is acknowledged only once its effect is durable. Bad input is
dead-lettered to `<queue>.dlq` with the reason in the `x-error-reason` header; a handler that keeps
failing is dead-lettered after the catalog's delivery limit. On connection loss it reconnects with
backoff, redeclares and resumes; unacked inputs come back from the broker and unconfirmed publishes
of `publish()` are sent again.

It runs on asyncio through pika's AsyncioConnection rather than BlockingConnection, because the
blocking adapter waits for each publisher confirm in turn (see ../shared/PERF.md); here many
deliveries are in flight and the broker confirms them in batches.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, Status, StatusCode
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.exceptions import (
    AuthenticationError,
    ChannelClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from pika.spec import Basic

from observability import attributes as attr
from observability import tracer
from observability.messaging import processing, publishing
from services.common.broker import topology
from services.common.broker.acks import AckWindow
from services.common.broker.confirms import Confirmed, Confirms
from services.common.broker.wire import join_sends
from services.common.contracts import Contracts, QueueSpec, Topology
from services.common.messages import Message, Outgoing, Rejected, encode_body, utc_now
from services.common.settings import BrokerSettings

log = logging.getLogger("modelwatch.broker")

Handler = Callable[[Message], Sequence[Outgoing]]
ERROR_REASON = "x-error-reason"
# How RabbitMQ says it closed a channel for a body over its max_message_size.
_TOO_LARGE = re.compile(r"larger than configured max size (\d+)")


class BrokerError(RuntimeError):
    """A failure retrying cannot fix: bad credentials, a missing vhost, a conflicting queue."""


class MessageTooLarge(ValueError):
    """A body over the broker's max_message_size: sending it again could never succeed."""


@dataclass
class _Consumer:
    spec: QueueSpec
    accepts: frozenset[int]
    handler: Handler
    span: str
    span_attributes: dict[str, Any]
    tag: str = ""  # the consumer tag on the current channel
    delivered: int = 0  # deliveries received, for the watchdog


@dataclass
class _Batch:
    """Inputs whose effects wait for one `flush` before they are acknowledged together."""

    channel: Any
    tags: list[int] = field(default_factory=list)
    spans: list[SpanContext] = field(default_factory=list)


class Broker:
    """One connection and one channel, kept open for the life of a service."""

    def __init__(self, settings: BrokerSettings, contracts: Contracts, service: str):
        join_sends()
        self._params = pika.URLParameters(settings.url)
        self._params.connection_attempts = 1
        self._server = (self._params.host, self._params.port)  # for the messaging spans
        self._contracts = contracts
        self._topology: Topology = contracts.topology()
        self._service = service
        self._prefetch = settings.prefetch
        self._max_size = settings.max_message_size
        self._max_size_from = "RABBITMQ_MAX_MESSAGE_SIZE"
        self._verify_only = settings.topology == "verify"
        self._consumers: list[_Consumer] = []
        self._flush: Callable[[], None] | None = None
        self._conn: AsyncioConnection | None = None
        self._chan: Any = None
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._waiters: set[asyncio.Future[Any]] = set()
        self._confirms = Confirms()
        self._acks = AckWindow()
        self._acks_scheduled = False
        self._batch: _Batch | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._fatal: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def consume(
        self, type_: str, handler: Handler, span: str = "", span_attributes: dict | None = None
    ) -> None:
        """Consume this service's queue for `type_` (from the catalog) with `handler`.

        With `span`, each handler call gets a span of that name (e.g. "predict") under the
        message's process span.
        """
        entry = self._contracts.consumer(self._service, type_)
        spec = next(q for q in self._topology.queues if q.name == entry.queue)
        consumer = _Consumer(spec, frozenset(entry.accepts), handler, span, span_attributes or {})
        self._consumers.append(consumer)

    def on_flush(self, flush: Callable[[], None]) -> None:
        """Make handler effects durable in batches: `flush` runs before inputs are acknowledged."""
        self._flush = flush

    async def start(self, stop: asyncio.Event) -> bool:
        """Connect, declare the topology and start consuming; False if `stop` came first.

        Retries until the broker answers; errors retrying cannot fix raise `BrokerError`.
        """
        self._fatal = asyncio.get_running_loop().create_future()
        connecting = asyncio.ensure_future(self._connect())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not connecting.done():
            connecting.cancel()
            self._stopping = True
            if self._conn is not None and not (self._conn.is_closed or self._conn.is_closing):
                self._conn.close()
            return False
        connecting.result()  # re-raises BrokerError
        self._supervisor = asyncio.create_task(self._supervise())
        if self._consumers:
            self._watchdog = asyncio.create_task(self._watch_queues())
        return True

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then stop cleanly; re-raises a fatal error instead."""
        assert self._fatal is not None, "start() first"
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopper, self._fatal}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if self._fatal.done():
            raise self._fatal.exception() or RuntimeError("broker failed")
        await self.stop()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming, let in-flight messages finish, then close."""
        self._stopping = True
        if self._chan is not None and self._chan.is_open:
            for tag in list(self._chan.consumer_tags):
                self._chan.basic_cancel(tag)
        deadline = time.monotonic() + timeout
        while (self._acks.unsettled or self._confirms) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._acks.unsettled or self._confirms:
            log.warning(
                "stopping with %d unacked inputs and %d unconfirmed publishes; the broker "
                "redelivers the inputs",
                self._acks.unsettled,
                len(self._confirms),
            )
        self._send_acks()
        for task in (self._supervisor, self._watchdog):
            if task:
                task.cancel()
        if self._conn is not None and not (self._conn.is_closed or self._conn.is_closing):
            self._conn.close()
            await self._closed.wait()

    async def _supervise(self) -> None:
        try:
            while True:
                await self._closed.wait()
                if self._stopping:
                    return
                await self._connect()
        except BrokerError as exc:
            self._fail(exc)

    async def _watch_queues(self, every_s: float = 5.0) -> None:
        """Make sure a service never sits idle on a queue it should be consuming.

        The broker normally cancels the consumers of a deleted queue, and _on_cancelled
        reconnects; this covers a cancel that never comes. Every few seconds a passive declare
        asks for each consumed queue: if it is gone, the declare closes the channel (404) and the
        usual reconnect redeclares it (or, with RABBITMQ_TOPOLOGY=verify, stops the service
        naming the queue); if it lists no consumer, or holds ready messages while nothing was
        delivered to us since the last look and we have room for more, we reconnect.
        """
        last: dict[str, tuple[Any, int, int]] = {}  # queue -> (channel, ready, delivered)
        while not self._stopping:
            await asyncio.sleep(every_s)
            chan = self._chan
            if chan is None or not chan.is_open or self._stopping:
                continue
            for consumer in self._consumers:
                # No timeout on purpose: while a resource alarm blocks the connection the broker
                # reads nothing from it, this included, and reconnecting would not unblock it.
                try:
                    ok = await self._call(lambda cb, q=consumer.spec.name, c=chan: c.queue_declare(
                        q, passive=True, callback=cb))  # fmt: skip
                except Exception:  # noqa: BLE001 - the channel closed: the reconnect handles it
                    break
                now = (chan, ok.method.message_count, consumer.delivered)
                why = self._idle_consumer(consumer, ok.method, last.get(consumer.spec.name), now)
                last[consumer.spec.name] = now
                if why and chan is self._chan and self._conn is not None and self._conn.is_open:
                    log.error("%s; reconnecting", why)
                    self._conn.close()
                    break

    def _idle_consumer(
        self, consumer: _Consumer, declared: Any, before: tuple | None, now: tuple
    ) -> str:
        """Why `consumer` is not consuming its queue, or "" when it looks fine."""
        name = consumer.spec.name
        if consumer.tag not in self._chan.consumer_tags or declared.consumer_count == 0:
            return f"no consumer of ours on {name} any more (cancelled without notice?)"
        stuck = (
            before is not None
            and before[0] is now[0]  # same channel: no reconnect in between
            and before[1] > 0
            and now[1] > 0
            and before[2] == now[2]
            and len(self._acks) < self._prefetch  # the broker's count, not ours
        )
        if stuck:
            return f"{name} holds {now[1]} ready messages but none were delivered to us lately"
        return ""

    def _fail(self, exc: BaseException) -> None:
        log.critical("giving up: %s", exc)
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(exc)

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._open()
                return
            except BrokerError:
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure is worth a retry
                log.warning("broker not reachable (%s); retrying in %.1f s", _why(exc), delay)
                self._teardown(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        self._closed.clear()

        def on_error(_conn: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(exc)

        self._conn = AsyncioConnection(
            self._params,
            on_open_callback=opened.set_result,
            on_open_error_callback=on_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=loop,
        )
        try:
            conn = await opened
        except (ProbableAuthenticationError, AuthenticationError):
            raise BrokerError(
                "RABBITMQ_URL: the broker refused the user name or password"
            ) from None
        except ProbableAccessDeniedError:
            raise BrokerError("RABBITMQ_URL: the user may not open that vhost") from None
        self._chan = await self._call(lambda cb: conn.channel(on_open_callback=cb))
        self._chan.add_on_close_callback(self._on_channel_closed)
        self._chan.add_on_return_callback(self._on_return)
        self._chan.add_on_cancel_callback(self._on_cancelled)
        await self._call(lambda cb: self._chan.confirm_delivery(self._on_confirm, callback=cb))
        self._confirms.fail_all("a new channel")  # numbers its publishes from 1 again
        try:
            check = topology.verify if self._verify_only else topology.declare
            await check(self._call, self._chan, self._topology)
        except ChannelClosedByBroker as exc:
            how = "RABBITMQ_TOPOLOGY=verify: " if self._verify_only else "declaring the topology: "
            raise BrokerError(f"{how}{exc.reply_text}") from None
        if self._consumers:
            await self._call(
                lambda cb: self._chan.basic_qos(prefetch_count=self._prefetch, callback=cb)
            )
        for consumer in self._consumers:
            callback = self._delivery_callback(consumer)
            consumer.tag = self._chan.basic_consume(consumer.spec.name, callback)
        log.info(
            "connected to %s:%s vhost %r",
            self._params.host,
            self._params.port,
            self._params.virtual_host,
        )
        self._ready.set()

    async def _call(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """Run a pika call that reports through a callback, failing if the channel dies."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        start(lambda result: fut.done() or fut.set_result(result))
        try:
            return await fut
        finally:
            self._waiters.discard(fut)

    def _on_connection_closed(self, _conn: Any, exc: BaseException) -> None:
        if not self._stopping:
            log.warning("connection lost: %s", _why(exc))
        self._teardown(exc)
        self._closed.set()

    def _on_channel_closed(self, chan: Any, exc: BaseException) -> None:
        self._learn_max_size(exc)
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(exc)
        if not self._stopping and self._conn is not None and self._conn.is_open:
            log.warning("channel closed: %s; reconnecting", _why(exc))
            self._conn.close()

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

    def _on_cancelled(self, frame: Any) -> None:
        # The broker cancels a consumer whose queue was deleted: redeclare by reconnecting.
        log.error(
            "the broker cancelled consumer %s (queue deleted?); reconnecting",
            frame.method.consumer_tag,
        )
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _teardown(self, exc: BaseException) -> None:
        self._ready.clear()
        self._chan = None
        self._batch = None
        self._acks.clear()  # deliveries die with their channel; the broker redelivers them
        self._confirms.fail_all(f"connection lost before the confirm ({_why(exc)})")

    # -- publishing -------------------------------------------------------------------------------

    def _prepare(self, out: Outgoing) -> tuple[str, bytes, Any]:
        """Validate and encode `out`: (exchange, body, properties), or ContractViolation or
        MessageTooLarge, both raised before anything is sent."""
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
        return out.type, body, props

    def _send_prepared(self, prepared: tuple[str, bytes, Any], on_done: Confirmed) -> None:
        if self._chan is None or not self._chan.is_open:
            on_done(False, "not connected")
            return
        exchange, body, props = prepared
        self._send(exchange, "", body, props, on_done)

    async def publish(self, *outs: Outgoing) -> None:
        """Publish `outs`; return once the broker confirmed every one, resending any that failed.

        They go out together, so one emission's messages share a network write and a confirm.
        Raises MessageTooLarge (nothing of that attempt sent) for a body over the broker's limit.
        """
        pending = list(outs)
        delay = 0.1
        while pending:
            await self._ready.wait()
            answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            results: dict[int, tuple[bool, str]] = {}

            def done(
                index: int, ok: bool, why: str, results=results, answered=answered,
                wanted: int = len(pending),
            ) -> None:  # fmt: skip
                results[index] = (ok, why)
                if len(results) == wanted and not answered.done():
                    answered.set_result(None)

            prepared = [self._prepare(out) for out in pending]
            for index, message in enumerate(prepared):
                self._send_prepared(message, functools.partial(done, index))
            await answered
            failed = [(pending[i], why) for i, (ok, why) in sorted(results.items()) if not ok]
            for out, why in failed:
                log.warning("publish of %s %s not confirmed (%s); sending again", out.type, out.id,
                            why)  # fmt: skip
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            pending = [out for out, _ in failed]

    def _send(self, exchange: str, key: str, body: bytes, props: Any, on_done: Confirmed) -> None:
        # Trace context rides in the AMQP headers, written inside the PRODUCER span.
        with publishing(exchange, key, props.message_id or "", props.headers, self._server):
            self._chan.basic_publish(exchange, key, body, props, mandatory=True)
        self._confirms.sent(exchange, props.message_id or "", on_done)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        self._confirms.answered(method.delivery_tag, multiple=method.multiple, ok=ok)

    def _on_return(self, _chan: Any, method: Any, props: Any, _body: bytes) -> None:
        why = f"unroutable: {method.reply_text} (no queue bound to {method.exchange!r})"
        self._confirms.returned(method.exchange, props.message_id or "", why)

    # -- consuming --------------------------------------------------------------------------------

    def _delivery_callback(self, consumer: _Consumer) -> Callable[..., None]:
        def on_delivery(chan: Any, method: Any, props: Any, body: bytes) -> None:
            self._acks.delivered(method.delivery_tag)
            consumer.delivered += 1
            exchange = method.exchange or method.routing_key
            # A CONSUMER span, child of the publish whose context the headers carry.
            with processing(exchange, props.message_id or "", props.headers or {}, self._server):
                try:
                    self._process(consumer, chan, method, props, body)
                except Exception:
                    log.exception("unexpected failure handling a message; it will be redelivered")
                    self._settle(chan, method.delivery_tag, requeue=True)

        return on_delivery

    def _process(
        self, consumer: _Consumer, chan: Any, method: Any, props: Any, body: bytes
    ) -> None:
        tag = method.delivery_tag
        try:
            message = self._decode(consumer, props, body, method.redelivered)
            outputs = self._call_handler(consumer, message)
            prepared = [self._prepare(out) for out in outputs]
        except (Rejected, MessageTooLarge) as exc:
            # Neither improves with another delivery: dead-letter now, with why.
            reason = exc.reason if isinstance(exc, Rejected) else f"output refused: {exc}"
            self._dead_letter(consumer.spec, chan, method, props, body, reason)
            return
        except Exception as exc:  # noqa: BLE001 - a failing handler is retried, then dead-lettered
            self._handler_failed(consumer.spec, chan, method, props, body, exc)
            return
        if not prepared:
            self._defer_ack(chan, tag)
            return
        state = {"left": len(prepared), "failed": ""}

        def confirmed(ok: bool, why: str) -> None:
            state["left"] -= 1
            state["failed"] = state["failed"] or ("" if ok else why)
            if state["left"] == 0:
                if state["failed"]:
                    log.warning(
                        "output of %s not confirmed (%s); requeueing the input",
                        props.message_id,
                        state["failed"],
                    )
                self._settle(chan, tag, requeue=bool(state["failed"]))

        for message in prepared:
            self._send_prepared(message, confirmed)

    def _call_handler(self, consumer: _Consumer, message: Message) -> Sequence[Outgoing]:
        if not consumer.span:
            return consumer.handler(message)
        attributes = {attr.MESSAGING_MESSAGE_ID: message.id, **consumer.span_attributes}
        with tracer().start_as_current_span(consumer.span, attributes=attributes):
            return consumer.handler(message)

    def _decode(self, consumer: _Consumer, props: Any, body: bytes, redelivered: bool) -> Message:
        return self._contracts.decode(
            consumer.spec.name, consumer.spec.message_type, consumer.accepts,
            props.headers or {}, body, redelivered,
        )  # fmt: skip

    def _handler_failed(
        self, spec: QueueSpec, chan: Any, method: Any, props: Any, body: bytes, exc: Exception
    ) -> None:
        deliveries = int((props.headers or {}).get("x-delivery-count", 0)) + 1
        log.error(
            "handler failed on %s (delivery %d of %d): %r",
            props.message_id,
            deliveries,
            self._topology.delivery_limit,
            exc,
            exc_info=exc,
        )
        if deliveries >= self._topology.delivery_limit:
            reason = f"handler failed on {deliveries} deliveries: {exc!r}"[:500]
            self._dead_letter(spec, chan, method, props, body, reason)
        else:
            self._settle(chan, method.delivery_tag, requeue=True)

    def _dead_letter(
        self, spec: QueueSpec, chan: Any, method: Any, props: Any, body: bytes, reason: str
    ) -> None:
        """Publish the input unchanged to `<queue>.dlq` with why, then ack it."""
        log.warning("dead-lettering %s from %s: %s", props.message_id, spec.name, reason)
        span = trace.get_current_span()
        span.set_attribute(attr.DEAD_LETTER_REASON, reason)
        span.set_status(Status(StatusCode.ERROR, reason))
        headers = dict(props.headers or {})
        headers.update(
            {
                ERROR_REASON: reason,
                "x-error-queue": spec.name,
                "x-error-service": self._service,
                "x-error-at": utc_now(),
            }
        )
        copy = pika.BasicProperties(
            content_type=props.content_type,
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=props.message_id,
            type=props.type,
            app_id=props.app_id,
            timestamp=props.timestamp,
            headers=headers,
        )
        self._send(
            self._topology.dead_letter_exchange,
            spec.name,
            body,
            copy,
            lambda ok, _why: self._settle(chan, method.delivery_tag, requeue=not ok),
        )

    def _defer_ack(self, chan: Any, tag: int) -> None:
        if self._flush is None:
            self._settle(chan, tag, requeue=False)
            return
        if self._batch is None:
            self._batch = _Batch(chan)
            # A fresh context: the flush serves many messages and belongs to none of their traces.
            asyncio.get_running_loop().call_soon(self._flush_batch, context=contextvars.Context())
        self._batch.tags.append(tag)
        self._batch.spans.append(trace.get_current_span().get_span_context())

    def _flush_batch(self, attempt: int = 0) -> None:
        """Runs once the deliveries that arrived together are handled: flush, then ack them."""
        batch = self._batch
        if batch is None or batch.channel is not self._chan:
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
            log.error(
                "could not make %d results durable (%s); retrying in %.1f s",
                len(batch.tags),
                exc,
                delay,
            )
            asyncio.get_running_loop().call_later(delay, self._flush_batch, attempt + 1)
            return
        except Exception as exc:  # noqa: BLE001 - the store is in an unknown state: restart
            self._fail(exc)
            return
        self._batch = None
        for tag in batch.tags:
            self._settle(batch.channel, tag, requeue=False)

    def _settle(self, chan: Any, tag: int, *, requeue: bool) -> None:
        """Ack (or nack for redelivery) on the channel the delivery came from, if it lives.

        A nack goes out at once; acks go once per loop iteration, coalesced (see acks.py).
        """
        if chan is not self._chan or not chan.is_open:
            return
        if requeue:
            chan.basic_nack(tag, requeue=True)
        self._acks.settle(tag, ack=not requeue)
        if not self._acks_scheduled:
            self._acks_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_acks, context=contextvars.Context())

    def _send_acks(self) -> None:
        self._acks_scheduled = False
        chan = self._chan
        if chan is None or not chan.is_open:
            return
        newest_ack = self._acks.take()
        if newest_ack:
            chan.basic_ack(newest_ack, multiple=True)


def _why(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc else "unknown"
