"""The connection and its supervision: connect with backoff, one channel, reconnect when lost.

`Connection` owns pika's AsyncioConnection and the one channel a service uses, on one node of
the broker at a time: given a cluster's nodes, it opens the first that answers and, when that
connection is lost, tries the next node first (the one it lost goes last: it may be the one that
died); it pauses once every node has failed, or before reopening a connection that died young.
The other parts say what a fresh channel needs (confirm mode, the topology, consumers) as
`on_open` steps, run in the order they were registered, and what dies with a channel
(unconfirmed publishes, unacked deliveries) as `on_lost` callbacks. A lost connection is
reopened by `supervise()`; errors that retrying cannot fix (credentials, vhost, a conflicting
queue; from every node) raise `BrokerError` and stop the service.

It runs on asyncio through AsyncioConnection rather than BlockingConnection because the blocking
adapter waits for each publisher confirm in turn; here many deliveries are in flight and the
broker confirms them in batches (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.exceptions import (
    AuthenticationError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

from services.common.settings import split_urls

log = logging.getLogger("modelwatch.broker")

# A connection that lasted this long was not refused outright: the next one opens at once. Short,
# because the soak test closes every connection twice a second and must not wait out a backoff.
_LIVED_S = 0.25

OpenStep = Callable[[Channel], Awaitable[None]]
Lost = Callable[[BaseException], None]


class BrokerError(RuntimeError):
    """A failure retrying cannot fix: bad credentials, a missing vhost, a conflicting queue."""


class Connection:
    """One AMQP connection and one channel, reopened whenever they are lost."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.nodes = [pika.URLParameters(url) for url in urls]
        for node in self.nodes:
            node.connection_attempts = 1
        self._next = 0  # the node to try first
        self.params = self.nodes[0]  # the node connected to, or tried last
        self.server = (self.params.host, self.params.port)  # for the messaging spans
        self.conn: AsyncioConnection | None = None
        self.channel: Channel | None = None
        self.ready = asyncio.Event()  # set while a channel is open and set up
        self.stopping = False
        self.fatal: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._opened_at = 0.0
        self._closed = asyncio.Event()
        self._waiters: set[asyncio.Future[Any]] = set()
        self._open_steps: list[OpenStep] = []
        self._lost: list[Lost] = []
        self._channel_errors: list[Lost] = []

    @property
    def broker_version(self) -> tuple[int, ...]:
        """The connected broker's version (e.g. (4, 0, 5)), from its connection.start; () before."""
        properties = getattr(self.conn, "server_properties", None) or {}
        raw = properties.get("version", b"")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    def on_open(self, step: OpenStep) -> None:
        """Run `step(channel)` on every new channel, after the steps registered before it."""
        self._open_steps.append(step)

    def on_lost(self, forget: Lost) -> None:
        """Call `forget(exc)` when the channel is gone, with the reason."""
        self._lost.append(forget)

    def on_channel_error(self, learn: Lost) -> None:
        """Call `learn(exc)` with the broker's reason whenever it closes the channel."""
        self._channel_errors.append(learn)

    async def start(self, stop: asyncio.Event) -> bool:
        """Connect (retrying until the broker answers), then supervise; False if `stop` came
        first. Errors retrying cannot fix raise `BrokerError`."""
        self.fatal = asyncio.get_running_loop().create_future()
        connecting = asyncio.ensure_future(self.connect())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not connecting.done():
            connecting.cancel()
            self.stopping = True
            if self.conn is not None and not (self.conn.is_closed or self.conn.is_closing):
                self.conn.close()
            return False
        connecting.result()  # re-raises BrokerError
        self._supervisor = asyncio.create_task(self._supervise())
        return True

    async def close(self) -> None:
        """Close for good (the caller set `stopping` and let in-flight work finish)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.conn is not None and not (self.conn.is_closed or self.conn.is_closing):
            self.conn.close()
            await self._closed.wait()

    def reconnect(self) -> None:
        """Drop the connection; the supervisor opens a new one."""
        if self.conn is not None and self.conn.is_open:
            self.conn.close()

    def fail(self, exc: BaseException) -> None:
        """Stop the service with `exc` (run_until re-raises it)."""
        log.critical("giving up: %s", exc)
        if self.fatal is not None and not self.fatal.done():
            self.fatal.set_exception(exc)

    async def call(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """Run a pika call that reports through a callback, failing if the channel dies."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        start(lambda result: fut.done() or fut.set_result(result))
        try:
            return await fut
        finally:
            self._waiters.discard(fut)

    async def connect(self) -> None:
        """Open a connection to the first node that answers, trying each in turn, and pause
        (with growing pauses) once every node has failed. A refusal retrying cannot fix (user,
        password, vhost) is fatal only when every node refuses: pika reports a connection that
        drops during the handshake, as from a node going down, as such a refusal."""
        delay = 0.2
        while True:
            refused: list[BrokerError] = []
            for _ in self.nodes:
                self.params = self.nodes[self._next]
                self._next = (self._next + 1) % len(self.nodes)
                try:
                    await self._open()
                    return
                except BrokerError as exc:
                    refused.append(exc)
                    log.warning("%s at %s", exc, self._where())
                    await self._abandon(exc)
                except Exception as exc:  # noqa: BLE001 - any other failure is worth a retry
                    log.warning("broker not reachable at %s (%s)", self._where(), why(exc))
                    await self._abandon(exc)
            if len(refused) == len(self.nodes):
                raise refused[0]
            log.warning("no broker node reachable; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _abandon(self, exc: BaseException) -> None:
        """Close a connection whose opening failed and wait until it is closed, so its close
        is not mistaken for the loss of the next node's connection."""
        conn = self.conn
        if conn is not None and not conn.is_closed:
            if not conn.is_closing:
                conn.close()
            with contextlib.suppress(TimeoutError):  # its close callback sets _closed
                await asyncio.wait_for(self._closed.wait(), 5.0)
        self._teardown(exc)

    def _where(self) -> str:
        return f"{self.params.host}:{self.params.port}"

    async def _supervise(self) -> None:
        """Reopen a lost connection: at once after one that lived, with growing pauses while they
        keep dying young. A broker that accepts the connection and then closes it at once (a
        quorum queue that cannot take a consumer answers basic.consume with 541) would otherwise
        be hammered with thousands of connections a minute."""
        delay = 0.0
        try:
            while True:
                await self._closed.wait()
                if self.stopping:
                    return
                lived = time.monotonic() - self._opened_at
                delay = 0.0 if lived >= _LIVED_S else min(max(delay * 2, 0.2), 10.0)
                if delay:
                    log.warning("the connection lived %.1f s; reconnecting in %.1f s", lived, delay)
                    await asyncio.sleep(delay)
                await self.connect()
        except BrokerError as exc:
            self.fail(exc)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        self._closed.clear()

        def on_error(_conn: AsyncioConnection, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(exc)

        self.conn = AsyncioConnection(
            self.params,
            on_open_callback=opened.set_result,
            on_open_error_callback=on_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=loop,
        )
        self.server = (self.params.host, self.params.port)
        try:
            conn = await opened
        except (ProbableAuthenticationError, AuthenticationError):
            raise BrokerError(
                "RABBITMQ_URL: the broker refused the user name or password"
            ) from None
        except ProbableAccessDeniedError:
            raise BrokerError("RABBITMQ_URL: the user may not open that vhost") from None
        channel: Channel = await self.call(lambda cb: conn.channel(on_open_callback=cb))
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        for step in self._open_steps:
            await step(channel)
        log.info("connected to %s vhost %r", self._where(), self.params.virtual_host)
        self._opened_at = time.monotonic()
        self.ready.set()

    def _on_connection_closed(self, conn: AsyncioConnection, exc: BaseException) -> None:
        if conn is not self.conn:  # one given up on before: its close says nothing of ours
            return
        if not self.stopping:
            log.warning("connection lost to %s: %s", self._where(), why(exc))
        self._teardown(exc)
        self._closed.set()

    def _on_channel_closed(self, chan: Channel, exc: BaseException) -> None:
        for learn in self._channel_errors:
            learn(exc)
        if chan is not self.channel:  # a connection given up on: the waiters are the next one's
            return
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(exc)
        if not self.stopping and self.conn is not None and self.conn.is_open:
            log.warning("channel closed: %s; reconnecting", why(exc))
            self.conn.close()

    def _teardown(self, exc: BaseException) -> None:
        self.ready.clear()
        self.channel = None
        for forget in self._lost:
            forget(exc)


def blocking_connection(urls: str | Sequence[str]) -> pika.BlockingConnection:
    """A blocking connection to the first node of `urls` that answers (a list, or RABBITMQ_URL's
    comma-separated form), for the tools: `modelwatch dlq`, the benchmark's reference and spies."""
    if isinstance(urls, str):
        urls = split_urls(urls)
    nodes = [pika.URLParameters(url) for url in urls]
    for node in nodes:
        node.connection_attempts = 1
    return pika.BlockingConnection(nodes)


def why(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc else "unknown"
