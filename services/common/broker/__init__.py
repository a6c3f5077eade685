"""All the pika code, split by responsibility. Services never import pika (ruff enforces it): they
hand `Broker` plain functions; a handler gets a validated `Message` and returns the `Outgoing`
messages to publish.

- `broker.py`: `Broker`, the one object a service uses; puts the parts below together
- `connection.py`: the connection and one channel, reconnects with backoff, fatal errors
- `publisher.py`: validate, encode, publish and wait for the broker's confirms
- `consumer.py`: each delivery decoded, handled, its outputs published, then settled
- `settle.py`: acks coalesced per loop iteration, nacks, acks after a flush of a batch
- `deadletters.py`: refused inputs to `<queue>.dlq` with why; `DeadLetters` for `modelwatch dlq`
- `watchdog.py`: reconnect when a consumed queue is no longer consumed
- `topology.py`: declaring or checking the exchanges and queues the catalog implies
- `confirms.py`, `acks.py`: the bookkeeping of publisher confirms and coalesced acks
- `wire.py`: one send() per loop iteration instead of one per frame
"""

from services.common.broker.broker import Broker
from services.common.broker.connection import BrokerError, blocking_connection
from services.common.broker.deadletters import ERROR_REASON, DeadLetter, DeadLetters
from services.common.broker.publisher import MessageTooLarge

__all__ = [
    "ERROR_REASON",
    "Broker",
    "BrokerError",
    "DeadLetter",
    "DeadLetters",
    "MessageTooLarge",
    "blocking_connection",
]
