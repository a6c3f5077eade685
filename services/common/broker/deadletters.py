"""Dead-lettering: an input that cannot be handled goes to `<queue>.dlq` with why, never dropped.

`DeadLettering` is the services' side: it copies the input unchanged to the dead-letter exchange
with `x-error-*` headers, and decides when a failing handler has had its deliveries.
`DeadLetters` is the people's side (`modelwatch dlq`): list and replay, on a blocking connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pika
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pika.spec import BasicProperties

from observability import attributes as attr
from observability import instruments
from observability.metrics import reason_class
from services.common.broker.confirms import Confirmed
from services.common.broker.connection import blocking_connection
from services.common.broker.publisher import Publisher
from services.common.contracts import QueueSpec
from services.common.messages import utc_now

log = logging.getLogger("modelwatch.broker")

ERROR_REASON = "x-error-reason"


class DeadLettering:
    """Sends refused inputs to the dead-letter exchange, routed by the queue they came from."""

    def __init__(
        self, publisher: Publisher, service: str, exchange: str, delivery_limit: int
    ) -> None:
        self._publisher = publisher
        self._service = service
        self._exchange = exchange
        self.delivery_limit = delivery_limit

    def send(
        self, spec: QueueSpec, props: BasicProperties, body: bytes, reason: str,
        on_done: Confirmed,
    ) -> None:  # fmt: skip
        """Publish the input unchanged to `<queue>.dlq` with why; `on_done` hears the confirm."""
        log.warning("dead-lettering %s from %s: %s", props.message_id, spec.name, reason)
        kind = reason_class(reason)
        instruments().dead_letters.add(
            ((attr.MESSAGING_SUBSCRIPTION_NAME, spec.name), (attr.DEAD_LETTER_REASON_CLASS, kind))
        )
        span = trace.get_current_span()
        span.set_attribute(attr.DEAD_LETTER_REASON, reason)
        span.set_attribute(attr.DEAD_LETTER_REASON_CLASS, kind)
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
        self._publisher.send(self._exchange, spec.name, body, copy, on_done)

    def handler_failed(self, props: BasicProperties, exc: Exception) -> str:
        """Why to dead-letter an input whose handler raised, or "" to requeue it for another try.

        The broker counts deliveries in `x-delivery-count` (quorum queues); the catalog's
        `delivery_limit` is the number of handler attempts.
        """
        deliveries = int((props.headers or {}).get("x-delivery-count", 0)) + 1
        log.error(
            "handler failed on %s (delivery %d of %d): %r",
            props.message_id,
            deliveries,
            self.delivery_limit,
            exc,
            exc_info=exc,
        )
        if deliveries >= self.delivery_limit:
            return f"handler failed on {deliveries} deliveries: {exc!r}"[:500]
        return ""


@dataclass(frozen=True)
class DeadLetter:
    """One message in a dead-letter queue, with why and when it got there."""

    message_id: str
    type: str
    reason: str
    at: str
    service: str
    headers: dict[str, Any]
    body: bytes


class DeadLetters:
    """Look into `<queue>.dlq` and send its messages back to `<queue>` (`modelwatch dlq`).

    Replays go through the default exchange straight to the queue they were dead-lettered from,
    so only the consumer that refused them sees them again; their trace context headers are kept,
    so the replay continues the original trace. Needs a user that may write to the default
    exchange (`admin` in the compose stack).
    """

    def __init__(self, urls: str | Sequence[str]) -> None:
        """`urls`: a node's URL, or a cluster's (a list, or comma-separated): the first that
        answers is used."""
        self._connection = blocking_connection(urls)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()

    def list(self, queue: str) -> list[DeadLetter]:
        """Every dead letter of `queue`, left in place."""
        found, tags = self._browse(queue)
        for tag in tags:
            self._channel.basic_nack(tag, requeue=True)
        return found

    def replay(self, queue: str, message_id: str | None = None) -> int:
        """Re-publish dead letters of `queue` (all, or those with `message_id`); how many went."""
        found, tags = self._browse(queue)
        replayed = 0
        for letter, tag in zip(found, tags, strict=True):
            if message_id and letter.message_id != message_id:
                self._channel.basic_nack(tag, requeue=True)
                continue
            headers = {k: v for k, v in letter.headers.items()
                       if not k.startswith(("x-error-", "x-death", "x-first-death",
                                            "x-last-death", "x-delivery-count"))}  # fmt: skip
            props = pika.BasicProperties(
                content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                message_id=letter.message_id, type=letter.type, headers=headers,
                timestamp=int(time.time()),
            )  # fmt: skip
            self._channel.basic_publish("", queue, letter.body, props, mandatory=True)
            self._channel.basic_ack(tag)
            replayed += 1
        return replayed

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def _browse(self, queue: str) -> tuple[list[DeadLetter], list[int]]:
        """Take every dead letter of `queue`, unacked, until the queue says it is empty.

        Each stays unacked (held by this channel) until the caller settles it, so no get returns
        one twice; the end is the broker's get-empty, not the queue's message count, which a
        quorum queue on RabbitMQ 4 reports late (0 right after messages were returned to it).
        """
        self._channel.queue_declare(f"{queue}.dlq", passive=True)  # a missing .dlq: say so
        letters, tags = [], []
        while True:
            method, props, body = self._channel.basic_get(f"{queue}.dlq", auto_ack=False)
            if method is None:
                return letters, tags
            tags.append(method.delivery_tag)
            letters.append(_dead_letter(props, body))


def _dead_letter(props: Any, body: bytes) -> DeadLetter:
    headers = dict(props.headers or {})
    death = (headers.get("x-death") or [{}])[0]
    reason = headers.get(ERROR_REASON) or f"dead-lettered by the broker: {death.get('reason', '?')}"
    at = headers.get("x-error-at") or str(death.get("time", ""))
    return DeadLetter(props.message_id or "", props.type or "", str(reason), str(at),
                      str(headers.get("x-error-service", "broker")), headers, body)  # fmt: skip
