"""Fan-out of the view to every open page, as server-sent events.

A page that connects gets the whole view (`snapshot`), then every DASHBOARD_PUSH_S what changed
(`update`), whatever the pipeline's speed. A page that falls more than BEHIND updates behind is
cut off instead of buffered without end; its browser reconnects on its own and gets a snapshot.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson

from services.dashboard.view import View

BEHIND = 20


class Client:
    def __init__(self) -> None:
        self.events: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.closed = False

    def send(self, event: bytes) -> None:
        if len(self.events) >= BEHIND:
            self.close()
            return
        self.events.append(event)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class Hub:
    def __init__(self, view: View, push_s: float, page: dict[str, Any]) -> None:
        self.view = view
        self.push_s = push_s
        self.page = page  # settings the page needs (the Jaeger UI's address)
        self.clients: set[Client] = set()
        self.closed = False

    def snapshot(self) -> dict[str, Any]:
        return {**self.view.snapshot(), "page": self.page}

    async def stream(self) -> AsyncIterator[bytes]:
        """One page's events, starting with the snapshot; ends when the hub closes."""
        client = Client()
        client.send(event("snapshot", self.snapshot()))  # no await in between: nothing missed
        self.clients.add(client)
        try:
            while not client.closed or client.events:
                await client.wake.wait()
                client.wake.clear()
                while client.events:
                    yield client.events.popleft()
        finally:
            self.clients.discard(client)

    def push(self) -> None:
        update = self.view.take_update()
        if update is None:
            return
        data = event("update", update)
        for client in list(self.clients):
            client.send(data)

    async def run(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.push_s)
            self.push()

    def close(self) -> None:
        self.closed = True
        for client in list(self.clients):
            client.close()


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
