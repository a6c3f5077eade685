"""The dead-letter queues as people see them (`modelwatch dlq`): list and replay, blocking."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pika

from services.common.broker.loop import ERROR_REASON


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

    def __init__(self, url: str) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
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
        letters, tags = [], []
        total = self._channel.queue_declare(f"{queue}.dlq", passive=True).method.message_count
        for _ in range(total):
            method, props, body = self._channel.basic_get(f"{queue}.dlq", auto_ack=False)
            if method is None:
                break
            tags.append(method.delivery_tag)
            letters.append(_dead_letter(props, body))
        return letters, tags


def _dead_letter(props: Any, body: bytes) -> DeadLetter:
    headers = dict(props.headers or {})
    death = (headers.get("x-death") or [{}])[0]
    reason = headers.get(ERROR_REASON) or f"dead-lettered by the broker: {death.get('reason', '?')}"
    at = headers.get("x-error-at") or str(death.get("time", ""))
    return DeadLetter(props.message_id or "", props.type or "", str(reason), str(at),
                      str(headers.get("x-error-service", "broker")), headers, body)  # fmt: skip
