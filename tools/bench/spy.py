"""A spy queue that keeps what the broker confirmed on an exchange (soak run and tests)."""

from __future__ import annotations

from services.common.broker import blocking_connection


class Spy:
    """A durable queue of its own on an exchange, to count what the broker confirmed there.

    For the soak run: it outlives connection losses and broker restarts, so afterwards it holds
    every message that was confirmed, and accounting can be checked against the CSV.
    """

    def __init__(self, url: str, exchange: str, queue: str) -> None:
        self._url, self.queue = url, queue
        connection = blocking_connection(url)
        channel = connection.channel()
        channel.exchange_declare(exchange, "fanout", durable=True)
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(queue, exchange)
        connection.close()

    def drain(self) -> list[str]:
        """Take every message; their ids, repeats included."""
        connection = blocking_connection(self._url)
        channel = connection.channel()
        ids = []
        while True:
            method, props, _ = channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                break
            ids.append(props.message_id)
        channel.queue_delete(self.queue)
        connection.close()
        return ids
