"""All the pika code: topology, confirmed publishing, the consume loop, dead-lettering, reconnects.

Services never import pika (ruff enforces it). They hand `Broker` plain functions: a handler gets
a validated `Message` and returns the `Outgoing` messages to publish.

- `loop.py`: `Broker`, one connection and channel per service, the consume loop and reconnects
- `topology.py`: declaring or checking the exchanges and queues the catalog implies
- `confirms.py`: publishes waiting for the broker's confirm
- `acks.py`: which deliveries one coalesced ack may cover
- `wire.py`: one send() per loop iteration instead of one per frame
- `deadletters.py`: the dead-letter queues for people (`modelwatch dlq`: list, replay)
"""

from services.common.broker.deadletters import DeadLetter, DeadLetters
from services.common.broker.loop import ERROR_REASON, Broker, BrokerError, MessageTooLarge

__all__ = [
    "ERROR_REASON",
    "Broker",
    "BrokerError",
    "DeadLetter",
    "DeadLetters",
    "MessageTooLarge",
]
