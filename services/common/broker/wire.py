"""One send() per loop iteration instead of one per AMQP frame.

pika buffers each frame separately (a publish is three: method, header, body; an ack one) and its
send loop makes a send() call per frame. With TCP_NODELAY each call is a segment the broker must
read: on loopback, sending was a quarter of the features service's CPU and a sizeable part of the
broker's. Joining what the loop iteration buffered makes it one call; partial sends and errors are
still handled by pika's loop.

This wraps a private method of pika (`_AsyncTransportBase._produce`, as of pika 1.4): after a
pika upgrade, run tests/test_faults.py, whose large dead letters exercise partial sends.
"""

from __future__ import annotations

from typing import Any

from pika.adapters.utils.io_services_utils import _AsyncTransportBase

_pika_produce = _AsyncTransportBase._produce


def _produce_joined(transport: Any) -> None:
    buffers = transport._tx_buffers
    if len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)
    _pika_produce(transport)


def join_sends() -> None:
    """Install the joined send loop for every pika async connection in this process (idempotent)."""
    _AsyncTransportBase._produce = _produce_joined
