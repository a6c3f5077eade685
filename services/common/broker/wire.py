"""One send() per loop iteration instead of one per AMQP frame.

pika buffers each frame separately (a publish is three: method, header, body; an ack one) and its
send loop makes a send() call per frame. With TCP_NODELAY each call is a segment the broker must
read, which cost the services and the broker much of their CPU (docs/benchmark.md). Joining what
the loop iteration buffered makes it one call; partial sends and errors are still handled by
pika's loop.

This wraps a private method of pika (`_AsyncTransportBase._produce`, reading `_tx_buffers`),
listed in services/common/internals.py: if either is not what pika 1.4 has, pika's own send loop
stays and one warning says so. tests/test_faults.py's large dead letters exercise partial sends.
"""

from __future__ import annotations

from typing import Any

from pika.adapters.utils import io_services_utils

from services.common.internals import fall_back, present

_Transport: Any = getattr(io_services_utils, "_AsyncTransportBase", None)
_pika_produce = getattr(_Transport, "_produce", None)


def _produce_joined(transport: Any) -> None:
    buffers = transport._tx_buffers
    if len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)
    _pika_produce(transport)


def usable() -> str:
    """Why the joined sends cannot be installed on this pika, or "" when they can."""
    transport_class = _Transport
    if transport_class is None or not present(transport_class, "_produce", "__init__"):
        return "pika.adapters.utils.io_services_utils._AsyncTransportBase._produce is gone"
    init = transport_class.__init__
    if "_tx_buffers" not in getattr(getattr(init, "__code__", None), "co_names", ()):
        return "_AsyncTransportBase no longer keeps _tx_buffers"
    return ""


def join_sends() -> bool:
    """Install the joined send loop for every pika async connection in this process
    (idempotent); False, with one warning, when pika's internals are not as checked."""
    why = usable()
    if why:
        fall_back("joined socket writes", why)
        return False
    _Transport._produce = _produce_joined
    return True
