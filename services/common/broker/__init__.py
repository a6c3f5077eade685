"""All the pika code: topology, confirmed publishing, the consume loop, dead-lettering, reconnects.

Services never import pika (ruff enforces it). They hand `Broker` plain functions: a handler gets
a validated `Message` and returns the `Outgoing` messages to publish.

- `loop.py`: `Broker`, one connection and channel per service, the consume loop and reconnects
- `topology.py`: declaring or checking the exchanges and queues the catalog implies
- `confirms.py`: publishes waiting for the broker's confirm
- `acks.py`: which deliveries one coalesced ack may cover
- `wire.py`: one send() per loop iteration instead of one per frame
- `tools.py`: blocking tools for people and harnesses (`DeadLetters`, `Spy`)
"""

from services.common.broker.loop import ERROR_REASON, Broker, BrokerError, MessageTooLarge
from services.common.broker.tools import DeadLetter, DeadLetters, Spy

__all__ = [
    "ERROR_REASON",
    "Broker",
    "BrokerError",
    "DeadLetter",
    "DeadLetters",
    "MessageTooLarge",
    "Spy",
]
